"""Rerankers (gr_train/reranker.py): shapes, gradient flow, export round trip, per-pair scoring, checkpointing, errors.

Tiny random models from configs and word-level tokenizers built in memory: CPU, offline, a few seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.modeling_layers import GradientCheckpointingLayer

from gr_train.config import RerankerSection
from gr_train.data import passage_string
from gr_train.reranker import SETTINGS_FILE, Reranker, build_reranker, build_word_tokenizer

CORPUS = [
    "who wrote the silent harbour",
    "the silent harbour was written by alice moreau",
    "alice moreau was born in lyon",
    "bob stone was born in leeds and wrote the long road",
    "where was the author of the long road born",
    "query document",  # RankT5's prompt words
]
QUESTIONS = ["who wrote the silent harbour", "where was the author of the long road born"]
PASSAGES = [
    [
        ("silent harbour", "the silent harbour was written by alice moreau"),
        ("", "alice moreau was born in lyon"),
        ("bob stone", "bob stone wrote the long road"),
    ],
    [
        ("long road", "the long road was written by bob stone"),
        ("bob stone", "bob stone was born in leeds"),
        ("", "alice moreau was born in lyon"),
    ],
]
B, N = 2, 3

# No dropout, so that train mode (needed for checkpointing) is deterministic.
NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "t5": {"dropout_rate": 0.0},
}

# (kind, tokenizer style, model_config): the three kinds, plus model_type selection through AutoConfig.for_model.
CASES = {
    "cross_encoder": ("cross_encoder", "bert", {}),
    "cross_encoder_xlmr": ("cross_encoder", "bert", {"model_type": "xlm-roberta", "type_vocab_size": 2}),
    "rankt5": ("rankt5", "t5", {}),
    "bi_encoder": ("bi_encoder", "bert", {}),
}
KINDS = ["cross_encoder", "rankt5", "bi_encoder"]

# Parameters a kind freezes on purpose, with the reason given in reranker.py:
#   rankt5: decoder self-attention over a single position is softmax over one key = 1, so q, k and the position
#           bias have exactly zero gradient; bi_encoder: mean pooling does not read the BERT pooler.
FROZEN = {
    "cross_encoder": set(),
    "cross_encoder_xlmr": set(),
    "rankt5": {
        "model.decoder.block.0.layer.0.SelfAttention.q.weight",
        "model.decoder.block.0.layer.0.SelfAttention.k.weight",
        "model.decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "model.decoder.block.1.layer.0.SelfAttention.q.weight",
        "model.decoder.block.1.layer.0.SelfAttention.k.weight",
    },
    "bi_encoder": {"model.pooler.dense.weight", "model.pooler.dense.bias"},
}


@pytest.fixture(scope="module")
def tokenizers():
    return {"bert": build_word_tokenizer(CORPUS, "bert"), "t5": build_word_tokenizer(CORPUS, "t5")}


def make(case: str, tokenizers, seed: int = 0, **fields) -> tuple[Reranker, RerankerSection]:
    kind, style, model_config = CASES[case]
    family = "t5" if kind == "rankt5" else "bert"
    cfg = RerankerSection(kind=kind, model_config={**NO_DROPOUT[family], **model_config}, max_tokens=32, **fields)
    torch.manual_seed(seed)
    return build_reranker(cfg, tokenizers[style]), cfg


def scores(reranker: Reranker, questions=QUESTIONS, passages=PASSAGES) -> torch.Tensor:
    with torch.no_grad():
        return reranker(reranker.tokenize(questions, passages))


@pytest.mark.parametrize("case", list(CASES))
def test_shape_dtype_and_every_parameter_gets_a_gradient(case, tokenizers):
    reranker, _ = make(case, tokenizers)
    reranker.train()
    w = reranker(reranker.tokenize(QUESTIONS, PASSAGES))
    assert w.shape == (B, N) and w.dtype == torch.float32 and torch.isfinite(w).all()
    # Distinct candidates get distinct scores (the model reads the passage, not just the question).
    assert w.std(dim=1).min() > 0

    weights = torch.randn(B, N, generator=torch.Generator().manual_seed(1))
    (w * weights).sum().backward()
    frozen = {name for name, p in reranker.named_parameters() if not p.requires_grad}
    assert frozen == FROZEN[case]
    for name, p in reranker.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
            assert p.grad.abs().max() > 0, f"{name}: gradient is zero everywhere"
        else:
            assert p.grad is None or p.grad.abs().max() == 0, f"{name}: frozen but got a gradient"


def test_model_type_selects_the_architecture(tokenizers):
    reranker, _ = make("cross_encoder_xlmr", tokenizers)
    assert type(reranker.model).__name__ == "XLMRobertaForSequenceClassification"
    assert reranker.model.config.hidden_size == 32 and reranker.model.config.num_hidden_layers == 2
    assert reranker.model.config.vocab_size == len(tokenizers["bert"])


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_build_from_folder_give_identical_scores(kind, tokenizers, tmp_path):
    reranker, cfg = make(kind, tokenizers)
    w = scores(reranker)
    reranker.save(tmp_path / "export")
    assert (tmp_path / "export" / "config.json").is_file() and (tmp_path / "export" / SETTINGS_FILE).is_file()

    # From the folder alone: no tokenizer argument, a different seed (nothing may be re-initialised).
    torch.manual_seed(123)
    rebuilt = build_reranker(dataclasses.replace(cfg, name_or_path=str(tmp_path / "export"), model_config={}))
    loaded = Reranker.load(tmp_path / "export")
    for other in (rebuilt, loaded):
        assert other.kind == kind
        assert torch.equal(scores(other), w)
        assert other.state_dict().keys() == reranker.state_dict().keys()
        assert {n for n, p in other.named_parameters() if not p.requires_grad} == FROZEN[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_plain_transformers_reproduce_the_scores(kind, tokenizers, tmp_path):
    """The export is a plain HF folder; the scoring rule, re-implemented here from the docs, gives the same w."""
    reranker, _ = make(kind, tokenizers)
    w = scores(reranker)
    reranker.save(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    flat = [(q, passage_string(title, text)) for q, row in zip(QUESTIONS, PASSAGES) for title, text in row]
    with torch.no_grad():
        if kind == "cross_encoder":
            model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
            assert model.config.num_labels == 1
            enc = tok([q for q, _ in flat], [d for _, d in flat], padding=True, return_tensors="pt")
            ref = model(**enc).logits[:, 0]
        elif kind == "rankt5":
            model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
            enc = tok([f"Query: {q} Document: {d}" for q, d in flat], padding=True, return_tensors="pt")
            start = torch.full((len(flat), 1), model.config.decoder_start_token_id)
            logits = model(**enc, decoder_input_ids=start).logits
            ref = logits[:, 0, tok.convert_tokens_to_ids("<extra_id_10>")]
        else:
            model = AutoModel.from_pretrained(tmp_path).eval()

            def embed(texts):
                enc = tok(texts, padding=True, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).float()
                return (h * m).sum(1) / m.sum(1)

            q = embed(QUESTIONS).repeat_interleave(N, dim=0)
            ref = 20.0 * torch.cosine_similarity(q, embed([d for _, d in flat]), dim=-1)
    torch.testing.assert_close(ref.view(B, N), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_each_candidate_is_scored_on_its_own(kind, tokenizers):
    reranker, _ = make(kind, tokenizers)
    w = scores(reranker)
    # Padding candidates appended: the real ones keep their scores.
    padded = scores(reranker, passages=[row + [("", "")] * 2 for row in PASSAGES])
    torch.testing.assert_close(padded[:, :N], w, rtol=1e-5, atol=1e-5)
    # A much longer candidate in slot 2 (longer padded length for the whole batch) leaves slots 0 and 1 alone.
    long = ("bob stone", " ".join(["alice moreau was born in lyon"] * 4))
    changed = scores(reranker, passages=[row[:2] + [long] for row in PASSAGES])
    torch.testing.assert_close(changed[:, :2], w[:, :2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed[:, 2], w[:, 2])
    # A question scored alone gets the same scores as in the batch.
    alone = scores(reranker, QUESTIONS[1:], PASSAGES[1:])
    torch.testing.assert_close(alone[0], w[1], rtol=1e-5, atol=1e-5)


def _count_recomputation(reranker: Reranker) -> list[int]:
    """Count calls of a linear layer inside the first checkpointable layer: 1 per forward, 2 when recomputed."""
    layer = next(m for m in reranker.model.modules() if isinstance(m, GradientCheckpointingLayer))
    linear = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))
    calls = [0]
    linear.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_the_same_scores_and_gradients(kind, tokenizers):
    results = {}
    for checkpointing in (False, True):
        reranker, _ = make(kind, tokenizers, gradient_checkpointing=checkpointing)
        reranker.train()  # HF checkpoints in train mode only
        calls = _count_recomputation(reranker)
        w = reranker(reranker.tokenize(QUESTIONS, PASSAGES))
        (w * torch.randn(B, N, generator=torch.Generator().manual_seed(1))).sum().backward()
        # The question and the passages are two forwards for the bi-encoder, one for the others.
        forwards = 2 if kind == "bi_encoder" else 1
        assert calls[0] == forwards * (2 if checkpointing else 1)
        grads = {n: p.grad for n, p in reranker.named_parameters() if p.requires_grad}
        results[checkpointing] = (w.detach(), grads)
    (w_off, g_off), (w_on, g_on) = results[False], results[True]
    torch.testing.assert_close(w_on, w_off, rtol=1e-6, atol=1e-6)  # T5 differs by ~4e-7 (float rounding)
    assert g_on.keys() == g_off.keys()
    for name in g_off:
        # Gradients are O(0.1-1); T5's differ by up to ~6e-7 (rounding in a different op order), BERT's by 0.
        torch.testing.assert_close(g_on[name], g_off[name], rtol=1e-5, atol=2e-6, msg=name)


def test_unknown_kind_is_named(tokenizers):
    with pytest.raises(ValueError, match="reranker.kind: unknown 'colbert'"):
        build_reranker(RerankerSection(kind="colbert"), tokenizers["bert"])


@pytest.mark.parametrize("kind", KINDS)
def test_building_from_scratch_needs_a_tokenizer(kind):
    with pytest.raises(ValueError, match="needs a tokenizer.*reranker.tokenizer_path"):
        build_reranker(RerankerSection(kind=kind))


def test_rankt5_without_the_score_token_is_named():
    tok = build_word_tokenizer(CORPUS, "t5", extra_ids=10)  # <extra_id_0> .. <extra_id_9>
    with pytest.raises(ValueError, match="reranker.score_token: the tokenizer has no token '<extra_id_10>'"):
        build_reranker(RerankerSection(kind="rankt5"), tok)
    # Another sentinel that the tokenizer does have works.
    assert build_reranker(RerankerSection(kind="rankt5", score_token="<extra_id_3>"), tok).score_token_id > 0


def test_folder_without_tokenizer_needs_one(tokenizers, tmp_path):
    reranker, cfg = make("cross_encoder", tokenizers)
    reranker.model.save_pretrained(tmp_path)  # weights only
    folder_cfg = dataclasses.replace(cfg, name_or_path=str(tmp_path))
    with pytest.raises(ValueError, match="no tokenizer in"):
        build_reranker(folder_cfg)
    # Falls back to the tokenizer argument.
    assert torch.equal(scores(build_reranker(folder_cfg, tokenizers["bert"])), scores(reranker))


def test_loading_a_folder_as_another_kind_is_refused(tokenizers, tmp_path):
    reranker, _ = make("bi_encoder", tokenizers)
    reranker.save(tmp_path)
    with pytest.raises(ValueError, match="reranker.kind is 'cross_encoder' but .* saved with 'bi_encoder'"):
        build_reranker(RerankerSection(kind="cross_encoder", name_or_path=str(tmp_path)))
    with pytest.raises(ValueError, match="reranker.score_scale is 5.0 but .* saved with 20.0"):
        build_reranker(RerankerSection(kind="bi_encoder", name_or_path=str(tmp_path), score_scale=5.0))


def test_uneven_candidate_lists_are_refused(tokenizers):
    reranker, _ = make("cross_encoder", tokenizers)
    with pytest.raises(ValueError, match="same number n >= 1 of candidates"):
        reranker.tokenize(QUESTIONS, [PASSAGES[0], PASSAGES[1][:2]])


@pytest.mark.parametrize("kind", KINDS)
def test_score_takes_plain_passage_strings_as_untitled_passages(kind, tokenizers):
    reranker, _ = make(kind, tokenizers)
    texts = [[text for _, text in row] for row in PASSAGES]
    untitled = [[("", text) for text in row] for row in texts]
    with torch.no_grad():
        assert torch.equal(reranker.score(QUESTIONS, texts), reranker.score(QUESTIONS, untitled))
    with pytest.raises(TypeError, match="candidate 1 of question 0"):
        reranker.score(QUESTIONS, [[texts[0][0], 3, texts[0][2]], texts[1]])
