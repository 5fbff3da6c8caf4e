"""Training objectives: one registry row each (OBJECTIVES), one loss signature:
`objective.compute(batch, reranker, reader, cfg, step, noise) -> Output`.

`noise` is this micro-batch's slice [samples * k, B, n] of the step's Gumbel noise (see train.step_noise) for rows
with needs_noise, else None. The row says what the recipe, config validation and the model card need to know; adding
an objective is its loss function plus its row (and its name in config.ObjectiveName, checked by a test).

- `gumbel`: G-Rerank, the reranker trained through the frozen reader's answer loss with the relaxed top-k mask
  in the reader's attention (`gumbel_rerank`).
- The Atlas baselines (Izacard et al. 2023, Sec. 2.2) `emdr`, `pdist`, `loop`, `adist`, each from the same frozen
  reader through `_distillation`: p_R = softmax(w) over a question's valid candidates, and the reader's quantities
  are constants (no gradient into the reader). log p_LM is the reader's token-mean log-likelihood
  (length-normalised, the quantity G-Rerank's loss uses). Per-passage likelihoods reuse one passage encoding: n
  answer passes, not n full reader passes (docs/design.md#cost-structure). They depend only on the question and
  its candidates, so they are computed once per question and cached (objective.cache_reader_targets;
  reader_cache.py) across steps, epochs and runs in one process; so can the passage states
  (objective.cache_passage_states, opt-in: large).
- `supervised`: the labelled upper-bound reference on is_gold: listwise -log sum_{gold} p_R, or per-passage BCE.
- `reader`: pre-trains (the demo reader) or fine-tunes (HF readers: reader_tuning.py) a reader with every passage
  visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from gr_train import gumbel, reader_cache, selection
from gr_train.batching import Batch, candidate_texts, passage_states
from gr_train.reader import visible_log_mask
from gr_train.reader_tuning import answer_loss_all_visible, passage_dropout


@dataclass
class Output:
    loss: torch.Tensor  # scalar, mean over the micro-batch's questions
    metrics: dict[str, float] = field(default_factory=dict)  # detached scalars for TensorBoard (train/...)
    timings: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def score_std(w: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over questions of the std of their valid candidates' scores. w, valid: [B, n]."""
    wv = w.float().masked_fill(~valid, float("nan"))
    return torch.nanmean((wv - torch.nanmean(wv, -1, keepdim=True)).pow(2), -1).sqrt().mean().item()


def gumbel_rerank(batch: Batch, reranker, reader, cfg, step: int, noise: torch.Tensor | None,
                  reference=None) -> Output:
    """G-Rerank: w = R(q, d); M = the gumbel.estimator's top-k mask of w; loss = reader answer CE with log M in its
    attention (mean over gumbel.samples masks, each from its own noise).

    Passage states are computed under no_grad (they do not depend on M); only the answer pass and the
    reranker carry autograd. A conditional reranker (reranker.conditional) or the score-function estimator chooses
    the k passages one step at a time (sequential_rerank); `reference`, the reranker as training started, is the
    KL penalty's (gumbel.kl_coef; train.setup builds it).
    """
    if cfg.reranker.conditional or cfg.gumbel.estimator in gumbel.SEQUENTIAL:
        return sequential_rerank(batch, reranker, reader, cfg, step, noise, reference)
    t0 = time.perf_counter()
    states = passage_states(batch, reader, cfg)
    t1 = time.perf_counter()
    w = reranker(batch.reranker_inputs)  # [B, n]
    tau, kappa = gumbel.gumbel_tau_kappa(cfg, step)
    g, k, samples = cfg.gumbel, cfg.gumbel.k, cfg.gumbel.sample_count()
    w_in = gumbel.spread_normalized(w, batch.valid) if g.kappa_relative else w
    masks = [gumbel.training_mask(g.estimator, w_in, k, tau, kappa, g.noise, batch.valid,
                                  None if noise is None else noise[s * k : (s + 1) * k]) for s in range(samples)]
    t2 = time.perf_counter()
    smooth = g.estimator in gumbel.SMOOTH_LOG
    loss = sum(reader.answer_loss(states, batch.reader_inputs, gumbel.log_mask(M, g.eps, batch.valid, smooth)).mean()
               for M in masks) / samples
    t3 = time.perf_counter()
    M = masks[0]
    with torch.no_grad():
        metrics = {
            "train/tau": tau,
            "train/kappa": kappa,
            "train/mask_entropy": gumbel.mask_entropy(M, batch.valid).item(),
            "train/mask_sum": M.sum(-1).mean().item(),
            "train/w_std": score_std(w, batch.valid),  # per-question score spread; ~0 = scores did not separate
            "train/mask_on_gold": (M * batch.gold).sum(-1).mean().item(),
        }
    return Output(loss, metrics, {"time/passage_encoding": t1 - t0, "time/reranker": t2 - t1, "time/answer_pass": t3 - t2})


def sequential_rerank(batch: Batch, reranker, reader, cfg, step: int, noise: torch.Tensor | None,
                      reference=None) -> Output:
    """G-Rerank with the k passages drawn one step at a time (selection.sample): step t draws i_t from
    softmax(kappa * w_t) over the remaining candidates, w_t the reranker's scores given the passages chosen before
    (reranker.step_scorer; the same w at every step for a pointwise reranker: a Gumbel top-k sample). The reader
    reads exactly the k drawn passages, gumbel.samples draws per question, each from its own noise.

    - score_function: the reader's answer loss L_s of each draw (under no_grad: no backward through the reader);
      the reranker's gradient is that of mean_s (L_s - b_s) log p(set_s), b_s the mean loss of the question's other
      draws (a leave-one-out baseline: unbiased, Kool et al. 2019, "Buy 4 REINFORCE samples"), log p(set) =
      sum_t log p(i_t | i_<t). The returned loss's value is mean_s L_s.
    - straight_through: M = the sum of the steps' one-hot picks in value, each step's Gumbel-softmax over the
      remaining candidates in gradient; the loss is the answer loss with log(M + eps) in the reader's attention.

    gumbel.kl_coef > 0 adds kl_coef * sum_t KL(p_t || q_t) (selection.kl_to_reference), mean over the questions and
    draws: q_t from `reference` (the reranker as training started, frozen): its step-1 scores at every step over the
    candidates left (gumbel.kl_reference=pointwise, the default), or its step policies on each draw's prefixes
    (gumbel.kl_reference=conditional).
    Raises ValueError when kl_coef > 0 and no reference is given.
    """
    g = cfg.gumbel
    t0 = time.perf_counter()
    states = passage_states(batch, reader, cfg)
    t1 = time.perf_counter()
    questions, passages = candidate_texts(batch)
    base = reranker.step_scorer(batch.reranker_inputs, questions, passages)
    tau, kappa = gumbel.gumbel_tau_kappa(cfg, step)

    def score_step(chosen: torch.Tensor) -> torch.Tensor:
        w = base(chosen)
        return gumbel.spread_normalized(w, batch.valid) if g.kappa_relative else w

    B, n = batch.valid.shape
    draws = []
    for s in range(g.sample_count()):
        if not g.noise:
            G = torch.zeros(g.k, B, n, device=batch.valid.device)
        else:
            G = None if noise is None else noise[s * g.k : (s + 1) * g.k].to(batch.valid.device)
        draws.append(selection.sample(score_step, batch.valid, g.k, kappa, tau, G))
    if g.kl_coef > 0:
        if reference is None:
            raise ValueError("gumbel.kl_coef > 0 needs the reference reranker (train.setup keeps a frozen copy of the "
                             "reranker as training started)")
        with torch.no_grad():
            ref_base = reference.step_scorer(batch.reranker_inputs, questions, passages)

        def ref_step(chosen: torch.Tensor) -> torch.Tensor:
            q = ref_base(chosen if g.kl_reference == "conditional" else chosen[:, :0])  # pointwise: step 1's scores
            return gumbel.spread_normalized(q, batch.valid) if g.kappa_relative else q

        kl = torch.stack([selection.kl_to_reference(d, ref_step, batch.valid, kappa) for d in draws]).mean()
    t2 = time.perf_counter()
    metrics = {}
    if g.estimator == "score_function":
        with torch.no_grad():
            L = torch.stack([reader.answer_loss(states, batch.reader_inputs, visible_log_mask(d.mask.detach() > 0.5))
                             for d in draws]).float()  # [S, B]
            baseline = (L.sum(0, keepdim=True) - L) / (g.sample_count() - 1)  # [S, B], the other draws' mean
            advantage = L - baseline
        log_p = torch.stack([d.log_prob for d in draws])  # [S, B]
        surrogate = (advantage * log_p).mean()
        loss = L.mean() + surrogate - surrogate.detach()  # value: the mean answer loss; gradient: REINFORCE's
        metrics["train/advantage_std"] = advantage.std().item() if advantage.numel() > 1 else 0.0
        metrics["train/log_prob"] = log_p.mean().item()
    else:
        loss = sum(reader.answer_loss(states, batch.reader_inputs, gumbel.log_mask(d.mask, g.eps, batch.valid, True))
                   .mean() for d in draws) / g.sample_count()
    if g.kl_coef > 0:
        loss = loss + g.kl_coef * kl
        metrics["train/kl_to_start"] = kl.item()
    t3 = time.perf_counter()
    M, w = draws[0].mask.detach(), draws[0].scores[0]
    metrics.update({
        "train/tau": tau,
        "train/kappa": kappa,
        "train/w_std": score_std(w, batch.valid),
        "train/mask_on_gold": (M * batch.gold).sum(-1).mean().item(),
    })
    return Output(loss, metrics, {"time/passage_encoding": t1 - t0, "time/reranker": t2 - t1,
                                  "time/answer_pass": t3 - t2})


def reader_pretrain(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """Reader pre-training / fine-tuning: answer CE with all passages visible (HF readers: those left by
    reader.passage_dropout), the passage encoding under autograd (reader_tuning.answer_loss_all_visible; HF readers in
    their own input format), plus the demo reader's deep supervision."""
    if hasattr(reader, "training_loss"):
        answer, aux = reader.training_loss(batch.reader_inputs, None, cfg.reader.aux_loss_weight)
        loss = (answer + aux).mean()
        return Output(loss, {"train/answer_loss": answer.mean().item(), "train/aux_loss": aux.mean().item()})
    t0 = time.perf_counter()
    ids = [r.id for r in batch.records]
    visible = passage_dropout(batch.valid, cfg.reader.passage_dropout, cfg.run.seed, step, ids)
    answer = answer_loss_all_visible(reader, batch.reader_inputs, visible)
    return Output(answer.mean(), {"train/answer_loss": answer.mean().item(),
                                  "train/visible_passages": visible.sum(1).float().mean().item()},
                  {"time/answer_pass": time.perf_counter() - t0})


# -- the reader's per-passage quantities (the baselines' targets) -------------------------------------------------

@torch.no_grad()
def passage_losses(reader, states, inputs, valid: torch.Tensor, leave_out: bool) -> torch.Tensor:
    """Answer loss (token-mean CE) with passage i alone visible (leave_out False) or with every valid passage
    but i visible (leave_out True): n answer passes over one encoding. valid [B, n] → [B, n] fp32, nan where
    not valid."""
    B, n = valid.shape
    out = torch.full((B, n), float("nan"), device=valid.device)
    for i in range(n):
        one = torch.zeros_like(valid)
        one[:, i] = True
        visible = (valid & ~one) if leave_out else one
        out[:, i] = reader.answer_loss(states, inputs, visible_log_mask(visible)).float()
    return out.masked_fill(~valid, float("nan"))


def _reader_quantity(kind: str, batch: Batch, reader, cfg) -> torch.Tensor:
    """[B, n] (nan on padding): per-passage CE alone (emdr, pdist), CE without the passage (loop), or attention
    mass with every passage visible (adist)."""
    states = passage_states(batch, reader, cfg)
    if kind == "adist":
        mass = reader.passage_attention(states, batch.reader_inputs, batch.valid).float()
        return mass.masked_fill(~batch.valid, float("nan"))
    return passage_losses(reader, states, batch.reader_inputs, batch.valid, leave_out=kind == "loop")


ReaderTarget = Literal["single", "loop", "adist"]


def reader_quantity(kind: ReaderTarget, batch: Batch, reader, cfg) -> tuple[torch.Tensor, float]:
    """(the reader's per-passage quantity `kind`, [B, n] fp32, nan on padding; seconds spent in the reader):
    single = answer loss with passage i alone visible, loop = with every passage but i, adist = answer attention
    mass on passage i. Cached per (reader, question, candidates, kind) when cfg.objective.cache_reader_targets."""
    t0 = time.perf_counter()
    if cfg.objective.cache_reader_targets:
        value = reader_cache.cached_targets(batch, cfg, kind, lambda: _reader_quantity(kind, batch, reader, cfg))
    else:
        value = _reader_quantity(kind, batch, reader, cfg)
    return value, time.perf_counter() - t0


# -- reranker-side losses -----------------------------------------------------------------------------------------

def retriever_log_probs(w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log p_R = log_softmax(w) over each question's valid candidates; [B, n] → [B, n], -inf on padding."""
    return torch.log_softmax(w.float().masked_fill(~valid, float("-inf")), dim=-1)


def distill_loss(log_p_r: torch.Tensor, target_logits: torch.Tensor, valid: torch.Tensor, theta: float) -> torch.Tensor:
    """KL(softmax(target_logits / theta) || p_R) per question, summed over valid candidates. → [B]."""
    target = torch.softmax((target_logits / theta).masked_fill(~valid, float("-inf")), dim=-1)
    log_target = torch.log(target.clamp_min(1e-30))
    return (target * (log_target - log_p_r)).masked_fill(~valid, 0.0).sum(-1)


def _score_metrics(w: torch.Tensor, log_p_r: torch.Tensor, batch: Batch) -> dict[str, float]:
    """The per-question score spread (~0 = scores did not separate) and the retriever probability on gold."""
    with torch.no_grad():
        p_gold = log_p_r.exp().masked_fill(~batch.gold, 0.0).sum(-1).mean()
    return {"train/w_std": score_std(w, batch.valid), "train/p_on_gold": p_gold.item()}


def _distillation(kind: ReaderTarget, loss: Callable, batch: Batch, reranker, reader, cfg) -> Output:
    """What the four Atlas baselines share: the reader's per-passage quantity `kind` ([B, n], cached), the
    reranker's scores w and log p_R, then `loss(log_p_r, value, valid, theta)` → [B], averaged over questions."""
    value, reader_seconds = reader_quantity(kind, batch, reader, cfg)
    t0 = time.perf_counter()
    if cfg.reranker.conditional:
        per_question, w, log_p_r, step_seconds = _sequential_distillation(kind, loss, value, batch, reranker, reader,
                                                                          cfg)
        reader_seconds += step_seconds
    else:
        w = reranker(batch.reranker_inputs)  # [B, n]
        log_p_r = retriever_log_probs(w, batch.valid)
        per_question = loss(log_p_r, value, batch.valid, cfg.objective.theta)
    metrics = _score_metrics(w, log_p_r, batch)
    metrics["train/reader_quantity_mean"] = torch.nanmean(value).item()
    return Output(per_question.mean(), metrics, {"time/reader_targets": reader_seconds,
                                                 "time/reranker": time.perf_counter() - t0})


def _sequential_distillation(kind: ReaderTarget, loss: Callable, value: torch.Tensor, batch: Batch, reranker, reader,
                             cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """A baseline's targets for a conditional reranker (reranker.conditional), over the remaining candidates at each
    of the gumbel.k selection steps, the prefix being the reranker's own greedy picks (no gradient through the
    choice). Step 1 is the pointwise objective on w_1. At step t > 1 the target of a remaining candidate i is, for
    emdr and pdist, the reader's answer loss with the prefix and i visible (n answer passes per step, not cached:
    the prefix moves with the reranker); for loop and adist the per-passage quantity of step 1 (it does not depend
    on a prefix), renormalised over the remaining candidates. The loss is the mean over steps; a step where a
    question has no candidate left adds 0.

    Returns (per-question loss [B], w_1 [B, n], log p_R of step 1 [B, n], seconds spent in the reader)."""
    questions, passages = candidate_texts(batch)
    score = reranker.step_scorer(batch.reranker_inputs, questions, passages)
    B, n = batch.valid.shape
    rows = torch.arange(B, device=batch.valid.device)
    left = batch.valid.clone()
    chosen = torch.empty(B, 0, dtype=torch.long, device=batch.valid.device)
    total = torch.zeros(B, device=batch.valid.device)
    reader_seconds, states = 0.0, None
    for t in range(cfg.gumbel.k):
        alive = left.any(-1)
        if not alive.any():
            break
        w_t = score(chosen)
        target = value
        if t > 0 and kind == "single":
            t0 = time.perf_counter()
            states = passage_states(batch, reader, cfg) if states is None else states
            target = prefix_losses(reader, states, batch.reader_inputs, left, chosen)
            reader_seconds += time.perf_counter() - t0
        # a finished row (no candidate left) gets a finite stand-in loss, then 0: no inf or nan reaches backward
        mask_t = left | ~alive[:, None]
        target = torch.where(alive[:, None], target, torch.zeros_like(target))
        log_p = retriever_log_probs(w_t, mask_t)
        step_loss = loss(log_p, target, mask_t, cfg.objective.theta)
        total = total + torch.where(alive, step_loss, torch.zeros_like(step_loss))
        if t == 0:
            w, log_p_r = w_t, log_p
        pick = w_t.detach().float().masked_fill(~left, float("-inf")).argmax(-1)
        pick = torch.where(alive, pick, torch.full_like(pick, -1))
        left = left.clone()
        left[rows[alive], pick[alive]] = False
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
    return total / cfg.gumbel.k, w, log_p_r, reader_seconds


@torch.no_grad()
def prefix_losses(reader, states, inputs, candidates: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Answer loss (token-mean CE) with the chosen passages and candidate i visible, for every candidate i:
    candidates [B, n] bool (the remaining ones), chosen [B, t] long (-1 = none) → [B, n] fp32, nan where i is not a
    candidate. n answer passes over one encoding."""
    B, n = candidates.shape
    prefix = torch.zeros_like(candidates)
    for col in chosen.T:
        ok = col >= 0
        prefix[torch.arange(B, device=col.device)[ok], col[ok]] = True
    out = torch.full((B, n), float("nan"), device=candidates.device)
    for i in range(n):
        visible = prefix.clone()
        visible[:, i] = True
        out[:, i] = reader.answer_loss(states, inputs, visible_log_mask(visible)).float()
    return out.masked_fill(~candidates, float("nan"))


def emdr(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """EMDR: -log sum_i p_R(d_i | q) p_LM(a | q, d_i), p_LM from the reader with passage i alone visible (a
    constant). Its gradient moves p_R towards the posterior p_R(d_i) p_LM(a | d_i) / sum_j (...)."""

    def loss(log_p_r, ce, valid, theta):  # ce = -log p_LM(a | q, d_i)
        return -torch.logsumexp((log_p_r - ce).masked_fill(~valid, float("-inf")), dim=-1)

    return _distillation("single", loss, batch, reranker, reader, cfg)


def pdist(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """PDist (perplexity distillation): KL(softmax(log p_LM(a | q, d_i) / theta) || p_R), p_LM with passage i
    alone visible."""

    def loss(log_p_r, ce, valid, theta):
        return distill_loss(log_p_r, -ce, valid, theta)

    return _distillation("single", loss, batch, reranker, reader, cfg)


def loop(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """LOOP (leave-one-out perplexity distillation): KL(softmax(-log p_LM(a | q, D minus d_i) / theta) || p_R):
    the passages whose removal raises the answer loss most get the highest target probability."""

    def loss(log_p_r, ce_without, valid, theta):
        return distill_loss(log_p_r, ce_without, valid, theta)

    return _distillation("loop", loss, batch, reranker, reader, cfg)


def adist(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """ADist (attention distillation): KL(softmax(log A_i / theta) || p_R), A_i the answer's attention mass on
    passage i with every passage visible (value norms not included: readers expose attention probabilities only)."""

    def loss(log_p_r, mass, valid, theta):
        return distill_loss(log_p_r, torch.log(mass.clamp_min(1e-30)), valid, theta)

    return _distillation("adist", loss, batch, reranker, reader, cfg)


def supervised(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """Labelled reference on is_gold: listwise -log sum_{gold} p_R, or BCE per valid candidate. Questions without
    a gold passage among their candidates add no loss (counted in train/no_gold_fraction)."""
    w = reranker(batch.reranker_inputs)
    log_p_r = retriever_log_probs(w, batch.valid)
    gold = batch.gold & batch.valid
    has_gold = gold.any(-1)
    if cfg.objective.supervised_loss == "listwise":
        per_q = -torch.logsumexp(log_p_r.masked_fill(~gold, float("-inf")), dim=-1)
    else:
        bce = F.binary_cross_entropy_with_logits(w.float(), gold.float(), reduction="none")
        per_q = bce.masked_fill(~batch.valid, 0.0).sum(-1) / batch.valid.sum(-1).clamp_min(1)
    loss = per_q.masked_fill(~has_gold, 0.0).sum() / has_gold.sum().clamp_min(1)
    metrics = _score_metrics(w, log_p_r, batch)
    metrics["train/no_gold_fraction"] = 1.0 - has_gold.float().mean().item()
    return Output(loss, metrics)


# -- the registry --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Objective:
    """One objective: everything the recipe (train.py), config validation and the model card (export.py) read."""

    compute: Callable[..., Output]  # (batch, reranker, reader, cfg, step, noise) -> Output
    trains: Literal["reranker", "reader"]  # the module the optimizer updates; the reader is frozen unless "reader"
    description: str  # one line for the model card: "a reranker trained with gr-train by <description>"
    needs_noise: bool = False  # takes the step's Gumbel noise (train.step_noise) when gumbel.noise is true
    # the loss sees the scores only through a softmax over a question's candidates, so adding a constant to every
    # score changes nothing and the reranker's score bias is frozen (zero gradient); a function of cfg if it depends
    shift_invariant: bool | Callable[[Any], bool] = False
    settings: tuple[str, ...] = ()  # the objective.* keys it reads besides name (listed in the model card)
    intermediate_labels: bool = False  # its batches carry the intermediate-entity labels (deep supervision)

    def is_shift_invariant(self, cfg) -> bool:
        return self.shift_invariant(cfg) if callable(self.shift_invariant) else self.shift_invariant


OBJECTIVES: dict[str, Objective] = {
    "gumbel": Objective(
        gumbel_rerank, "reranker", "G-Rerank (Gumbel Reranking): the relaxed top-k mask M = max_j softmax((kappa * w "
        "+ G_j) / tau) gates the frozen reader's attention to each passage, and the reader's answer loss trains the "
        "reranker (no labels)", needs_noise=True, shift_invariant=True),
    "emdr": Objective(
        emdr, "reranker", "EMDR (Atlas baseline): -log sum_i p_R(d_i|q) p_LM(a|q,d_i), the frozen reader's "
        "single-passage answer likelihoods as constants", shift_invariant=True),
    "pdist": Objective(
        pdist, "reranker", "PDist (Atlas perplexity distillation): KL(softmax(log p_LM(a|q,d_i) / theta) || p_R) from "
        "the frozen reader", shift_invariant=True, settings=("theta",)),
    "loop": Objective(
        loop, "reranker", "LOOP (Atlas leave-one-out perplexity distillation): KL(softmax(-log p_LM(a|q,D without "
        "d_i) / theta) || p_R) from the frozen reader", shift_invariant=True, settings=("theta",)),
    "adist": Objective(
        adist, "reranker", "ADist (Atlas attention distillation): KL(softmax(log A_i / theta) || p_R), A_i the frozen "
        "reader's answer attention mass on passage i", shift_invariant=True, settings=("theta",)),
    "supervised": Objective(
        supervised, "reranker", "supervised training on the is_gold passage labels (listwise or per-passage BCE)",
        shift_invariant=lambda cfg: cfg.objective.supervised_loss == "listwise", settings=("supervised_loss",)),
    "reader": Objective(
        reader_pretrain, "reader", "reader pre-training / fine-tuning: the reader's answer loss with every passage "
        "visible (plus the demo reader's deep supervision)", intermediate_labels=True),
}
