"""Sequential selection of k passages, each step scored given the passages chosen before it; pure torch.

A step scorer `score_step(chosen) -> w_t` gives the scores of all n candidates at step t, chosen: [B, t] long (the
indices picked at steps 0..t-1, -1 where a row had nothing left to pick). A pointwise reranker's scorer ignores
`chosen` (w_t = w for every t); a conditional one scores the question followed by the passages chosen so far
(reranker.conditional: multi-hop dense retrieval's query, Xiong et al., ICLR 2021).

- `greedy`: i_t = argmax over the remaining valid candidates of w_t (inference). With an inert scorer it equals
  hard top-k (gumbel.topk_indices), ties to the lower index.
- `sample`: i_t = argmax(kappa * w_t + G_t) over the remaining ones, G_t ~ Gumbel(0, 1): an exact draw from the
  policy p(i_t | i_<t) = softmax(kappa * w_t) over the remaining candidates (the Gumbel-max trick); with an inert
  scorer the sequence is a Gumbel top-k sample, k draws without replacement (Kool et al. 2019). It returns the
  sequence's log-probability sum_t log p(i_t | i_<t) (the score-function estimator's term, differentiable in w)
  and a straight-through mask: value the 0/1 indicator of the chosen k, gradient that of each step's
  softmax((kappa * w_t + G_t) / tau) over the remaining candidates.
- `beam`: the sequence of highest log p(i_1..i_k) = sum_t log p(i_t | i_<t) under the step policies softmax(kappa *
  w_t), searched with `width` beams (inference; width 1 is `greedy`). Unlike greedy selection it is not
  prefix-consistent: the beam of k need not start with the beam of k - 1.
- `kl_to_reference`: sum_t KL(p_t || q_t) of a drawn sequence's step policies against a reference scorer's on the
  same prefixes (gumbel.kl_coef: the KL penalty to the reranker as training started).
- `ranking_scores`: a score vector whose descending order is the greedy selection order (the first `depth`
  candidates), then the rest by the last step's scores; evaluation, hard top-k and every metric read it as scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gr_train.gumbel import sample_gumbel

StepScorer = Callable[[torch.Tensor], torch.Tensor]  # chosen [B, t] long -> w_t [B, n]


@dataclass
class Selection:
    """The outcome of `sample` or `greedy` over B questions with n candidates, k steps.

    indices: [B, k] long, the pick of each step, -1 where a row had no valid candidate left;
    mask: [B, n] fp32, 1 on the picked candidates, 0 elsewhere (straight-through gradient when sampled);
    log_prob: [B] fp32, sum_t log p(i_t | i_<t) under softmax(kappa * w_t) (0 for greedy: no policy);
    scores: the k step scores w_t, each [B, n] fp32 (scores[0] is the scorer's base w).
    """

    indices: torch.Tensor
    mask: torch.Tensor
    log_prob: torch.Tensor
    scores: list[torch.Tensor]


def sample(score_step: StepScorer, valid: torch.Tensor, k: int, kappa: float = 1.0, tau: float = 0.5,
           gumbel_noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Selection:
    """Draw k passages one at a time from the step policies softmax(kappa * w_t) over the remaining candidates.

    Args:
        score_step: chosen [B, t] long → w_t [B, n] (any float dtype, computed in fp32).
        valid: [B, n] bool, False on padded candidates (never picked).
        k: steps (>= 1); a row with fewer valid candidates stops early (index -1, log-probability 0).
        kappa: policy scale; tau: temperature of the straight-through mask's softmax (> 0).
        gumbel_noise: [k, B, n] pre-drawn Gumbel samples, one per step and candidate (train.step_noise's rows of a
            mask sample); None draws them (from `generator`).
    Returns: Selection; mask and log_prob are differentiable in every step's scores.
    Raises: ValueError on k < 1 or a gumbel_noise of another shape.
    """
    B, n = valid.shape
    if gumbel_noise is None:
        gumbel_noise = sample_gumbel((k, B, n), generator=generator, device=valid.device)
    if gumbel_noise.shape != (k, B, n):
        raise ValueError(f"gumbel_noise: expected shape {(k, B, n)}, got {tuple(gumbel_noise.shape)}")
    return _select(score_step, valid, k, kappa, tau, gumbel_noise.to(valid.device))


@torch.no_grad()
def greedy(score_step: StepScorer, valid: torch.Tensor, k: int) -> Selection:
    """Inference: i_t = the highest w_t among the remaining valid candidates, ties to the lower index.
    valid: [B, n] bool; k >= 1 steps. Returns Selection (log_prob 0; no gradient)."""
    return _select(score_step, valid, k, 1.0, 1.0, None)


@torch.no_grad()
def beam(score_step: StepScorer, valid: torch.Tensor, k: int, width: int, kappa: float = 1.0) -> Selection:
    """Beam search for the k-step sequence of highest log-probability sum_t log p(i_t | i_<t), each step's policy
    softmax(kappa * w_t) over the candidates left (valid and not picked before); the standard beam search of
    sequence models (e.g. Wiseman and Rush, 2016) over selection steps.

    Args:
        score_step: chosen [B, t] long → w_t [B, n]; called once per live beam and step (row b of every call is
            question b), so a conditional scorer encodes up to `width` prefixes per question and step.
        valid: [B, n] bool; k >= 1 steps; width >= 1 beams (1: exactly `greedy`, ties to the lower index);
        kappa: the policy scale (the ranking of sequences depends on it: it weighs later steps' confidence).
    Returns: Selection of the best sequence per question: indices [B, k] (-1 where a row ran out of candidates),
        mask [B, n], log_prob [B] its sum_t log p(i_t | i_<t), scores its own steps' w_t. No gradient.
    Raises: ValueError on k < 1 or width < 1.
    """
    if k < 1 or width < 1:
        raise ValueError(f"beam selection: k and width must be >= 1, got k={k}, width={width}")
    B, n = valid.shape
    device = valid.device
    chosen = torch.empty(B, 1, 0, dtype=torch.long, device=device)  # [B, J, t]: J beams per question
    taken = torch.zeros(B, 1, n, dtype=torch.bool, device=device)
    total = torch.zeros(B, 1, device=device)  # [B, J] each beam's log-probability; -inf for a filler beam
    for _ in range(k):
        J = chosen.shape[1]
        w = torch.stack([score_step(chosen[:, j]).float() for j in range(J)], dim=1)  # [B, J, n]
        left = valid[:, None, :] & ~taken
        step = torch.log_softmax((kappa * w).masked_fill(~left, -1e9), dim=-1)
        cand = (total[..., None] + step).masked_fill(~left, float("-inf")).reshape(B, J * n)
        order = torch.sort(cand, dim=-1, descending=True, stable=True).indices[:, : min(width, J * n)]  # [B, J']
        parent, pick = order // n, order % n
        new_total = cand.gather(1, order)
        # [B]: rows where a beam of finite log-probability has a candidate left (filler beams, -inf, do not count)
        alive = (left.any(-1) & torch.isfinite(total)).any(-1)
        if not bool(alive.all()):  # rows out of candidates keep their beams and pick nothing (-1)
            keep = torch.arange(order.shape[1], device=device).clamp_max(J - 1).expand(B, -1)
            parent = torch.where(alive[:, None], parent, keep)
            pick = torch.where(alive[:, None], pick, torch.full_like(pick, -1))
            filler = torch.arange(order.shape[1], device=device)[None, :] >= J
            dead_total = total.gather(1, keep).masked_fill(filler, float("-inf"))
            new_total = torch.where(alive[:, None], new_total, dead_total)
        chosen = torch.cat([chosen.gather(1, parent[..., None].expand(-1, -1, chosen.shape[2])), pick[..., None]], -1)
        taken = taken.gather(1, parent[..., None].expand(-1, -1, n)).clone()
        hit = pick >= 0
        taken[hit.nonzero(as_tuple=True) + (pick[hit],)] = True
        total = new_total
    best = total.argmax(-1)  # the first of equal totals: the beam sorted first
    rows = torch.arange(B, device=device)
    indices = chosen[rows, best]  # [B, k]
    mask = torch.zeros(B, n, device=device)
    ok = indices >= 0
    mask[rows[:, None].expand_as(indices)[ok], indices[ok]] = 1.0
    log_prob = total[rows, best].masked_fill(~valid.any(-1), 0.0)
    return Selection(indices, mask, log_prob, [score_step(indices[:, :t]).float() for t in range(k)])


def _select(score_step: StepScorer, valid: torch.Tensor, k: int, kappa: float, tau: float,
            gumbel_noise: torch.Tensor | None) -> Selection:
    if k < 1:
        raise ValueError(f"selection: k must be >= 1, got {k}")
    B, n = valid.shape
    rows = torch.arange(B, device=valid.device)
    taken = torch.zeros_like(valid)
    chosen = torch.empty(B, 0, dtype=torch.long, device=valid.device)
    mask = torch.zeros(B, n, device=valid.device)
    log_prob = torch.zeros(B, device=valid.device)
    scores = []
    for t in range(k):
        w = score_step(chosen).float()  # [B, n]
        scores.append(w)
        left = valid & ~taken
        alive = left.any(-1)  # [B]: rows that still have a candidate to pick
        logits = (kappa * w).masked_fill(~left, float("-inf"))
        perturbed = logits if gumbel_noise is None else logits + gumbel_noise[t]
        # argmax of the scores (descending stable sort: ties to the lower index), -1 for rows with nothing left
        pick = torch.sort(perturbed.detach(), dim=-1, descending=True, stable=True).indices[:, 0]
        pick = torch.where(alive, pick, torch.full_like(pick, -1))
        hard = torch.zeros(B, n, device=valid.device)
        hard[rows[alive], pick[alive]] = 1.0
        if gumbel_noise is not None:
            safe = torch.where(left, perturbed, torch.full_like(perturbed, -1e9))  # no -inf: finite softmax grads
            soft = torch.softmax(safe / tau, dim=-1) * left
            mask = mask + hard + (soft - soft.detach())
            step_log_p = torch.log_softmax(torch.where(left, logits, torch.full_like(logits, -1e9)), dim=-1)
            log_prob = log_prob + torch.where(alive, step_log_p[rows, pick.clamp_min(0)], torch.zeros_like(log_prob))
        else:
            mask = mask + hard
        taken = taken | hard.bool()
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
    return Selection(chosen, mask, log_prob, scores)


def kl_to_reference(sel: Selection, reference: StepScorer, valid: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """sum_t KL(p_t || q_t) per question, [B] fp32: p_t = softmax(kappa * w_t) with w_t = sel.scores[t], q_t the same
    of `reference`'s scores given the same prefix (sel.indices[:, :t]), both over the candidates left at step t
    (valid and not picked before). Differentiable in sel.scores; the reference is called under no_grad. A row with
    nothing left at a step adds 0 for it. The KL penalty of RLHF's PPO (Ouyang et al. 2022), per selection step.
    valid: [B, n] bool."""
    B = valid.shape[0]
    rows = torch.arange(B, device=valid.device)
    left = valid.clone()
    kl = torch.zeros(B, device=valid.device)
    for t, w in enumerate(sel.scores):
        with torch.no_grad():
            q = reference(sel.indices[:, :t]).detach().float()
        log_p = torch.log_softmax((kappa * w.float()).masked_fill(~left, -1e9), dim=-1)
        log_q = torch.log_softmax((kappa * q).masked_fill(~left, -1e9), dim=-1)
        kl = kl + (log_p.exp() * (log_p - log_q)).masked_fill(~left, 0.0).sum(-1)
        pick = sel.indices[:, t]
        ok = pick >= 0
        left = left.clone()
        left[rows[ok], pick[ok]] = False
    return kl


@torch.no_grad()
def ranking_scores(score_step: StepScorer, valid: torch.Tensor, depth: int) -> torch.Tensor:
    """Scores [B, n] fp32 whose descending order is the greedy selection of the first `depth` candidates (in
    selection order), then the others by the last step's scores: hard top-k of them is greedy selection of k for
    every k <= depth (greedy selection is prefix-consistent), and rank metrics read the selection order.
    The values are order-preserving only, not calibrated scores. valid: [B, n] bool; padded candidates keep the
    last step's value (callers mask them)."""
    depth = max(1, min(depth, valid.shape[1]))
    sel = greedy(score_step, valid, depth)
    last = sel.scores[-1].clone()
    rest = last.masked_fill(~valid, float("-inf"))
    top = torch.where(torch.isfinite(rest), rest, torch.zeros_like(rest)).amax(-1)  # [B]
    out = last.clone()
    for t in range(sel.indices.shape[1]):
        idx = sel.indices[:, t]
        ok = idx >= 0
        b = torch.arange(valid.shape[0], device=valid.device)[ok]
        out[b, idx[ok]] = top[ok] + float(depth - t)
    return out
