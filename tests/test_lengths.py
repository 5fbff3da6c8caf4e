"""Length budgets against the model's position limit (lengths.py), checked when the model is built, and truncation
that removes a passage's whole text counted and warned about.

Before: a GPT-2 reader with n_positions=64, passage_max_tokens=48 and a 29-character question failed inside the
forward with "IndexError: index out of range in self"; a Llama reader ran past max_position_embeddings silently; a
FiD-T5 question that fills passage_max_tokens turned every passage into the same truncated question, silently.
"""

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, T5Config

from gr_train import synthetic, train
from gr_train.config import ReaderSection, RerankerSection, SyntheticSection, load_config
from gr_train.lengths import position_limit
from gr_train.models import build_reader
from gr_train.reader import byte_level_tokenizer
from gr_train.reranker import build_reranker
from gr_train.runtime import LocalRuntime

QUESTION_29 = "who wrote the book on tides ?"  # 29 characters: 29 byte-level tokens
assert len(QUESTION_29) == 29


def causal(model_config, **kw):
    torch.manual_seed(0)
    return build_reader(ReaderSection(kind="causal_lm", model_config=model_config, **kw))


@pytest.mark.parametrize("model_config,key", [
    ({"model_type": "gpt2", "n_positions": 64}, "n_positions"),
    ({"model_type": "llama", "max_position_embeddings": 64}, "max_position_embeddings"),
    ({"model_type": "qwen2", "max_position_embeddings": 64}, "max_position_embeddings"),
])
def test_decoder_only_budgets_past_the_position_limit_fail_at_build(model_config, key):
    # passage 48 + prompt "question: \nanswer:" (18 byte tokens) + 1 question token + answer 8 = 75 > 64
    with pytest.raises(ValueError, match=rf"reader.passage_max_tokens \(48\) \+ the prompt without its question "
                                         rf"\(18\) \+ one question token \(1\) \+ reader.answer_max_tokens \(8\) "
                                         rf"= 75 positions > the model's {key} \(64\)"):
        causal(model_config, passage_max_tokens=48, answer_max_tokens=8)
    with pytest.raises(ValueError, match=r"reader.prompt_max_tokens \(20\) .* = 76 positions > the model's"):
        causal(model_config, passage_max_tokens=48, answer_max_tokens=8, prompt_max_tokens=20)


@pytest.mark.parametrize("model_type,key", [("gpt2", "n_positions"), ("llama", "max_position_embeddings")])
def test_a_long_question_is_cut_from_the_left_to_what_the_limit_leaves(model_type, key, caplog):
    # limit 96 - passage 48 - answer 8 = 40 prompt tokens; the 29-character question makes a 47-token prompt.
    reader = causal({"model_type": model_type, key: 96}, passage_max_tokens=48, answer_max_tokens=8)
    assert reader.inputs.prompt_max_tokens == 40
    with caplog.at_level(logging.WARNING, logger="gr_train.lengths"):
        inputs = reader.tokenize([QUESTION_29, "who?"], [[("Tides", "a book by ann")], [("Sky", "blue")]],
                                 ["ann", "x" * 20])
    assert inputs["prompt_ids"].shape[1] == 40
    # the question loses its first 7 tokens (bytes); the template stays whole
    assert reader.tokenizer.decode(inputs["prompt_ids"][0]) == "question: " + QUESTION_29[7:] + "\nanswer:"
    assert reader.truncations.counts["prompts"] == 1
    assert "1 of 2 questions were cut from the left so that their prompt fits 40 tokens" in caplog.text
    # The last target position is 48 + 40 + 8 - 1 = 95 < 96: no IndexError (GPT-2), no position past the limit.
    states = reader.encode_passages(inputs)
    loss = reader.answer_loss(states, inputs, torch.zeros(2, 1))
    assert torch.isfinite(loss).all()
    assert reader.generate_ids(states, inputs, max_new_tokens=30).shape[1] <= 96 - 48 - 40


def test_fid_template_that_fills_the_budget_fails_at_build():
    # "question:  title:  context: " + eos = 28 byte-level tokens >= 24: no passage text could ever be read.
    with pytest.raises(ValueError,
                       match=r"reader.passage_max_tokens \(24\) leaves no passage text: .* takes 28 tokens"):
        build_reader(ReaderSection(kind="fid_t5", passage_max_tokens=24))


def test_fid_question_that_fills_the_budget_is_counted_and_warned(caplog):
    reader = build_reader(ReaderSection(kind="fid_t5", passage_max_tokens=40))
    passages = [[("Book", "the book was written by bob"), ("Sky", "the sky is blue"), ("", "")]]
    with caplog.at_level(logging.WARNING, logger="gr_train.lengths"):
        inputs = reader.tokenize(["who?"], passages, ["bob"])
        assert reader.truncations.counts["passages_without_text"] == 0
        inputs = reader.tokenize(["who is the author of the book on tides?"], passages, ["bob"])
    # Both real passages were cut to the question (the padded one has no text to lose), and read alike but for
    # their titles: what used to happen silently.
    assert reader.truncations.counts["passages_without_text"] == 2
    assert "2 of 2 FiD inputs lost their whole context text" in caplog.text
    text = reader.tokenizer.decode(inputs["passage_ids"][0, 0], skip_special_tokens=True)
    assert "context" not in text and text.startswith("question: who is the author")


def test_demo_reader_budgets():
    tok = synthetic.build_tokenizer(SyntheticSection())
    with pytest.raises(ValueError, match=r"reader.answer_max_tokens \(15\) \+ \[BOS\] \+ \[ANS\] \(2\) > the demo "
                                         r"reader's max_decoder_tokens \(16\)"):
        build_reader(ReaderSection(kind="demo_fid", answer_max_tokens=15), tok)
    reader = build_reader(ReaderSection(kind="demo_fid", passage_max_tokens=8, answer_max_tokens=4), tok)
    words = sorted(w for w in tok.get_vocab() if not w.startswith("["))
    reader.tokenize([" ".join(words[:3])], [[(words[3], words[4])]], [words[5]])
    assert reader.truncations.counts["passages_without_text"] == 0
    reader.tokenize([" ".join(words[:7])], [[(words[3], words[4]), ("", "")]], [words[5]])
    assert reader.truncations.counts["passages_without_text"] == 1  # 7 question tokens + [SEP] fill L - 1 = 7


def test_reranker_pair_budget_fails_at_build():
    tok = byte_level_tokenizer()
    for kind in ("cross_encoder", "bi_encoder"):
        with pytest.raises(ValueError, match=r"reranker: reranker.max_tokens \(64\) = 64 positions > the model's "
                                             r"max_position_embeddings \(32\); lower reranker.max_tokens"):
            build_reranker(RerankerSection(kind=kind, max_tokens=64, model_config={"max_position_embeddings": 32}), tok)
        build_reranker(RerankerSection(kind=kind, max_tokens=32, model_config={"max_position_embeddings": 32}), tok)
    build_reranker(RerankerSection(kind="rankt5", max_tokens=4096, score_token="a"), tok)  # relative: no limit


def test_position_limit_of_each_family():
    assert position_limit(AutoConfig.for_model("gpt2", n_positions=1024)) == ("n_positions", 1024)
    assert position_limit(AutoConfig.for_model("llama", max_position_embeddings=2048)) == \
        ("max_position_embeddings", 2048)
    # RoBERTa / XLM-R positions start after the padding index: 514 embeddings hold 512 tokens.
    assert position_limit(AutoConfig.for_model("xlm-roberta", max_position_embeddings=514, pad_token_id=1)) == \
        ("max_position_embeddings", 512)
    assert position_limit(T5Config()) is None


def test_recipe_logs_the_truncation_counts():
    reader = build_reader(ReaderSection(kind="fid_t5", passage_max_tokens=40))
    reader.tokenize(["who is the author of the book on tides?"], [[("Book", "by bob")]], ["bob"])
    recipe = SimpleNamespace(runtime=LocalRuntime(load_config()), reader=reader)
    assert train.truncation_scalars(recipe) == {"reader/truncated_passages_without_text": 1.0}


def _reader_pair(kind, **kw):
    from gr_train.models import READERS

    cfg = ReaderSection(kind=kind, **kw)
    tok = synthetic.build_tokenizer(SyntheticSection()) if kind == "demo_fid" else None
    return lambda: build_reader(cfg, tok), lambda: READERS[kind].build_inputs(cfg, tok)


def _reranker_pair(**kw):
    from gr_train.reranker import build_reranker_inputs

    cfg = RerankerSection(**kw)
    tok = byte_level_tokenizer()
    return lambda: build_reranker(cfg, tok), lambda: build_reranker_inputs(cfg, tok)


BUDGET_ERRORS = {
    "causal_lm positions": (lambda: _reader_pair("causal_lm", model_config={"model_type": "llama",
                            "max_position_embeddings": 64}, passage_max_tokens=48, answer_max_tokens=8),
                            r"= 75 positions > the model's max_position_embeddings \(64\)"),
    "fid_t5 template": (lambda: _reader_pair("fid_t5", passage_max_tokens=24),
                        r"reader.passage_max_tokens \(24\) leaves no passage text"),
    "demo_fid answer": (lambda: _reader_pair("demo_fid", answer_max_tokens=15),
                        r"reader.answer_max_tokens \(15\) \+ \[BOS\] \+ \[ANS\] \(2\) > the demo"),
    "cross_encoder positions": (lambda: _reranker_pair(kind="cross_encoder", max_tokens=64,
                                                       model_config={"max_position_embeddings": 32}),
                                r"reranker.max_tokens \(64\) = 64 positions > the model's max_position_embeddings"),
    "rankt5 score token": (lambda: _reranker_pair(kind="rankt5", score_token="<extra_id_10>"),
                           r"reranker.score_token: the tokenizer has no token '<extra_id_10>'"),
}


@pytest.mark.parametrize("case", list(BUDGET_ERRORS))
def test_the_input_builders_alone_refuse_what_the_models_refuse(case):
    """The input builders alone (each reader family's build_inputs and reranker.build_reranker_inputs, what
    models.build_inputs calls for the preprocessing workers) check the budgets and settings from the models'
    configs: the same error, in the same words, as building the model."""
    make, match = BUDGET_ERRORS[case]
    build_model, build_inputs = make()
    for build in (build_model, build_inputs):
        with pytest.raises(ValueError, match=match):
            build()
