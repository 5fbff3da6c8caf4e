"""The decoder-only LLM reranker (reranker.kind=causal_lm, gr_train/reranker.py): the yes/no log-odds score, padding,
token checks; LoRA adapters (reranker.lora_rank): gradients, merged save, exact resume; the export as a
sentence-transformers CrossEncoder and as a plain causal LM.

Tiny random Llama models from configs and word-level tokenizers built in memory (one with a Qwen-style chat
template, one without): CPU, offline, seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gr_train.config import RerankerSection
from gr_train.data import passage_string
from gr_train.inputs import RERANK_SYSTEM, RERANK_USER
from gr_train.reranker import CausalLMReranker, build_reranker, build_word_tokenizer

# Qwen's chat template, reduced to what the reranker prompt uses (system, user, the assistant turn's opening).
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    RERANK_SYSTEM, RERANK_USER, "yes no answer", "im_start im_end system user assistant",
    "who wrote the silent harbour the silent harbour was written by alice moreau",
    "where was the author of the long road born bob stone was born in leeds and wrote the long road",
]
QUESTIONS = ["who wrote the silent harbour", "where was the author of the long road born"]
PASSAGES = [
    [("silent harbour", "the silent harbour was written by alice moreau"), ("", "alice moreau was born in lyon")],
    [("long road", "the long road was written by bob stone and is long"), ("bob stone", "born in leeds")],
]


def tokenizer(chat: bool = True):
    tok = build_word_tokenizer(CORPUS)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny(chat: bool = True, seed: int = 0, **overrides) -> CausalLMReranker:
    torch.manual_seed(seed)
    cfg = RerankerSection(kind="causal_lm", **{"max_tokens": 96, **overrides})
    return build_reranker(cfg, tokenizer(chat))


@pytest.mark.parametrize("chat", [True, False], ids=["chat_template", "plain"])
def test_score_is_the_yes_no_log_odds_of_the_prompts_last_token(chat):
    reranker = tiny(chat)
    tok = reranker.tokenizer
    q, (title, text) = QUESTIONS[0], PASSAGES[0][0]
    user = RERANK_USER.format(instruction=reranker.cfg.instruction, query=q, document=passage_string(title, text))
    if chat:
        prompt = tok.apply_chat_template([{"role": "system", "content": RERANK_SYSTEM},
                                          {"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=False)
        assert prompt.endswith("<|im_start|>assistant\n")
    else:
        prompt = f"{RERANK_SYSTEM}\n\n{user}\n\nAnswer:"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = reranker.model(input_ids=ids).logits[0, -1]
        w = reranker.score([q], [[(title, text)]])
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert w.dtype == torch.float32 and w.shape == (1, 1)
    assert torch.allclose(w[0, 0], logits[yes] - logits[no], atol=1e-6)


def test_settings_hold_the_prompt_keys_and_no_shift_parameters():
    reranker = tiny(instruction="find the passage", yes_token="answer", no_token="no")
    settings = reranker.settings()
    assert (settings["kind"], settings["instruction"], settings["yes_token"], settings["no_token"]) == (
        "causal_lm", "find the passage", "answer", "no")
    assert reranker.shift_parameters() == []
    assert "find the passage" in reranker.inputs.prompt("q", "d")


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_batch_scores_as_one_pair_at_a_time_with_padding_on_either_side(side):
    reranker = tiny()
    inputs = reranker.tokenize(QUESTIONS, PASSAGES)
    assert inputs["attention_mask"][..., -1].all()  # tokenize pads left: every prompt ends at L-1
    lengths = inputs["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max()  # the batch has padding
    if side == "right":  # move every row's tokens to the front
        ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
        L = ids.shape[-1]
        for b in range(2):
            for i in range(2):
                n = int(lengths[b, i])
                ids[b, i] = torch.cat([inputs["input_ids"][b, i, L - n:], inputs["input_ids"][b, i, : L - n]])
                mask[b, i] = torch.cat([inputs["attention_mask"][b, i, L - n:], inputs["attention_mask"][b, i, : L - n]])
        inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        batch = reranker(inputs)
        single = torch.tensor([[reranker.score([q], [[p]])[0, 0].item() for p in row]
                               for q, row in zip(QUESTIONS, PASSAGES)])
    assert torch.allclose(batch, single, atol=1e-5), (batch, single)


def test_a_long_document_is_cut_and_the_prompt_still_ends_with_the_template():
    reranker = tiny(max_tokens=70)
    long = ("alice moreau " * 60).strip()
    inputs = reranker.tokenize([QUESTIONS[0]], [[("", long), ("", "short")]])
    assert inputs["input_ids"].shape[-1] == 70
    suffix = reranker.tokenizer(reranker.inputs.parts[2], add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, 0, -len(suffix):].tolist() == suffix
    with pytest.raises(ValueError, match=r"reranker\.max_tokens \(20\)"):
        tiny(max_tokens=20)


@pytest.mark.parametrize("key", ["yes_token", "no_token"])
def test_a_token_that_is_not_one_token_is_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=rf"reranker\.{key}: 'yes please' is 2 tokens"):
        tiny(**{key: "yes please"})
    with pytest.raises(ValueError, match=r"reranker\.yes_token / reranker\.no_token"):
        tiny(yes_token="no")


def test_conditional_causal_lm_reranker_scores_conditioned_questions():
    reranker = tiny(conditional=True)
    picks = reranker.select(QUESTIONS, PASSAGES, k=2)
    assert [sorted(p) for p in picks] == [[0, 1], [0, 1]]


def test_save_and_load_score_the_same(tmp_path):
    from gr_train.reranker import Reranker

    reranker = tiny(yes_token="answer")
    reranker.save(tmp_path / "r")
    loaded = Reranker.load(tmp_path / "r")
    with torch.no_grad():
        assert torch.allclose(loaded.score(QUESTIONS, PASSAGES), reranker.score(QUESTIONS, PASSAGES), atol=1e-6)
    assert dataclasses.asdict(loaded.cfg)["yes_token"] == "answer"
