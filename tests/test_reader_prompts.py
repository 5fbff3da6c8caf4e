"""Reader prompts for instruct models (reader.prompt plain | chat, reader.answer_eos) and answer extraction."""

import pytest
import torch

from gr_train.config import ConfigError, load_config
from gr_train.data import Record
from gr_train.evaluate import answer_metrics
from gr_train.models import build_reader
from gr_train.reader import byte_level_tokenizer, extract_answer

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TINY = ["reader.kind=causal_lm", "reader.model_config={model_type: llama}", "reader.passage_max_tokens=16",
        "reader.answer_max_tokens=12"]


def chat_tokenizer():
    tok = byte_level_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


@pytest.mark.parametrize("prompt,eos", [("plain", True), ("plain", False), ("chat", True), ("chat", False)])
def test_targets_follow_the_prompt_and_end_with_eos_only_when_asked(prompt, eos):
    cfg = load_config(None, [*TINY, f"reader.prompt={prompt}", f"reader.answer_eos={str(eos).lower()}"])
    reader = build_reader(cfg.reader, chat_tokenizer())
    inputs = reader.tokenize(["who?"], [[("t", "x")]], ["Ann Lee"])
    tok = reader.tokenizer
    target = inputs["target_ids"][0][inputs["target_mask"][0]].tolist()
    answer = tok("Ann Lee" if prompt == "chat" else " Ann Lee", add_special_tokens=False)["input_ids"]
    assert target == answer + ([tok.eos_token_id] if eos else [])
    prompt_text = tok.decode(inputs["prompt_ids"][0][inputs["prompt_mask"][0]])
    assert prompt_text.endswith("<|assistant|>" if prompt == "chat" else "answer:")
    # the loss is over the answer tokens only (and eos when asked)
    loss = reader.answer_loss(reader.encode_passages(inputs), inputs, torch.zeros(1, 1))
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    assert int((inputs["labels"] != -100).sum()) == len(answer) + eos


def test_answer_max_tokens_without_eos_keeps_that_many_answer_tokens():
    cfg = load_config(None, [*TINY, "reader.answer_eos=false", "reader.answer_max_tokens=6"])
    reader = build_reader(cfg.reader, byte_level_tokenizer())
    inputs = reader.tokenize(["q"], [[("t", "x")]], ["abcdefghij"])
    assert int(inputs["target_mask"].sum()) == 6 and reader.tokenizer.eos_token_id not in inputs["target_ids"][0]


def test_chat_prompt_is_refused_for_fid_readers():
    assert load_config().reader.prompt == "plain" and load_config().reader.answer_eos is True
    with pytest.raises(ConfigError, match="reader.prompt"):
        load_config(None, ["reader.kind=fid_t5", "reader.prompt=chat"])
    with pytest.raises(ConfigError, match="reader.prompt"):
        load_config(None, ["reader.prompt=chatty"])


@pytest.mark.parametrize("text,answer", [
    ('The answer is: "Paris".', "Paris"), ("Paris", "Paris"), ("The answer is Barack Obama.", "Barack Obama"),
    ("Answer: 1998\nQuestion: next", "1998"), ("\n  'The Beatles'  ", "The Beatles"), ("Answer Me", "Answer Me"),
    ("U.S.", "U.S"), ("", ""),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_em_and_f1_read_the_answer_out_of_a_sentence():
    records = [Record("a", "q", ["Paris"], []), Record("b", "q", ["Ann Lee"], [])]
    out = answer_metrics(records, ['The answer is: "Paris".', "answer - Ann Lee.\nmore text"])
    assert out["em"] == 1.0 and out["f1"] == 1.0
