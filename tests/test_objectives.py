"""Objectives (objectives.py): the Atlas baselines' reader targets are exact, their losses have the textbook
gradients, every objective trains every reranker parameter and no reader parameter, and the target cache is
used and keyed correctly."""

import math

import pytest
import torch

import typing

from gr_train import batching, data, models, objectives, reader_cache, train
from gr_train.config import ObjectiveName, ObjectiveSection
from gr_train.data import Passage, Record
from gr_train.reader import visible_log_mask
from test_reader import FAMILIES, PASSAGES, QUESTIONS, TARGETS, make_reader
from test_train import tiny_cfg

RERANKER_OBJECTIVES = ["gumbel", "emdr", "pdist", "loop", "adist", "supervised"]


def test_registry_rows_match_the_config_names():
    assert list(objectives.OBJECTIVES) == list(typing.get_args(ObjectiveName))
    assert set(RERANKER_OBJECTIVES) == {n for n, row in objectives.OBJECTIVES.items() if row.trains == "reranker"}
    for name, row in objectives.OBJECTIVES.items():
        assert row.description and "\n" not in row.description, name  # one line for the model card
        assert row.compute.__doc__ and row.compute.__name__ != "objective", name  # a named, documented function
        assert set(row.settings) <= set(typing.get_type_hints(ObjectiveSection)), name
    # the four baselines are four functions, each with its own formula
    docs = {objectives.OBJECTIVES[n].compute.__doc__ for n in ("emdr", "pdist", "loop", "adist")}
    assert len(docs) == 4


def test_shift_invariance_and_noise_come_from_the_rows(tmp_path):
    cfg = tiny_cfg(tmp_path)
    rows = objectives.OBJECTIVES
    assert [n for n, r in rows.items() if r.needs_noise] == ["gumbel"]
    assert {n for n, r in rows.items() if r.is_shift_invariant(cfg)} == {"gumbel", "emdr", "pdist", "loop", "adist",
                                                                         "supervised"}
    cfg.objective.supervised_loss = "bce"
    assert not rows["supervised"].is_shift_invariant(cfg) and not rows["reader"].is_shift_invariant(cfg)
    cfg.objective.name = "pdist"
    assert train.step_noise(cfg, 0, 4) is None  # no noise drawn for an objective that does not take it
    cfg.objective.name = "gumbel"
    assert train.step_noise(cfg, 0, 4).shape == (cfg.gumbel.k, 4, cfg.data.n_candidates)


@pytest.fixture(autouse=True)
def _fresh_cache():
    reader_cache.clear()
    yield
    reader_cache.clear()


@pytest.mark.parametrize("name", RERANKER_OBJECTIVES)
def test_every_objective_trains_every_reranker_parameter_and_no_reader_parameter(tmp_path, name):
    cfg = tiny_cfg(tmp_path, f"objective.name={name}")
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:8], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    noise = train.step_noise(cfg, 0, 8)
    out = objectives.OBJECTIVES[name].compute(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    out.loss.backward()
    trainable = [(n, p) for n, p in recipe.reranker.named_parameters() if p.requires_grad]
    assert trainable
    for pname, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"
    assert all(not p.requires_grad and p.grad is None for p in recipe.reader.parameters())
    assert math.isfinite(out.metrics["train/w_std"])


def test_shift_parameters_are_frozen_only_for_softmax_objectives(tmp_path):
    for name, loss, frozen in [("emdr", "listwise", True), ("supervised", "listwise", True),
                               ("supervised", "bce", False)]:
        cfg = tiny_cfg(tmp_path, f"objective.name={name}", f"objective.supervised_loss={loss}")
        recipe = train.setup(cfg, resume=False)
        shift = recipe.reranker.shift_parameters()
        assert shift and all(p.requires_grad != frozen for p in shift), (name, loss)


# -- the reader's per-passage quantities ---------------------------------------------------------------------------

def _single(reader, q: int, i: int) -> float:
    """The answer loss with passage i physically the only passage."""
    inputs = reader.tokenize([QUESTIONS[q]], [[PASSAGES[q][i]]], [TARGETS[q]])
    return reader.answer_loss(reader.encode_passages(inputs), inputs, torch.zeros(1, 1)).item()


def _without(reader, q: int, i: int) -> float:
    """The answer loss with passage i physically removed."""
    kept = [p for j, p in enumerate(PASSAGES[q]) if j != i]
    inputs = reader.tokenize([QUESTIONS[q]], [kept], [TARGETS[q]])
    return reader.answer_loss(reader.encode_passages(inputs), inputs, torch.zeros(1, len(kept))).item()


@pytest.mark.parametrize("family", ["fid_t5", "llama"])
def test_passage_losses_equal_physically_selecting_or_dropping_passages(family):
    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    valid = torch.ones(2, 3, dtype=torch.bool)
    alone = objectives.passage_losses(reader, states, inputs, valid, leave_out=False)
    left_out = objectives.passage_losses(reader, states, inputs, valid, leave_out=True)
    for q in range(2):
        for i in range(3):
            assert alone[q, i].item() == pytest.approx(_single(reader, q, i), abs=1e-4)
            assert left_out[q, i].item() == pytest.approx(_without(reader, q, i), abs=1e-4)
    assert (alone[0] - alone[0].mean()).abs().max() > 1e-3  # the passages matter: the equalities could fail


def test_passage_losses_ignore_padded_candidates():
    reader = make_reader("llama")
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    left_out = objectives.passage_losses(reader, states, inputs, valid, leave_out=True)
    assert torch.isnan(left_out[0, 2]) and not torch.isnan(left_out[1]).any()
    # question 0 without passage 0 sees passage 1 only: the padded passage 2 stays hidden
    assert left_out[0, 0].item() == pytest.approx(_single(reader, 0, 1), abs=1e-4)


@pytest.mark.parametrize("family", ["fid_t5", "llama", "demo"])
def test_passage_attention_is_a_per_passage_mass_that_follows_the_passages(family, tmp_path):
    if family == "demo":
        cfg = tiny_cfg(tmp_path)
        reader = models.build_models(cfg)[0]
        recs = [r for r in data.load_split(cfg.data.train_path, 10, "train") if len(r.ctxs) >= 3][:2]
        questions = [r.question for r in recs]
        passages = [[(c.title, c.text) for c in r.ctxs[:3]] for r in recs]
        targets = [r.target_text for r in recs]
    else:
        reader = make_reader(family)
        questions, passages, targets = QUESTIONS, PASSAGES, TARGETS
    valid = torch.tensor([[True, True, False], [True, True, True]])
    inputs = reader.tokenize(questions, passages, targets)
    mass = reader.passage_attention(reader.encode_passages(inputs), inputs, valid)
    assert mass.shape == (2, 3) and (mass >= 0).all()
    assert mass[0, 2].item() == pytest.approx(0.0, abs=1e-6)  # a hidden passage gets no attention
    total = mass.sum(-1)
    if family == "llama":  # the answer also attends to the question tokens
        assert (total < 1).all() and (total > 0).all()
    else:  # FiD cross-attention sees passages only
        assert torch.allclose(total, torch.ones(2), atol=1e-5)
    # Reversing the candidates reverses the masses (same passages, same attention).
    rev = reader.tokenize(questions, [p[::-1] for p in passages], targets)
    mass_rev = reader.passage_attention(reader.encode_passages(rev), rev, torch.ones(2, 3, dtype=torch.bool))
    full = reader.passage_attention(reader.encode_passages(inputs), inputs, torch.ones(2, 3, dtype=torch.bool))
    assert torch.allclose(mass_rev, full.flip(-1), atol=1e-5)
    assert (full[1] - full[1].mean()).abs().max() > 1e-4  # not uniform: the reversal check could fail


# -- losses -------------------------------------------------------------------------------------------------------

def test_distillation_gradient_is_p_r_minus_target():
    w = torch.randn(2, 4, requires_grad=True)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    target_logits = torch.randn(2, 4)
    loss = objectives.distill_loss(objectives.retriever_log_probs(w, valid), target_logits, valid, theta=0.5)
    loss.sum().backward()
    p_r = torch.softmax(w.detach().masked_fill(~valid, float("-inf")), -1)
    target = torch.softmax((target_logits / 0.5).masked_fill(~valid, float("-inf")), -1)
    assert torch.allclose(w.grad, p_r - target, atol=1e-6)
    # zero when the retriever already matches the target
    same = objectives.distill_loss(torch.log(target.clamp_min(1e-30)), target_logits, valid, theta=0.5)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)


def test_emdr_gradient_is_prior_minus_posterior(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "objective.name=emdr")
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    B, n = batch.valid.shape
    w = torch.randn(B, n, requires_grad=True)
    ce = torch.rand(B, n) * 3
    monkeypatch.setattr(objectives, "reader_quantity", lambda *a: (ce.masked_fill(~batch.valid, float("nan")), 0.0))
    out = objectives.emdr(batch, lambda inputs: w, recipe.reader, cfg, 0, None)
    out.loss.backward()
    log_prior = torch.log_softmax(w.detach(), -1)
    posterior = torch.softmax(log_prior - ce, -1)
    assert torch.allclose(w.grad * B, log_prior.exp() - posterior, atol=1e-6)


def test_supervised_listwise_and_bce():
    batch = batching.Batch([], torch.tensor([[True, True, True], [True, True, True]]),
                             torch.tensor([[True, False, False], [False, False, False]]), None, None)

    class Cfg:
        class objective:
            supervised_loss = "listwise"

    w = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    out = objectives.supervised(batch, lambda inputs: w, None, Cfg, 0, None)
    # only question 0 has a gold passage: -log softmax(w)[0]
    assert out.loss.item() == pytest.approx(-torch.log_softmax(w[0].detach(), -1)[0].item(), abs=1e-6)
    assert out.metrics["train/no_gold_fraction"] == 0.5
    out.loss.backward()
    assert w.grad[1].abs().sum() == 0
    Cfg.objective.supervised_loss = "bce"
    w2 = w.detach().clone().requires_grad_(True)
    out = objectives.supervised(batch, lambda inputs: w2, None, Cfg, 0, None)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(w2[0].detach(), torch.tensor([1.0, 0, 0]))
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)


# -- the target cache ---------------------------------------------------------------------------------------------

def test_reader_targets_are_cached_per_question_and_reader(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "objective.name=pdist")
    recipe = train.setup(cfg, resume=False)
    calls = []
    real = recipe.reader.encode_passages
    monkeypatch.setattr(recipe.reader, "encode_passages", lambda inputs: calls.append(1) or real(inputs))
    recs = recipe.train_records[:6]
    first = batching.collate(recs[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    value, _ = objectives.reader_quantity("single", first, recipe.reader, cfg)
    assert len(calls) == 1
    # another batch of the same questions in another order and padding: no reader call, same values
    again = batching.collate(recs[3::-1], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    cached, _ = objectives.reader_quantity("single", again, recipe.reader, cfg)
    assert len(calls) == 1
    assert torch.equal(torch.nan_to_num(cached, 99.0), torch.nan_to_num(value.flip(0), 99.0))
    # emdr shares pdist's single-passage losses; loop needs its own; a new question needs the reader
    objectives.emdr(first, recipe.reranker, recipe.reader, cfg, 0, None)
    assert len(calls) == 1
    objectives.reader_quantity("loop", first, recipe.reader, cfg)
    assert len(calls) == 2
    objectives.reader_quantity("single", batching.collate(recs[2:6], cfg.data.n_candidates, recipe.reranker,
                                                           recipe.reader), recipe.reader, cfg)
    assert len(calls) == 3
    # a different reader (here: random weights from another seed) misses the cache
    cfg.run.seed += 1
    objectives.reader_quantity("single", first, recipe.reader, cfg)
    assert len(calls) == 4
    # cache off: the reader runs every time, with the same values
    cfg.run.seed -= 1
    cfg.objective.cache_reader_targets = False
    fresh, _ = objectives.reader_quantity("single", first, recipe.reader, cfg)
    assert len(calls) == 5 and torch.allclose(torch.nan_to_num(fresh), torch.nan_to_num(value), atol=1e-6)


def test_a_record_passage_edit_misses_the_cache(tmp_path):
    cfg = tiny_cfg(tmp_path, "objective.name=pdist")
    recipe = train.setup(cfg, resume=False)
    rec = recipe.train_records[0]
    edited = Record(rec.id, rec.question, rec.answers,
                    [Passage(c.title, c.text + (" x" if i == 0 else ""), c.is_gold) for i, c in enumerate(rec.ctxs)],
                    rec.target, rec.intermediate)
    a, _ = objectives.reader_quantity("single", batching.collate([rec], 10, None, recipe.reader), recipe.reader, cfg)
    b, _ = objectives.reader_quantity("single", batching.collate([edited], 10, None, recipe.reader), recipe.reader,
                                      cfg)
    assert len(reader_cache._TARGETS) == 2 and a.shape == b.shape


@pytest.mark.parametrize("name", ["emdr", "supervised"])
def test_baseline_recipe_runs_logs_and_saves(tmp_path, name):
    cfg = tiny_cfg(tmp_path, f"objective.name={name}", "train.max_steps=3")
    out = train.main(cfg, resume=False)
    assert out["final"] and math.isfinite(out["last"]["train/loss"])
    assert "train/p_on_gold" in out["last"]


@pytest.mark.parametrize("family", ["fid_t5", "llama"])
def test_reader_answers_from_cached_states_equal_reading_the_selected_passages(family, monkeypatch):
    """Evaluation with cache_passage_states reads a hard-masked cached encoding instead of re-encoding the
    selected passages: the answers and the soft-vs-hard losses must not change."""
    from gr_train.config import RunConfig
    from gr_train import reader as reader_module
    from gr_train.evaluate import reader_answers, soft_hard_gap

    real_greedy = reader_module._greedy
    reader = make_reader(family)
    # The random tiny readers answer with pads only: compare the first decoding step's logits instead.
    first_logits = []
    monkeypatch.setattr(reader_module, "_greedy",
                        lambda logits, step, eos, n: first_logits.append(logits) or real_greedy(logits, step, eos, n))
    records = [Record(f"q{i}", QUESTIONS[i], [TARGETS[i]], [Passage(t, x, j == 0) for j, (t, x) in
                                                           enumerate(PASSAGES[i])]) for i in range(2)]
    cfg = RunConfig()
    cfg.data.n_candidates = 3
    selections = [lambda b, r: [0], lambda b, r: [2, 1] if b == 0 else [1], lambda b, r: [0, 1, 2]]
    scores = [torch.tensor([0.3, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.5])]
    plain = [reader_answers(reader, records, sel, cfg=cfg) for sel in selections]
    plain_logits, first_logits[:] = list(first_logits), []
    gap = soft_hard_gap(scores, reader, records, cfg)
    cfg.objective.cache_passage_states = True
    assert [reader_answers(reader, records, sel, cfg=cfg) for sel in selections] == plain
    assert len(reader_cache._STATES) == 2  # the cached path was taken
    for a, b in zip(first_logits, plain_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert (plain_logits[0] - plain_logits[2]).abs().max() > 1e-3  # the selection matters: the check could fail
    cached_gap = soft_hard_gap(scores, reader, records, cfg)
    assert cached_gap == pytest.approx(gap, abs=1e-5)


# -- the straight-through estimator through real readers ------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_straight_through_reads_only_the_sampled_passages_and_excluded_ones_get_a_gradient(family):
    """Forward: the reader's loss under the straight-through mask equals reading only the k sampled passages
    (physically, 1e-5). Backward: an excluded passage (M_i = 0) still gets a finite, non-zero d loss / d M_i and
    its score a finite, non-zero gradient (log(M + eps), not a clamp)."""
    from gr_train import gumbel

    reader = make_reader(family)
    inputs = reader.tokenize(QUESTIONS, PASSAGES, TARGETS)
    states = reader.encode_passages(inputs)
    w = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.5]], requires_grad=True)
    noise = gumbel.sample_gumbel((2, 3), torch.Generator().manual_seed(0))
    M = gumbel.straight_through_mask(w, 2, 0.5, 1.0, gumbel_noise=noise)
    M.retain_grad()
    loss = reader.answer_loss(states, inputs, gumbel.log_mask(M, 1e-9, smooth=True))
    for q in range(2):
        kept = [PASSAGES[q][i] for i in range(3) if M[q, i] == 1]
        assert len(kept) == 2
        alone = reader.tokenize([QUESTIONS[q]], [kept], [TARGETS[q]])
        expected = reader.answer_loss(reader.encode_passages(alone), alone, torch.zeros(1, 2)).item()
        assert loss[q].item() == pytest.approx(expected, abs=1e-5)
    loss.sum().backward()
    excluded = M.detach() == 0
    assert torch.isfinite(M.grad).all() and (M.grad[excluded].abs() > 1e-6).all()
    assert torch.isfinite(w.grad).all() and (w.grad[excluded].abs() > 1e-8).all()


@pytest.mark.parametrize("estimator", ["max_softmax", "subset", "straight_through"])
def test_gumbel_objective_with_each_estimator_and_several_samples(tmp_path, estimator):
    """Every estimator trains every reranker parameter; the subset estimators keep exactly k passages of mass
    (train/mask_sum = k); with gumbel.samples=2 the loss is the mean over two masks from their own noise rows."""
    cfg = tiny_cfg(tmp_path, f"gumbel.estimator={estimator}", "gumbel.k=3", "gumbel.samples=2", "gumbel.kappa=2.0")
    recipe = train.setup(cfg, resume=False)
    recipe.reranker.eval()  # no dropout: the loss is recomputed below
    batch = batching.collate(recipe.train_records[:8], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    noise = train.step_noise(cfg, 0, 8)
    assert noise.shape == (2 * 3, 8, cfg.data.n_candidates)
    out = objectives.OBJECTIVES["gumbel"].compute(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    out.loss.backward()
    for pname, p in recipe.reranker.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    if estimator != "max_softmax":
        assert out.metrics["train/mask_sum"] == pytest.approx(3.0, abs=1e-4)
    # the two samples' mean, recomputed by hand from the two noise slices
    from gr_train import gumbel

    with torch.no_grad():
        w = recipe.reranker(batch.reranker_inputs)
        states = recipe.reader.encode_passages(batch.reader_inputs)
        tau, kappa = gumbel.gumbel_tau_kappa(cfg, 0)
        losses = []
        for s in range(2):
            M = gumbel.training_mask(estimator, w, 3, tau, kappa, True, batch.valid, noise[3 * s : 3 * s + 3])
            log_M = gumbel.log_mask(M, cfg.gumbel.eps, batch.valid, estimator == "straight_through")
            losses.append(recipe.reader.answer_loss(states, batch.reader_inputs, log_M).mean())
    assert out.loss.item() == pytest.approx(((losses[0] + losses[1]) / 2).item(), abs=1e-5)
    assert abs(losses[0].item() - losses[1].item()) > 1e-4  # the two masks differ: the mean could be wrong
