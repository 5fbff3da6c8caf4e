"""Every reader family in fp32 / bf16 / fp16 with eager and sdpa attention: the masks and biases stay finite
(attention.neg_bias), the loss equals the fp32 loss within the dtype's tolerance, and the reader's dtype is the
config's whatever dtype its checkpoint was saved in.

The fp16 failure this guards against: a fill value of -1e9 is -inf in fp16, a fully masked row (the empty passage of a
question without passages) gives NaN in eager attention, and NaN spreads to the loss and to generate ('').
"""

import pytest
import torch

from gr_train import gumbel, synthetic
from gr_train.attention import neg_bias, to_attention_dtype
from gr_train.config import ConfigError, ReaderSection, SyntheticSection, load_config
from gr_train.models import build_models, build_reader

QUESTIONS = ["who wrote the book?", "where does ann live?"]
PASSAGES = [
    [("Book", "the book was written by bob"), ("Sky", "the sky is blue"), ("", "")],
    [("Ann", "ann lives in paris"), ("Red", "roses are red"), ("Cat", "the cat sleeps")],
]
TARGETS = ["bob", "paris"]
VALID = torch.tensor([[True, True, False], [True, True, True]])

# (reader.kind, model_config, attention implementations)
FAMILIES = {
    "gpt2": ("causal_lm", {"model_type": "gpt2", "initializer_range": 0.3}, ("eager", "sdpa")),
    "qwen2": ("causal_lm", {"model_type": "qwen2", "initializer_range": 0.3}, ("eager", "sdpa")),
    "fid_t5": ("fid_t5", {"initializer_factor": 1.0}, ("eager", "sdpa")),
    "demo_fid": ("demo_fid", {"d_model": 32, "d_ff": 64, "n_iterations": 2}, ("eager",)),  # plain torch attention
}
# |loss(dtype) - loss(fp32)| <= ATOL[dtype], on token-mean losses of 5-8 nats (random tiny models): bf16 keeps 8
# mantissa bits (relative step 4e-3), fp16 11 (5e-4). Largest differences seen over these cases: 0.023 (bf16,
# qwen2 eager), 0.0025 (fp16); the bounds leave a factor ~3-4.
ATOL = {"fp32": 0.0, "bf16": 0.08, "fp16": 0.01}
CASES = [(f, a, d) for f, (_, _, attns) in FAMILIES.items() for a in attns for d in ("fp32", "bf16", "fp16")]


def make_reader(family: str, attn: str, dtype: str | None, name_or_path: str | None = None):
    kind, model_config, _ = FAMILIES[family]
    torch.manual_seed(0)
    L = 16 if kind == "demo_fid" else 72  # the demo reader's max_passage_tokens; 72 bytes hold every FiD input
    cfg = ReaderSection(kind=kind, name_or_path=name_or_path, model_config=dict(model_config), passage_max_tokens=L,
                        answer_max_tokens=6, attn_implementation=attn, dtype=dtype)
    tokenizer = synthetic.build_tokenizer(SyntheticSection()) if kind == "demo_fid" and not name_or_path else None
    return build_reader(cfg, tokenizer)


def _losses(reader, questions, passages, targets, log_M):
    inputs = reader.tokenize(questions, passages, targets)
    states = reader.encode_passages(inputs)
    return reader.answer_loss(states, inputs, log_M), reader.generate(states, inputs, log_M)


def _demo_text(family):
    """The demo reader's word-level vocabulary has no 'bob': its inputs come from the generator's vocabulary."""
    if family != "demo_fid":
        return QUESTIONS, PASSAGES, TARGETS
    tok = synthetic.build_tokenizer(SyntheticSection())
    words = sorted(w for w in tok.get_vocab() if not w.startswith("["))[:12]
    q = [f"{words[0]} {words[1]}", f"{words[2]} {words[3]}"]
    p = [[(words[4], f"{words[5]} {words[6]}"), (words[7], words[8]), ("", "")],
         [(words[9], words[10]), (words[11], words[4]), (words[5], words[6])]]
    return q, p, [words[5], words[10]]


@pytest.mark.parametrize("family,attn,dtype", CASES)
def test_loss_is_finite_and_equals_fp32_in_every_dtype(family, attn, dtype):
    questions, passages, targets = _demo_text(family)
    ref = make_reader(family, attn, "fp32")
    reader = make_reader(family, attn, dtype)
    assert next(reader.parameters()).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16,
                                               "fp16": torch.float16}[dtype]
    M = torch.tensor([[0.9, 0.2, 0.0], [0.3, 1.0, 1e-12]])
    log_M = gumbel.log_mask(M, valid=VALID)
    expected, expected_text = _losses(ref, questions, passages, targets, log_M)
    loss, text = _losses(reader, questions, passages, targets, log_M)
    assert torch.isfinite(loss).all(), loss
    assert (loss - expected).abs().max() <= ATOL[dtype], (loss, expected)
    if dtype == "fp32":
        assert text == expected_text

    # A question without passages: one empty (fully masked) passage. fp16 + eager gave NaN here.
    inputs = reader.tokenize(questions[:1], [[]], targets[:1])
    states = reader.encode_passages(inputs)
    empty = reader.answer_loss(states, inputs, torch.zeros(1, 1))
    ref_inputs = ref.tokenize(questions[:1], [[]], targets[:1])
    ref_empty = ref.answer_loss(ref.encode_passages(ref_inputs), ref_inputs, torch.zeros(1, 1))
    assert torch.isfinite(empty).all() and (empty - ref_empty).abs().max() <= ATOL[dtype], (empty, ref_empty)
    if family != "demo_fid":
        assert torch.isfinite(reader.answer_logits(states, inputs, torch.zeros(1, 1))).all()
    if FAMILIES[family][0] == "causal_lm":  # (random T5s do predict the pad first)
        # NaN logits decode as token 0 (argmax of NaN; the pad, decoded away) at every step, i.e. ''.
        assert (reader.generate_ids(states, inputs, max_new_tokens=4) != 0).any()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_checkpoint_saved_in_fp16_loads_in_the_configured_dtype(family, tmp_path):
    reader = make_reader(family, "eager", "fp16")
    if family == "demo_fid":
        reader.save(tmp_path / "r")
    else:
        reader.model.save_pretrained(tmp_path / "r")
        reader.tokenizer.save_pretrained(tmp_path / "r")
    for dtype, expected in ((None, torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        loaded = make_reader(family, "eager", dtype, name_or_path=str(tmp_path / "r"))
        assert {p.dtype for p in loaded.parameters()} == {expected}, dtype


def test_build_models_takes_the_reader_dtype_from_the_config(tmp_path):
    """reader.dtype unset: runtime.precision (fp32 under the local engine); set: that dtype."""
    for overrides, expected in (([], torch.float32), (["reader.dtype=bf16"], torch.bfloat16)):
        cfg = load_config(overrides=["reader.kind=causal_lm", "objective.name=gumbel", *overrides])
        reader, _ = build_models(cfg)
        assert {p.dtype for p in reader.parameters()} == {expected}


@pytest.mark.parametrize("overrides,match", [
    (["runtime.engine=deepspeed", "runtime.precision=bf16", "reader.dtype=fp16"], "reader.dtype: fp16 differs"),
    (["reader.trainable=true", "reader.dtype=bf16"], "reader.dtype: a trainable reader in bf16"),
    (["reader.dtype=fp8"], r"reader.dtype: expected .*'fp8'"),
])
def test_bad_reader_dtype_fails_with_the_key_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fill_value_is_finite_and_survives_an_added_logit(dtype):
    value = torch.tensor(neg_bias(dtype), dtype=dtype)
    assert torch.isfinite(value) and torch.isfinite(value - 1000)
    assert torch.exp(value.float()) == 0
    bias = torch.tensor([0.0, -3.0, -1e9, float(neg_bias(torch.float32))], requires_grad=True)
    cast = to_attention_dtype(bias, dtype)
    assert cast.dtype == dtype and torch.isfinite(cast).all()
    assert cast[:2].float().tolist() == [0.0, -3.0]
    cast.float().sum().backward()
    assert bias.grad[:2].tolist() == [1.0, 1.0]  # log M keeps its gradient through the cast
    row = torch.softmax(torch.full((4,), neg_bias(dtype), dtype=dtype).float(), -1)
    assert torch.allclose(row, torch.full((4,), 0.25))  # a fully masked row is uniform, not NaN
