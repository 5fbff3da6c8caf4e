"""Frozen readers (reader.py) on tiny random models: DMA exactness, split == naive, gradient flow, caching, loading.

Every family (FiD-T5, Llama, Qwen2, GPT-2) runs every test. Decoder-only weights use a large init scale so that
the answer depends visibly on the passages (checked by `_sensitive`); otherwise every equivalence would hold
trivially. The scale stays below the point where attention logits spread by more than -log(gumbel eps) = 20.7,
beyond which a hard mask is no longer the same as dropping passages.
"""

import dataclasses

import pytest
import torch

from gr_train import gumbel
from gr_train import reader as reader_module
from gr_train.config import ReaderSection
from gr_train.models import build_reader
from gr_train.reader import CausalLMReader, FiDT5Reader, token_mean_ce

QUESTIONS = ["who wrote the book?", "where does ann live?"]
PASSAGES = [
    [("Book", "the book was written by bob"), ("Sky", "the sky is blue"), ("Bob", "bob lives in rome")],
    [("Ann", "ann lives in paris"), ("Red", "roses are red"), ("Cat", "the cat sleeps")],
]
TARGETS = ["bob", "paris"]

FAMILIES = {
    "fid_t5": ("fid_t5", {"initializer_factor": 1.0}),  # T5 does not scale q.k: larger inits give logit spreads > 20
    "llama": ("causal_lm", {"model_type": "llama", "initializer_range": 0.3}),
    "qwen2": ("causal_lm", {"model_type": "qwen2", "initializer_range": 0.3}),
    "gpt2": ("causal_lm", {"model_type": "gpt2", "initializer_range": 0.3}),
}
TOL = dict(rtol=0, atol=1e-5)


def make_reader(family: str, attn: str = "eager", name_or_path: str | None = None, passage_max_tokens: int = 72):
    """A frozen tiny reader (byte-level tokenizer); 72 bytes hold the longest FiD input in full."""
    kind, model_config = FAMILIES[family]
    torch.manual_seed(0)
    cfg = ReaderSection(kind=kind, name_or_path=name_or_path, model_config=dict(model_config),
                        passage_max_tokens=passage_max_tokens, answer_max_tokens=8, attn_implementation=attn)
    return build_reader(cfg)


def _sensitive(a: torch.Tensor, b: torch.Tensor) -> None:
    """The two losses must differ clearly, so that an equality elsewhere in the test can fail."""
    assert (a - b).abs().max() > 1e-3, (a, b)


def _state_tensors(states) -> list[torch.Tensor]:
    out = []
    for field in dataclasses.fields(states):
        value = getattr(states, field.name)
        out.extend(value if isinstance(value, tuple) else [value])
    return out


families = pytest.mark.parametrize("family", list(FAMILIES))


@families
def test_hard_mask_equals_reading_only_the_selected_passages(family):
    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    M = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    hard = reader.answer_logits(states, inputs, gumbel.log_mask(M))

    selected = [[PASSAGES[0][0], PASSAGES[0][2]], [PASSAGES[1][1], PASSAGES[1][2]]]
    sub_inputs = reader.tokenize(QUESTIONS, selected, TARGETS)
    dropped = reader.answer_logits(reader.encode_passages(sub_inputs), sub_inputs, torch.zeros(2, 2))
    torch.testing.assert_close(hard, dropped, **TOL)
    labels = inputs["labels"]
    torch.testing.assert_close(token_mean_ce(hard, labels), token_mean_ce(dropped, labels), **TOL)
    _sensitive(reader.answer_loss(states, inputs, torch.zeros(2, 3)), token_mean_ce(hard, labels))


@families
def test_answer_loss_equals_naive_and_states_are_reusable(family):
    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    log_M = gumbel.log_mask(torch.tensor([[0.9, 0.05, 0.5], [0.2, 1.0, 1e-12]]))
    loss = reader.answer_loss(states, inputs, log_M)
    assert loss.shape == (2,) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, reader.answer_loss_naive(inputs, log_M), **TOL)
    # One encoding serves many answer passes (baselines): an earlier pass must not change a later one.
    other = reader.answer_loss(states, inputs, torch.zeros(2, 3))
    _sensitive(loss, other)
    torch.testing.assert_close(reader.answer_loss(states, inputs, log_M), loss, rtol=0, atol=0)


@families
def test_gradient_reaches_the_mask_and_not_the_reader(family):
    reader = make_reader(family)
    assert not any(p.requires_grad for p in reader.parameters())
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    grads = []
    for loss_fn in (lambda lm: reader.answer_loss(states, inputs, lm), lambda lm: reader.answer_loss_naive(inputs, lm)):
        w = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.0, -1.0]], requires_grad=True)  # reranker scores (leaf)
        M = gumbel.relaxed_topk_mask(w, k=2, tau=0.5, generator=torch.Generator().manual_seed(0))
        log_M = gumbel.log_mask(M)
        log_M.retain_grad()
        loss_fn(log_M).mean().backward()
        for grad in (log_M.grad, w.grad):
            assert torch.isfinite(grad).all() and (grad.abs() > 0).any()
        grads.append(log_M.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL)  # the split path's gradient is the naive one
    assert all(p.grad is None for p in reader.parameters())


@families
def test_passage_states_hold_no_graph(family):
    reader = make_reader(family)
    reader.requires_grad_(True)  # even a trainable reader must not record the passage pass
    states = reader.encode_passages(reader.tokenize(QUESTIONS, PASSAGES, TARGETS))
    tensors = _state_tensors(states)
    assert len(tensors) >= 2
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)


@families
def test_padded_candidates_behave_like_absent_ones(family):
    reader = make_reader(family)
    M = torch.tensor([[0.9, 0.05, 0.5], [0.2, 1.0, 0.3]])
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    loss = reader.answer_loss(reader.encode_passages(inputs), inputs, gumbel.log_mask(M))

    padded = [ps[:1] + [("", "")] + ps[1:] + [("", "")] for ps in PASSAGES]
    valid = torch.tensor([[True, False, True, True, False]] * 2)
    M_padded = torch.full((2, 5), 0.8).masked_scatter(valid, M)  # padded slots hold a non-zero M on purpose
    pad_inputs = reader.tokenize(QUESTIONS, padded, TARGETS)
    pad_states = reader.encode_passages(pad_inputs)
    pad_loss = reader.answer_loss(pad_states, pad_inputs, gumbel.log_mask(M_padded, valid=valid))
    torch.testing.assert_close(pad_loss, loss, **TOL)
    _sensitive(pad_loss, reader.answer_loss(pad_states, pad_inputs, gumbel.log_mask(M_padded)))


@families
def test_eager_and_sdpa_agree(family):
    losses, grads = [], []
    for attn in ("eager", "sdpa"):
        reader = make_reader(family, attn=attn)
        assert reader.model.config._attn_implementation == attn
        inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
        log_M = gumbel.log_mask(torch.tensor([[0.9, 0.05, 0.5], [0.2, 1.0, 0.3]])).requires_grad_(True)
        loss = reader.answer_loss(reader.encode_passages(inputs), inputs, log_M)
        loss.sum().backward()
        losses.append(loss.detach())
        grads.append(log_M.grad)
    torch.testing.assert_close(losses[0], losses[1], **TOL)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


@families
def test_from_pretrained_local_folder(family, tmp_path):
    reader = make_reader(family)
    reader.model.save_pretrained(tmp_path)
    reader.tokenizer.save_pretrained(tmp_path)
    loaded = make_reader(family, name_or_path=str(tmp_path))
    assert type(loaded) is type(reader) and type(loaded.model) is type(reader.model)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    loaded_inputs = loaded.tokenize(QUESTIONS, PASSAGES, TARGETS)
    assert all(torch.equal(inputs[key], loaded_inputs[key]) for key in inputs)
    log_M = gumbel.log_mask(torch.tensor([[0.9, 0.05, 0.5], [0.2, 1.0, 0.3]]))
    torch.testing.assert_close(
        loaded.answer_loss(loaded.encode_passages(inputs), inputs, log_M),
        reader.answer_loss(reader.encode_passages(inputs), inputs, log_M),
        rtol=0, atol=0,
    )


def test_tokenizer_from_its_own_folder_when_the_checkpoint_has_none(tmp_path):
    """FiD checkpoints often ship weights only: reader.tokenizer_path names the tokenizer."""
    reader = make_reader("fid_t5")
    reader.model.save_pretrained(tmp_path / "weights")
    reader.tokenizer.save_pretrained(tmp_path / "tok")
    cfg = ReaderSection(kind="fid_t5", name_or_path=str(tmp_path / "weights"), tokenizer_path=str(tmp_path / "tok"),
                        passage_max_tokens=72, answer_max_tokens=8)
    loaded = build_reader(cfg)
    assert loaded.tokenizer.get_vocab() == reader.tokenizer.get_vocab()
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    assert all(torch.equal(inputs[k], v) for k, v in loaded.tokenize(QUESTIONS, PASSAGES, TARGETS).items())


def _teacher_forced(reader, states, inputs, ids, valid, log_M):
    """answer_logits with `ids` [B, t] as the target (valid [B, t] bool marks the real tokens)."""
    forced = dict(inputs, labels=ids.masked_fill(~valid, -100), target_ids=ids, target_mask=valid)
    return reader.answer_logits(states, forced, log_M)


@families
def test_generate_is_greedy_under_the_mask(family):
    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES)
    states = reader.encode_passages(inputs)
    log_M = gumbel.log_mask(torch.tensor([[1.0, 0.0, 1.0], [0.3, 1.0, 0.7]]))
    ids = reader.generate_ids(states, inputs, log_M, max_new_tokens=4)
    assert ids.shape[0] == 2 and 1 <= ids.shape[1] <= 4
    eos = reader.tokenizer.eos_token_id
    valid = torch.cumsum((ids == eos).long(), dim=1) - (ids == eos).long() == 0  # up to and including the first eos
    argmax = _teacher_forced(reader, states, inputs, ids, valid, log_M).argmax(-1)
    assert torch.equal(argmax[valid], ids[valid])
    texts = reader.generate(states, inputs, log_M, max_new_tokens=4)
    assert texts == reader.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert reader.generate(states, inputs, None, 4) == reader.generate(states, inputs, torch.zeros(2, 3), 4)


@families
def test_incremental_decoding_matches_teacher_forcing(family, monkeypatch):
    """Feed a fixed, varied token sequence through generate's step function (tiny random models tend to repeat
    one token, which would hide a broken cache): every step's logits equal the one-pass teacher-forced logits,
    so the incremental cache, positions and masks are right."""
    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES)
    states = reader.encode_passages(inputs)
    log_M = gumbel.log_mask(torch.tensor([[1.0, 0.0, 1.0], [0.3, 1.0, 0.7]]))
    tokens = torch.randint(3, len(reader.tokenizer), (2, 5), generator=torch.Generator().manual_seed(0))
    step_logits = []

    def forced_greedy(logits, step, eos_id, max_new_tokens):
        step_logits.append(logits)
        for t in range(tokens.shape[1] - 1):
            step_logits.append(step(tokens[:, t]))
        return tokens

    monkeypatch.setattr(reader_module, "_greedy", forced_greedy)
    assert torch.equal(reader.generate_ids(states, inputs, log_M), tokens)
    forced = _teacher_forced(reader, states, inputs, tokens, torch.ones_like(tokens, dtype=torch.bool), log_M)
    torch.testing.assert_close(torch.stack(step_logits, dim=1), forced, **TOL)


def test_fid_single_passage_matches_plain_t5():
    """n=1, M=1: FiD is ordinary T5 on that input (HF's own masks and decoder shifting)."""
    reader = make_reader("fid_t5")
    inputs = reader.tokenize(QUESTIONS, [ps[:1] for ps in PASSAGES], TARGETS)
    ours = reader.answer_logits(reader.encode_passages(inputs), inputs, torch.zeros(2, 1))
    plain = reader.model(
        input_ids=inputs["passage_ids"][:, 0], attention_mask=inputs["passage_mask"][:, 0], labels=inputs["labels"]
    ).logits
    torch.testing.assert_close(ours, plain, **TOL)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_causal_single_full_passage_matches_plain_lm(family):
    """n=1, M=1, a passage exactly L tokens long: the reader is the LM on [passage, prompt, target] with its
    default causal mask and positions; the no-passage input is the LM on the query alone, positions from L."""
    passage = [("Ann", "ann lives in paris")]
    length = len(make_reader(family).tokenizer("title: Ann context: ann lives in paris")["input_ids"])
    reader = make_reader(family, passage_max_tokens=length)
    for b in range(2):
        inputs = reader.tokenize(QUESTIONS[b : b + 1], [passage], TARGETS[b : b + 1])
        assert inputs["passage_mask"].all()
        ours = reader.answer_logits(reader.encode_passages(inputs), inputs, torch.zeros(1, 1))
        sequence = torch.cat([inputs["passage_ids"][:, 0], inputs["prompt_ids"], inputs["target_ids"]], dim=1)
        start = length + inputs["prompt_ids"].shape[1] - 1
        plain = reader.model(input_ids=sequence).logits[:, start : start + ours.shape[1]]
        torch.testing.assert_close(ours, plain, **TOL)

    # No passages, batched: left-padded prompts against HF's own 2D padding mask.
    inputs = reader.tokenize(QUESTIONS, [[], []], TARGETS)
    assert inputs["passage_ids"].shape[1] == 1
    ours = reader.answer_logits(reader.encode_passages(inputs), inputs, torch.zeros(2, 1))
    query = torch.cat([inputs["prompt_ids"], inputs["target_ids"]], dim=1)
    query_mask = torch.cat([inputs["prompt_mask"], inputs["target_mask"]], dim=1)
    positions = length + (query_mask.long().cumsum(-1) - 1).clamp_min(0)
    plain = reader.model(input_ids=query, attention_mask=query_mask.long(), position_ids=positions).logits
    P = inputs["prompt_ids"].shape[1]
    plain = plain[:, P - 1 : P - 1 + ours.shape[1]]
    target_mask = inputs["target_mask"]
    torch.testing.assert_close(ours[target_mask], plain[target_mask], **TOL)


def test_tokenize_rejects_ragged_candidate_lists():
    reader = make_reader("llama")
    with pytest.raises(ValueError, match="same number of passages"):
        reader.tokenize(QUESTIONS, [PASSAGES[0], PASSAGES[1][:2]], TARGETS)


def test_build_dispatch_and_tiny_defaults():
    assert isinstance(make_reader("fid_t5"), FiDT5Reader)
    for family in ("llama", "qwen2", "gpt2"):
        reader = make_reader(family)
        assert isinstance(reader, CausalLMReader)
        assert reader.model.config.model_type == family
    llama = make_reader("llama").model.config
    sizes = (llama.hidden_size, llama.num_hidden_layers, llama.num_attention_heads, llama.num_key_value_heads)
    assert sizes == (32, 2, 4, 2)
