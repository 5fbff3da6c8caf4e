"""Sequential selection (gr_train/selection.py) and conditional rerankers (reranker.conditional): step 1 is the base
reranker, greedy selection is hard top-k when the conditioning is inert, the sampled sequence follows the step
policies, the straight-through forward reads exactly the chosen passages, gradients reach every parameter through
every step, save / load / export keep the selection, and the recipe trains, saves and resumes exactly."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from test_reranker import CASES, KINDS, NO_DROPOUT, PASSAGES, QUESTIONS
from test_reranker import tokenizers as tokenizers  # noqa: F401  (the module fixture)
from test_train import tiny_cfg

from gr_train import batching, gumbel, objectives, selection, train
from gr_train.config import RerankerSection
from gr_train.reader import visible_log_mask
from gr_train.reranker import Reranker, build_reranker


def make(kind: str, tokenizers, conditional: bool = True, seed: int = 0) -> Reranker:
    _, style, model_config = CASES[kind]
    family = "t5" if kind == "rankt5" else "bert"
    cfg = RerankerSection(kind=kind, model_config={**NO_DROPOUT[family], **model_config}, max_tokens=16,
                          conditional=conditional, conditional_max_tokens=32)
    torch.manual_seed(seed)
    return build_reranker(cfg, tokenizers[style])


def scorer(reranker: Reranker, questions=QUESTIONS, passages=PASSAGES):
    return reranker.step_scorer(reranker.tokenize(questions, passages), questions, passages)


# -- the selection loop, on scripted scores -------------------------------------------------------------------------

def test_greedy_with_inert_scores_is_hard_topk_including_ties_and_padding():
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(0, 4, (64, 7), generator=gen).float()  # many ties
    valid = torch.rand(64, 7, generator=gen) > 0.2
    valid[:, 0] = True
    for k in (1, 2, 5):
        sel = selection.greedy(lambda chosen: w, valid, k)
        expected = gumbel.topk_indices(w, k, valid)
        for b in range(64):
            count = int(valid[b].sum())
            assert sel.indices[b, : min(k, count)].tolist() == expected[b, : min(k, count)].tolist()
            assert (sel.indices[b, min(k, count):] == -1).all()
        assert torch.equal(sel.mask, gumbel.hard_topk_mask(w, k, valid))


def test_sampling_with_inert_scores_is_the_gumbel_topk_sample_and_its_plackett_luce_probability():
    gen = torch.Generator().manual_seed(1)
    w, valid, k = torch.randn(5, 6, generator=gen), torch.ones(5, 6, dtype=torch.bool), 3
    noise = gumbel.sample_gumbel((k, 5, 6), generator=gen)
    # one noise row for every step: the sequential argmax is the top-k of w + G in order
    same = noise[:1].expand(k, 5, 6)
    sel = selection.sample(lambda chosen: w, valid, k, kappa=1.0, gumbel_noise=same)
    assert torch.equal(sel.indices, gumbel.topk_indices(w + noise[0], k))
    # log p(sequence) = sum_t log softmax over the remaining candidates (Plackett-Luce)
    for b in range(5):
        left, expected = list(range(6)), 0.0
        for i in sel.indices[b].tolist():
            expected += (w[b, i] - torch.logsumexp(w[b, left], 0)).item()
            left.remove(i)
        assert sel.log_prob[b].item() == pytest.approx(expected, abs=1e-5)


def test_sampled_sequences_follow_the_step_policies():
    """Frequencies of (i_1, i_2) over 20,000 draws match softmax(kappa * w_1)[i_1] * softmax(kappa * w_2 | i_1)[i_2]
    for a scorer whose second step depends on the first pick."""
    w1 = torch.tensor([[1.0, 0.0, -1.0]])
    table = {0: torch.tensor([[0.0, 2.0, 0.0]]), 1: torch.tensor([[0.0, 0.0, 1.5]]), 2: torch.tensor([[1.0, 0.0, 0.0]])}

    def step(chosen):
        return w1 if chosen.shape[1] == 0 else table[int(chosen[0, 0])]

    kappa, draws = 1.3, 20000
    gen = torch.Generator().manual_seed(2)
    counts = torch.zeros(3, 3)
    for _ in range(draws):
        sel = selection.sample(step, torch.ones(1, 3, dtype=torch.bool), 2, kappa=kappa, generator=gen)
        i, j = sel.indices[0].tolist()
        counts[i, j] += 1
    p1 = torch.softmax(kappa * w1[0], 0)
    for i in range(3):
        left = [j for j in range(3) if j != i]
        p2 = torch.softmax(kappa * table[i][0, left], 0)
        for pos, j in enumerate(left):
            expected = (p1[i] * p2[pos]).item()
            assert counts[i, j].item() / draws == pytest.approx(expected, abs=0.012)


def test_kl_to_reference_sums_the_step_kls_over_the_candidates_left():
    """kl_to_reference: 0 against the same scorer (and a zero gradient there); against another scorer, sum_t
    KL(softmax(kappa w_t) || softmax(kappa q_t)) over the valid candidates not yet picked, computed by hand, with a
    padded candidate never counted; the reference gets no gradient."""
    kappa = 1.5
    w1 = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.2, 0.1, 0.0, 9.0]], requires_grad=True)
    w2 = torch.tensor([[0.0, 2.0, 0.0, 1.0], [1.0, -1.0, 0.5, 9.0]], requires_grad=True)
    q1 = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, -3.0]], requires_grad=True)
    q2 = torch.tensor([[1.0, 0.0, 0.0, -1.0], [0.0, 0.0, 2.0, 0.0]], requires_grad=True)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])  # row 1's last candidate is padding
    seen = []

    def policy(chosen):
        return w1 if chosen.shape[1] == 0 else w2

    def reference(chosen):
        seen.append(chosen.clone())
        return q1 if chosen.shape[1] == 0 else q2

    sel = selection.sample(policy, valid, 2, kappa=kappa, generator=torch.Generator().manual_seed(0))
    kl = selection.kl_to_reference(sel, reference, valid, kappa)
    expected = []
    for b in range(2):
        left, total = [i for i in range(4) if valid[b, i]], 0.0
        for t, (w, q) in enumerate(((w1, q1), (w2, q2))):
            p, r = torch.softmax(kappa * w[b, left], 0), torch.softmax(kappa * q[b, left], 0)
            total += (p * (p.log() - r.log())).sum().item()
            left.remove(int(sel.indices[b, t]))
        expected.append(total)
    assert kl.tolist() == pytest.approx(expected, abs=1e-5) and min(expected) > 0
    assert torch.equal(seen[1], sel.indices[:, :1])  # the reference scored the drawn prefix
    kl.sum().backward()
    assert w1.grad.abs().sum() > 0 and q1.grad is None and q2.grad is None
    same = selection.kl_to_reference(sel, policy, valid, kappa)
    assert same.abs().max().item() < 1e-6
    w1.grad = None
    same.sum().backward()
    assert w1.grad.abs().max().item() < 1e-6  # KL(p || q) is flat at p = q


def test_straight_through_mask_is_exactly_the_chosen_passages_in_value():
    w = torch.randn(4, 6, requires_grad=True)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[0, 4:] = False
    sel = selection.sample(lambda chosen: w * (1 + chosen.shape[1]), valid, 2, kappa=2.0,
                           generator=torch.Generator().manual_seed(0))
    hard = torch.zeros(4, 6)
    for b in range(4):
        hard[b, sel.indices[b]] = 1.0
    assert torch.equal(sel.mask.detach(), hard)
    assert (sel.mask.detach()[~valid] == 0).all()
    (sel.mask * torch.randn(4, 6, generator=torch.Generator().manual_seed(1))).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_ranking_scores_order_is_the_greedy_selection_then_the_last_step():
    w1, w2 = torch.tensor([[0.1, 0.9, 0.5, 0.3]]), torch.tensor([[0.8, 0.0, 0.2, 0.7]])

    def step(chosen):
        return w1 if chosen.shape[1] == 0 else w2

    scores = selection.ranking_scores(step, torch.ones(1, 4, dtype=torch.bool), 2)
    # greedy: step 1 picks 1 (0.9), step 2 picks 0 (0.8, best of the rest under w2); then 3 (0.7), 2 (0.2)
    assert torch.sort(scores[0], descending=True).indices.tolist() == [1, 0, 3, 2]


def pairwise_scorer(base: torch.Tensor, pair: torch.Tensor):
    """A scripted conditional scorer: w_t[b, i] = base[b, i] + sum over the chosen j of pair[b, j, i] (-1 ignored)."""

    def step(chosen: torch.Tensor) -> torch.Tensor:
        w = base.clone()
        for b, row in enumerate(chosen.tolist()):
            for j in row:
                if j >= 0:
                    w[b] += pair[b, j]
        return w

    return step


def sequence_log_prob(step, valid: torch.Tensor, b: int, seq: tuple[int, ...], kappa: float) -> float:
    """sum_t log p(i_t | i_<t) of question b's sequence under softmax(kappa * w_t) over the candidates left."""
    total, left = 0.0, valid[b].clone()
    for t, i in enumerate(seq):
        chosen = torch.full((valid.shape[0], t), -1, dtype=torch.long)
        chosen[b] = torch.tensor(seq[:t], dtype=torch.long)
        w = step(chosen)[b]
        total += torch.log_softmax((kappa * w).masked_fill(~left, float("-inf")), -1)[i].item()
        left[i] = False
    return total


def test_beam_of_width_one_is_greedy_including_padding_and_short_rows():
    gen = torch.Generator().manual_seed(3)
    base, pair = torch.randn(5, 6, generator=gen), torch.randn(5, 6, 6, generator=gen)
    valid = torch.ones(5, 6, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 2:] = False  # 2 candidates for k=3: the last step picks nothing
    valid[3, 0] = False
    step = pairwise_scorer(base, pair)
    g, b = selection.greedy(step, valid, 3), selection.beam(step, valid, 3, width=1)
    assert torch.equal(b.indices, g.indices)
    assert b.indices[2].tolist()[2] == -1 and torch.equal(b.mask, g.mask)


def test_a_wide_beam_finds_the_most_probable_sequence_where_greedy_does_not():
    """Exhaustive search over every ordered sequence of k distinct valid candidates is the answer for a beam as wide
    as the number of sequences; on this case greedy's first pick (the highest base score) leads nowhere."""
    import itertools

    gen = torch.Generator().manual_seed(0)
    B, n, k, kappa = 4, 5, 3, 1.5
    base, pair = torch.randn(B, n, generator=gen), 2.0 * torch.randn(B, n, n, generator=gen)
    # question 0, scripted: greedy picks 0 (base 3.0), then the rest are alike; 1 then 2 is far more probable
    base[0] = torch.tensor([3.0, 2.9, 0.0, 0.0, 0.0])
    pair[0] = 0.0
    pair[0, 0, 1] = -2.9  # after 0, the rest are alike
    pair[0, 1, 2] = 8.0
    valid = torch.ones(B, n, dtype=torch.bool)
    valid[3, 2:] = False  # 2 candidates for k=3
    step = pairwise_scorer(base, pair)
    wide = selection.beam(step, valid, k, width=n * (n - 1) * (n - 2), kappa=kappa)
    for b in range(B):
        ok = [i for i in range(n) if valid[b, i]]
        seqs = list(itertools.permutations(ok, min(k, len(ok))))
        best = max(seqs, key=lambda seq: sequence_log_prob(step, valid, b, seq, kappa))
        assert tuple(i for i in wide.indices[b].tolist() if i >= 0) == best
        assert wide.log_prob[b].item() == pytest.approx(sequence_log_prob(step, valid, b, best, kappa), abs=1e-5)
    assert wide.indices[0, :2].tolist() == [1, 2]
    assert selection.greedy(step, valid, k).indices[0, 0].item() == 0
    assert wide.indices[3].tolist()[2] == -1
    assert wide.mask.sum(-1).tolist() == [3.0, 3.0, 3.0, 2.0]


# -- conditional rerankers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_step_one_of_a_conditional_reranker_is_its_base_reranker(kind, tokenizers):
    conditional, base = make(kind, tokenizers, True), make(kind, tokenizers, False)
    with torch.no_grad():
        w0 = scorer(conditional)(torch.empty(2, 0, dtype=torch.long))
        w_base = base(base.tokenize(QUESTIONS, PASSAGES))
        w_step2 = scorer(conditional)(torch.tensor([[0], [1]]))
    assert torch.equal(w0, w_base)
    # step 2 reads the chosen passage: the scores move (the conditioning is not inert)
    assert not torch.allclose(w_step2, w0)


@pytest.mark.parametrize("kind", KINDS)
def test_conditioned_step_scores_a_question_followed_by_the_chosen_passages(kind, tokenizers):
    """Step 2's scores equal the base reranker's on the question text followed by the chosen passage."""
    reranker = make(kind, tokenizers, True)
    chosen = torch.tensor([[1], [0]])
    texts = [f"{q} {' '.join(p for p in row[i] if p)}" for q, row, i in zip(QUESTIONS, PASSAGES, [1, 0])]
    with torch.no_grad():
        got = scorer(reranker)(chosen)
        tokens = reranker.conditioned_inputs.tokenize(texts, PASSAGES)
        expected = reranker(tokens)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_finite_gradient_through_the_conditioned_step_alone(kind, tokenizers):
    reranker = make(kind, tokenizers, True).train()
    sel = selection.sample(scorer(reranker), torch.ones(2, 3, dtype=torch.bool), 2, kappa=1.0,
                           generator=torch.Generator().manual_seed(0))
    # only step 2's log-probability: the gradient must come through the conditioned pass alone
    step2 = sel.log_prob - torch.log_softmax(sel.scores[0], -1).gather(1, sel.indices[:, :1]).squeeze(1)
    step2.sum().backward()
    trainable = [(n, p) for n, p in reranker.named_parameters() if p.requires_grad]
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sum(p.grad.abs().sum() for _, p in trainable if p.grad is not None) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_keep_the_conditional_selection(kind, tokenizers, tmp_path):
    reranker = make(kind, tokenizers, True)
    reranker.save(tmp_path / "r")
    loaded = Reranker.load(tmp_path / "r")
    assert loaded.cfg.conditional and loaded.cfg.conditional_max_tokens == 32
    chosen = torch.tensor([[2], [1]])
    with torch.no_grad():
        assert torch.allclose(scorer(loaded)(chosen), scorer(reranker)(chosen), atol=1e-5)
    assert loaded.select(QUESTIONS, PASSAGES, 2) == reranker.select(QUESTIONS, PASSAGES, 2)
    # a config that disagrees with the folder is refused, naming the key
    with pytest.raises(ValueError, match="reranker.conditional"):
        build_reranker(dataclasses.replace(loaded.cfg, conditional=False))


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_pointwise_reranker_starts_a_conditional_one_as_its_step_1(kind, tokenizers, tmp_path):
    """A pretrained pointwise folder (gr-train's own, with its settings file) loads with reranker.conditional=true:
    step 1 scores as the pointwise reranker did, later steps read the conditioned question; the saved conditional
    folder still refuses to load pointwise (test above)."""
    pointwise = make(kind, tokenizers, False)
    pointwise.save(tmp_path / "r")
    cfg = dataclasses.replace(Reranker.load(tmp_path / "r").cfg, conditional=True, conditional_max_tokens=32)
    conditional = build_reranker(cfg)
    assert conditional.cfg.conditional
    with torch.no_grad():
        w = pointwise(pointwise.tokenize(QUESTIONS, PASSAGES))
        step = scorer(conditional)
        assert torch.allclose(step(torch.zeros(2, 0, dtype=torch.long)), w, atol=1e-5)
        assert not torch.equal(step(torch.tensor([[2], [1]])), w)  # (a random tiny cross-encoder's w barely varies)


def test_select_of_a_pointwise_reranker_is_its_topk(tokenizers):
    reranker = make("cross_encoder", tokenizers, False)
    with torch.no_grad():
        w = reranker(reranker.tokenize(QUESTIONS, PASSAGES))
    assert reranker.select(QUESTIONS, PASSAGES, 2) == gumbel.topk_indices(w, 2).tolist()


# -- training through the reader ------------------------------------------------------------------------------------

def conditional_cfg(tmp_path, estimator: str, *overrides):
    return tiny_cfg(tmp_path, "reranker.conditional=true", f"gumbel.estimator={estimator}", "gumbel.samples=2",
                    *overrides)


def test_the_kl_penalty_reads_the_starts_step_policies_or_its_step_one_ranking(tmp_path):
    """gumbel.kl_reference: the logged KL to the start is sum_t KL(p_t || q_t) over the drawn sequences, q_t the
    start's step policy given the same prefix ("conditional"), or the start's step-1 scores over the candidates left
    ("pointwise"); the two differ where the start's later steps differ from its first (weights perturbed here)."""
    kls = {}
    for kl_reference in ("conditional", "pointwise"):
        cfg = conditional_cfg(tmp_path / kl_reference, "score_function", "gumbel.kl_coef=0.5",
                              f"gumbel.kl_reference={kl_reference}")
        recipe = train.setup(cfg, resume=False)
        recipe.reranker.eval()  # dropout off, as in the frozen start: the replay below draws the same sequences
        torch.manual_seed(0)
        with torch.no_grad():  # both moved from the tiny random init (whose scores barely depend on the input), the
            for p in (*recipe.reranker.parameters(), *recipe.reference.parameters()):  # same way in both runs
                p.add_(0.5 * torch.randn_like(p))
        batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
        noise = train.step_noise(cfg, 0, 4)
        out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, noise,
                                       reference=recipe.reference)
        questions, passages = batching.candidate_texts(batch)
        tau, kappa = gumbel.gumbel_tau_kappa(cfg, 0)
        replay = {}
        with torch.no_grad():
            step = recipe.reranker.step_scorer(batch.reranker_inputs, questions, passages)
            start = recipe.reference.step_scorer(batch.reranker_inputs, questions, passages)
            w0 = start(torch.empty(4, 0, dtype=torch.long))
            for name, reference in (("conditional", start), ("pointwise", lambda chosen: w0)):
                draws = [selection.sample(step, batch.valid, cfg.gumbel.k, kappa, tau, noise[s * 2 : (s + 1) * 2])
                         for s in range(2)]
                replay[name] = float(torch.stack([selection.kl_to_reference(d, reference, batch.valid, kappa).mean()
                                                  for d in draws]).mean())
        assert out.metrics["train/kl_to_start"] == pytest.approx(replay[kl_reference], rel=1e-5)
        kls[kl_reference] = replay
    assert kls["conditional"] == pytest.approx(kls["pointwise"], rel=1e-5)  # the same draws in both runs
    assert kls["conditional"]["conditional"] > 0 and kls["conditional"]["pointwise"] > 0
    gap = abs(kls["conditional"]["conditional"] - kls["conditional"]["pointwise"])
    assert gap > 0.01 * kls["conditional"]["pointwise"], kls


def test_score_function_loss_is_the_mean_answer_loss_of_exactly_the_sampled_passages(tmp_path):
    cfg = conditional_cfg(tmp_path, "score_function")
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    noise = train.step_noise(cfg, 0, 4)
    out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    # replay the two draws: the reader on exactly the chosen passages, each on its own
    questions, passages = batching.candidate_texts(batch)
    tau, kappa = gumbel.gumbel_tau_kappa(cfg, 0)
    losses = []
    with torch.no_grad():
        step = recipe.reranker.step_scorer(batch.reranker_inputs, questions, passages)
        for s in range(2):
            sel = selection.sample(step, batch.valid, cfg.gumbel.k, kappa, tau, noise[s * 2 : (s + 1) * 2])
            assert (sel.indices >= 0).all() and (sel.mask.sum(-1) == cfg.gumbel.k).all()
            for b in range(4):  # exactly those passages, encoded alone (no mask)
                rec = batch.records[b]
                chosen = [passages[b][i] for i in sel.indices[b].tolist()]
                inputs = recipe.reader.tokenize([questions[b]], [chosen], [rec.target_text])
                states = recipe.reader.encode_passages(inputs)
                losses.append(recipe.reader.answer_loss(states, inputs, visible_log_mask(
                    torch.ones(1, cfg.gumbel.k, dtype=torch.bool))).item())
    assert out.loss.item() == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    out.loss.backward()
    grads = [p.grad for p in recipe.reranker.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in recipe.reader.parameters())


def test_straight_through_forward_is_the_reader_on_exactly_the_chosen_passages(tmp_path):
    cfg = conditional_cfg(tmp_path, "straight_through", "gumbel.samples=1")
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    noise = train.step_noise(cfg, 0, 4)
    out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    questions, passages = batching.candidate_texts(batch)
    tau, kappa = gumbel.gumbel_tau_kappa(cfg, 0)
    with torch.no_grad():
        step = recipe.reranker.step_scorer(batch.reranker_inputs, questions, passages)
        sel = selection.sample(step, batch.valid, cfg.gumbel.k, kappa, tau, noise[:2])
        states = recipe.reader.encode_passages(batch.reader_inputs)
        dropped = recipe.reader.answer_loss(states, batch.reader_inputs, visible_log_mask(sel.mask > 0.5)).mean()
    assert out.loss.item() == pytest.approx(dropped.item(), abs=1e-4)  # log(1 + eps) and log(eps) vs 0 / NEG_BIAS
    out.loss.backward()
    for name, p in recipe.reranker.named_parameters():
        if p.requires_grad and "pooler" not in name:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_max_softmax_on_a_conditional_reranker_is_refused_naming_the_keys(tmp_path):
    from gr_train.config import ConfigError

    with pytest.raises(ConfigError, match="reranker.conditional.*gumbel.estimator"):
        tiny_cfg(tmp_path, "reranker.conditional=true", "gumbel.estimator=max_softmax")
    with pytest.raises(ConfigError, match="gumbel.samples >= 2"):
        tiny_cfg(tmp_path, "gumbel.estimator=score_function", "gumbel.samples=1")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("estimator", ["score_function", "straight_through", "score_function, kl_coef 0.5"])
def test_conditional_recipe_trains_evaluates_and_resumes_exactly(tmp_path, estimator):
    """6 steps with dev evaluation at 3 and 6; a run interrupted after its step-3 checkpoint and resumed gives the
    same losses and the same final weights (with the KL penalty: its reference, rebuilt on resume, is the same
    initial reranker)."""
    overrides = ("train.save_every_steps=3", "train.eval_every_steps=3")
    if estimator.endswith("kl_coef 0.5"):
        estimator, overrides = "score_function", (*overrides, "gumbel.kl_coef=0.5")
    reference = {}
    cfg = conditional_cfg(tmp_path / "a", estimator, *overrides)
    out = train.main(cfg, resume=False, on_step=lambda s, sc: reference.__setitem__(s, sc["train/loss"]))
    assert all(math.isfinite(v) for v in reference.values()) and sorted(reference) == list(range(6))
    assert Reranker.load(Path(out["final"]) / "reranker").cfg.conditional

    cfg = conditional_cfg(tmp_path / "b", estimator, *overrides)

    def crash(step, scalars):
        if step == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.main(cfg, resume=False, on_step=crash)
    resumed = {}
    out_b = train.main(cfg, resume=True, on_step=lambda s, sc: resumed.__setitem__(s, sc["train/loss"]))
    assert sorted(resumed) == [3, 4, 5]
    for s in resumed:
        assert resumed[s] == pytest.approx(reference[s], abs=1e-6)
    a = Reranker.load(Path(out["final"]) / "reranker").state_dict()
    b = Reranker.load(Path(out_b["final"]) / "reranker").state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # export: the folder keeps the conditional settings, scores and selects as the trained reranker; the card says
    # how to select
    from gr_train.export import export_run

    exported = export_run(tmp_path / "a" / "run", tmp_path / "export", "final", [])
    trained, loaded = Reranker.load(Path(out["final"]) / "reranker"), Reranker.load(exported)
    assert loaded.cfg.conditional
    rec = out["recipe"].train_records[:4]
    questions, passages = [r.question for r in rec], [[(c.title, c.text) for c in r.ctxs] for r in rec]
    with torch.no_grad():
        for chosen in (torch.empty(4, 0, dtype=torch.long), torch.tensor([[0], [3], [5], [1]])):
            got, expected = scorer(loaded, questions, passages)(chosen), scorer(trained, questions, passages)(chosen)
            assert (got - expected).abs().max() <= 1e-5
    assert loaded.select(questions, passages, 2) == trained.select(questions, passages, 2)
    card = (exported / "README.md").read_text()
    assert "It selects passages one at a time" in card and ".select(questions, passages, k)" in card


def test_k_curriculum_runs_its_steps_at_their_k_then_gumbel_k_and_resumes_exactly(tmp_path):
    """gumbel.k_curriculum=[[2, 4]] with gumbel.k=2: steps 0-1 are exactly those of a gumbel.k=4 run (same seed,
    questions and noise), steps 2-3 run at k=2; evaluation keeps gumbel.k; a run interrupted after its step-2
    checkpoint resumes with the same losses (the curriculum is a function of the step)."""

    def run(path, *overrides, on_step=None, resume=False):
        cfg = conditional_cfg(path, "score_function", "train.max_steps=4", "train.save_every_steps=2",
                              "train.eval_every_steps=0", *overrides)
        return cfg, train.main(cfg, resume=resume, on_step=on_step)

    curriculum = ("gumbel.k=2", "gumbel.k_curriculum=[[2, 4]]")
    losses: dict[str, dict[int, float]] = {"curriculum": {}, "k4": {}, "k2": {}, "resumed": {}}
    ks: dict[int, float] = {}

    def record(name):
        return lambda s, sc: losses[name].__setitem__(s, sc["train/loss"])

    def record_k(s, sc):
        ks[s] = sc["train/k"]
        losses["curriculum"][s] = sc["train/loss"]

    _, out_a = run(tmp_path / "a", *curriculum, on_step=record_k)
    run(tmp_path / "b", "gumbel.k=4", on_step=record("k4"))
    run(tmp_path / "c", "gumbel.k=2", on_step=record("k2"))
    assert ks == {0: 4.0, 1: 4.0, 2: 2.0, 3: 2.0}
    for s in (0, 1):
        assert losses["curriculum"][s] == pytest.approx(losses["k4"][s], abs=1e-6)
    assert losses["curriculum"][0] != pytest.approx(losses["k2"][0], abs=1e-4)  # k changes what the reader reads

    def crash(step, scalars):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "d", *curriculum, on_step=crash)
    cfg, out_d = run(tmp_path / "d", *curriculum, on_step=record("resumed"), resume=True)
    assert sorted(losses["resumed"]) == [2, 3]
    for s in (2, 3):
        assert losses["resumed"][s] == pytest.approx(losses["curriculum"][s], abs=1e-6)
    a = Reranker.load(Path(out_a["final"]) / "reranker").state_dict()
    d = Reranker.load(Path(out_d["final"]) / "reranker").state_dict()
    for key in a:
        assert torch.allclose(a[key], d[key], atol=1e-6), key
    assert [train.config_at_step(cfg, s).gumbel.k for s in range(4)] == [4, 4, 2, 2] and cfg.gumbel.k == 2


def test_the_score_spread_of_a_conditional_reranker_is_that_of_its_step_one_scores(tmp_path):
    """A conditional reranker's evaluation scores (selection.ranking_scores) only order the candidates: the selected
    ones sit above the rest by a margin, so their spread says nothing about whether the reranker separates them.
    evaluate reports the spread of the step-1 scores w = R(q, d_i), the base reranker's (Reranker.score)."""
    from gr_train import evaluate

    cfg = conditional_cfg(tmp_path, "score_function")
    recipe = train.setup(cfg, resume=False)
    records, n = recipe.dev_records, cfg.data.n_candidates
    got = evaluate.evaluate(cfg, recipe.reranker, None, records)["scores"]
    recipe.reranker.eval()  # evaluation's mode: no dropout
    with torch.no_grad():
        w = [recipe.reranker.score([r.question], [[(c.title, c.text) for c in r.ctxs[:n]]])[0] for r in records]
    expected = evaluate.score_spread(w, cfg.eval.separation_min_std)
    assert got["w_std_median"] == pytest.approx(expected["w_std_median"], rel=1e-3, abs=1e-7)
    assert got["w_std_mean"] == pytest.approx(expected["w_std_mean"], rel=1e-3, abs=1e-7)
    ranked = evaluate.score_records(recipe.reranker, records, n, depth=cfg.selection_depth())
    assert evaluate.score_spread(ranked, 0.0)["w_std_median"] > 10 * expected["w_std_median"]


# -- the baselines on a conditional reranker -------------------------------------------------------------------------

def test_emdr_on_a_conditional_reranker_at_k1_is_pointwise_emdr(tmp_path):
    base = tiny_cfg(tmp_path, "objective.name=emdr", "gumbel.k=1")
    cond = tiny_cfg(tmp_path, "objective.name=emdr", "gumbel.k=1", "reranker.conditional=true")
    recipe = train.setup(base, resume=False)
    recipe.reranker.eval()  # no dropout: the two calls must see the same scores
    batch = batching.collate(recipe.train_records[:4], base.data.n_candidates, recipe.reranker, recipe.reader)
    plain = objectives.emdr(batch, recipe.reranker, recipe.reader, base, 0, None).loss
    recipe.reranker.cfg.conditional = True  # the same weights, conditional
    assert objectives.emdr(batch, recipe.reranker, recipe.reader, cond, 0, None).loss.item() == pytest.approx(
        plain.item(), abs=1e-6)


@pytest.mark.parametrize("objective", ["emdr", "loop"])
def test_conditional_baselines_add_a_step_two_target_given_the_greedy_prefix(tmp_path, objective):
    """At k=2 the loss is the mean of step 1's pointwise loss and step 2's loss over the remaining candidates given
    the reranker's greedy first pick; for EMDR step 2's target is the reader's loss with that pick and i visible."""
    cfg = tiny_cfg(tmp_path, f"objective.name={objective}", "reranker.conditional=true", "gumbel.k=2",
                   "objective.cache_reader_targets=false")
    recipe = train.setup(cfg, resume=False)
    recipe.reranker.eval()  # no dropout: the objective and the replay must see the same scores
    batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
    out = getattr(objectives, objective)(batch, recipe.reranker, recipe.reader, cfg, 0, None)
    kind = "single" if objective == "emdr" else "loop"
    value, _ = objectives.reader_quantity(kind, batch, recipe.reader, cfg)
    fn = {"emdr": lambda lp, ce, v: -torch.logsumexp((lp - ce).masked_fill(~v, float("-inf")), -1),
          "loop": lambda lp, ce, v: objectives.distill_loss(lp, ce, v, cfg.objective.theta)}[objective]
    with torch.no_grad():
        questions, passages = batching.candidate_texts(batch)
        step = recipe.reranker.step_scorer(batch.reranker_inputs, questions, passages)
        w1 = step(torch.empty(4, 0, dtype=torch.long))
        first = w1.masked_fill(~batch.valid, float("-inf")).argmax(-1)
        left = batch.valid.clone()
        left[torch.arange(4), first] = False
        w2 = step(first[:, None])
        target2 = value
        if objective == "emdr":
            states = recipe.reader.encode_passages(batch.reader_inputs)
            target2 = torch.full_like(value, float("nan"))
            for i in range(value.shape[1]):
                visible = torch.zeros_like(batch.valid)
                visible[torch.arange(4), first] = True
                visible[:, i] = True
                target2[:, i] = recipe.reader.answer_loss(states, batch.reader_inputs, visible_log_mask(visible))
        expected = (fn(objectives.retriever_log_probs(w1, batch.valid), value, batch.valid)
                    + fn(objectives.retriever_log_probs(w2, left), target2, left)) / 2
    assert out.loss.item() == pytest.approx(expected.mean().item(), abs=1e-5)
    out.loss.backward()
    grads = [p.grad for p in recipe.reranker.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_a_prefix_is_scored_once_per_scorer_and_shares_its_scores(kind, tokenizers, monkeypatch):
    """Samples that drew the same prefix (gumbel.samples) reuse its scores: only new (question, prefix) rows are
    encoded, and the scores equal a fresh scorer's."""
    reranker = make(kind, tokenizers, True)
    encoded = []
    if kind == "bi_encoder":
        real = reranker.conditioned_inputs._encode
        monkeypatch.setattr(reranker.conditioned_inputs, "_encode", lambda texts: encoded.append(len(texts)) or
                            real(texts))
    else:
        real = reranker.conditioned_inputs.tokenize
        monkeypatch.setattr(reranker.conditioned_inputs, "tokenize", lambda qs, ps: encoded.append(len(qs)) or
                            real(qs, ps))
    with torch.no_grad():
        step = scorer(reranker)
        first = step(torch.tensor([[0], [1]]))
        again = step(torch.tensor([[0], [2]]))  # row 0's prefix seen, row 1's new
        fresh = scorer(reranker)(torch.tensor([[0], [2]]))
        seen = step(torch.tensor([[0], [2]]))  # every prefix seen: one row is still encoded (ZeRO-3 ranks in step)
    # the first scorer: 2 rows, then only the new one, then 1 row though nothing is new; the fresh scorer: 2
    assert encoded == [2, 1, 2, 1]
    assert torch.equal(again[0], first[0]) and torch.allclose(again, fresh, atol=1e-6)
    assert torch.equal(seen, again)
