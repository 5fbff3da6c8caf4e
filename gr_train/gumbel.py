"""Stochastic top-k masks for training (G-Rerank, Huang et al. 2025, Sec. 3) and hard top-k; pure torch.

Training estimators (`gumbel.estimator`), each a function of the scores w [B, n] and Gumbel noise G:
- `max_softmax` (the paper's, the reference): M = max_j softmax((kappa * w + G_j) / tau), j = 1..k.
- `subset`: the relaxed k-subset of one perturbed score vector s = kappa * w + G: M = sigmoid(s / tau - nu) with
  sum_i M_i = k (the LML projection, Amos et al. 2019), M in [0, 1].
- `straight_through`: forward M = the hard k-subset of s (the reader sees exactly k passages, the Gumbel top-k
  sample); backward through the `subset` relaxation of the same s.
- `score_function`: M = the hard Gumbel top-k sample, no gradient through M; the reranker's gradient is REINFORCE's,
  from the sample's log-probability (selection.sample, objectives.gumbel_rerank).
Inference: M = 1 on the k highest scores, 0 elsewhere.
"""

from __future__ import annotations

import math

import torch

from gr_train.attention import NEG_BIAS

# Uniform samples are clamped into [U_EPS, 1 - U_EPS] so that -log(-log u) stays finite (|G| < 17 in fp32).
U_EPS = 1e-7


def sample_gumbel(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """G = -log(-log u), u ~ U(0, 1) clamped away from 0 and 1. Returns fp32 tensor of `shape`."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    u = u.clamp(U_EPS, 1.0 - U_EPS)
    return -torch.log(-torch.log(u))


def relaxed_topk_mask(
    w: torch.Tensor,
    k: int,
    tau: float = 0.5,
    kappa: float = 1.0,
    noise: bool = True,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    gumbel_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stochastic soft top-k mask (paper Eq. 4-5).

    Args:
        w: [B, n] reranker scores (any float dtype; computed in fp32).
        k: number of softmax samples (passages the mask keeps, softly).
        tau: temperature > 0; tau -> 0 gives a hard top-k (with noise: a sampled one).
        kappa: score scale applied before adding noise.
        noise: add fresh Gumbel noise per sample; False is the paper's no-noise ablation
            (then all k samples are equal and M is a single softmax).
        generator: makes the noise deterministic.
        valid: [B, n] bool, False for padded candidates; they get M = 0 exactly.
        gumbel_noise: [k, B, n] pre-drawn Gumbel samples to use instead of drawing (the training recipe draws
            one tensor per global batch and slices it, so the mask of a question does not depend on how the
            batch is split across ranks and micro-batches).
    Returns:
        M: [B, n] fp32, values in (0, 1] on valid candidates, sum in [1, k].
    """
    B, n = w.shape
    logits = kappa * w.float()
    logits = logits.unsqueeze(0).expand(k, B, n)
    if noise:
        if gumbel_noise is None:
            gumbel_noise = sample_gumbel((k, B, n), generator=generator, device=w.device)
        if gumbel_noise.shape != (k, B, n):
            raise ValueError(f"gumbel_noise: expected shape {(k, B, n)}, got {tuple(gumbel_noise.shape)}")
        logits = logits + gumbel_noise.to(logits.device)
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
    M_j = torch.softmax(logits / tau, dim=-1)  # [k, B, n]
    return M_j.max(dim=0).values


def relaxed_subset_mask(
    w: torch.Tensor,
    k: int,
    tau: float = 0.5,
    kappa: float = 1.0,
    noise: bool = True,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    gumbel_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relaxed k-subset of one perturbed score vector s = kappa * w + G: M = sigmoid(s / tau - nu), nu such that
    sum_i M_i = k (subset_relaxation). As tau -> 0, M tends to the 0/1 indicator of the top k of s, a Gumbel top-k
    sample (k draws without replacement from softmax(kappa * w); Kool et al. 2019).

    Args:
        w: [B, n] scores (any float dtype; computed in fp32).
        k: subset size (>= 1; a row with k or fewer valid candidates keeps all of them, M = 1).
        tau, kappa, noise, generator, valid: as in relaxed_topk_mask.
        gumbel_noise: [B, n] pre-drawn Gumbel samples (one per candidate), or None to draw.
    Returns:
        M: [B, n] fp32 in [0, 1], 0 on padded candidates, row sums min(k, valid count) to 1e-4.
    """
    return subset_relaxation(perturbed_scores(w, kappa, noise, generator, gumbel_noise), k, tau, valid)


def subset_relaxation(s: torch.Tensor, k: int, tau: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The entropy-regularised projection of s / tau onto {M in [0, 1]^n : sum_i M_i = k} (the LML layer, Amos et
    al. 2019): M = sigmoid(s / tau - nu), nu found by bisection (in fp64), the gradient by implicit differentiation
    (dnu/ds_j = M'_j / (tau * sum_i M'_i), M' = M (1 - M)). s: [B, n] fp32 → M: [B, n] fp32.

    Chosen over the successive softmax of Xie & Ermon (2019), whose k softmaxes also sum to k but whose M_i exceed
    1 at tau > 0 (up to 1.66 at tau 0.5 on 10 N(0, 1) scores): log M_i > 0 would weight a passage above "read".
    """
    ok = torch.ones_like(s, dtype=torch.bool) if valid is None else valid
    x = (s.double() / tau).masked_fill(~ok, float("-inf"))
    k_row = ok.sum(-1, keepdim=True).clamp_max(k).double()  # [B, 1]
    with torch.no_grad():
        finite = torch.where(ok, x, torch.zeros_like(x))
        # f(lo) >= 0 (every sigmoid > 1 - 1e-17) and f(hi) < 0 (every sigmoid < 1e-17) bracket the root
        lo = finite.masked_fill(~ok, float("inf")).min(-1, keepdim=True).values - 40.0
        hi = finite.masked_fill(~ok, float("-inf")).max(-1, keepdim=True).values + 40.0
        for _ in range(100):  # bisection on the decreasing f(nu) = sum_i sigmoid(x_i - nu) - k
            mid = (lo + hi) / 2
            above = torch.sigmoid(x - mid).sum(-1, keepdim=True) > k_row
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        nu0 = (lo + hi) / 2
        slope = torch.sigmoid(x - nu0) * torch.sigmoid(nu0 - x)  # M'_i, 0 on padding
        weight = slope / slope.sum(-1, keepdim=True).clamp_min(1e-300)
    # nu as a function of x to first order: its value is nu0, its gradient the implicit one.
    xf = torch.where(ok, x, torch.zeros_like(x))
    nu = nu0 + (weight * (xf - xf.detach())).sum(-1, keepdim=True)
    M = torch.sigmoid(x - nu)
    full = ok.sum(-1, keepdim=True) <= k  # every valid candidate fits: M = 1 on them
    M = torch.where(full, ok.double(), M)
    return M.float().masked_fill(~ok, 0.0)


def straight_through_mask(
    w: torch.Tensor,
    k: int,
    tau: float = 0.5,
    kappa: float = 1.0,
    noise: bool = True,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    gumbel_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Straight-through Gumbel top-k: the value is the hard k-subset of s = kappa * w + G (the passages the reader
    reads), the gradient that of the relaxed k-subset of the same s (straight-through estimator, Bengio et al.
    2013; Jang et al. 2017, Sec. 2.2).

    Pair it with log_mask(M, eps, valid, smooth=True): log(M + eps) gives each excluded passage (M_i = 0) a finite,
    non-zero d loss / d M_i, the reader's response to letting passage i in multiplicatively; a clamp gives none.

    Args: as relaxed_subset_mask.
    Returns: M [B, n] fp32, exactly 0/1 in value with min(k, valid count) ones per row; differentiable w.r.t. w.
    """
    s = perturbed_scores(w, kappa, noise, generator, gumbel_noise)
    soft = subset_relaxation(s, k, tau, valid)
    return hard_topk_mask(s, k, valid) + (soft - soft.detach())


def perturbed_scores(
    w: torch.Tensor,
    kappa: float,
    noise: bool = True,
    generator: torch.Generator | None = None,
    gumbel_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """s = kappa * w + G, G ~ Gumbel(0, 1) per candidate (G = 0 when noise is False). w: [B, n] → [B, n] fp32.

    gumbel_noise: [B, n] pre-drawn samples; raises ValueError on another shape.
    """
    s = kappa * w.float()
    if not noise:
        return s
    if gumbel_noise is None:
        gumbel_noise = sample_gumbel(tuple(w.shape), generator=generator, device=w.device)
    if gumbel_noise.shape != w.shape:
        raise ValueError(f"gumbel_noise: expected shape {tuple(w.shape)}, got {tuple(gumbel_noise.shape)}")
    return s + gumbel_noise.to(s.device)


def spread_normalized(w: torch.Tensor, valid: torch.Tensor | None = None, floor: float = 1e-6) -> torch.Tensor:
    """w / std(w) per question, the std over valid candidates and detached (gumbel.kappa_relative): with it, kappa
    sets the score spread relative to the Gumbel noise (std pi / sqrt(6)) whatever scale the reranker's scores
    drift to. w: [B, n] any float dtype; valid: [B, n] bool or None → [B, n] fp32. The std is clamped to at least
    `floor`, so a row of equal scores stays finite (and equal)."""
    wf = w.float()
    ok = torch.ones_like(wf, dtype=torch.bool) if valid is None else valid
    count = ok.sum(-1, keepdim=True).clamp_min(1)
    mean = (wf * ok).sum(-1, keepdim=True) / count
    std = (((wf - mean) * ok).pow(2).sum(-1, keepdim=True) / count).sqrt()
    return wf / std.detach().clamp_min(floor)


def sampled_topk_mask(
    w: torch.Tensor,
    k: int,
    tau: float = 0.5,
    kappa: float = 1.0,
    noise: bool = True,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
    gumbel_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The score-function estimator's mask: the hard Gumbel top-k sample of s = kappa * w + G, with no gradient
    (the reranker's gradient comes from the sample's log-probability, selection.sample). Args: as
    relaxed_subset_mask (tau unused). Returns: M [B, n] fp32, 0/1, min(k, valid count) ones per row."""
    return hard_topk_mask(perturbed_scores(w, kappa, noise, generator, gumbel_noise), k, valid)


ESTIMATORS = {"max_softmax": relaxed_topk_mask, "subset": relaxed_subset_mask,
              "straight_through": straight_through_mask, "score_function": sampled_topk_mask}
# Estimators that choose the k passages one step at a time (selection.sample) in training, whatever the reranker.
SEQUENTIAL = ("score_function",)
# Estimators whose mask is 0 on passages that must still get a gradient: their bias is log(M + eps) (log_mask smooth).
SMOOTH_LOG = ("straight_through",)


def training_mask(
    estimator: str,
    w: torch.Tensor,
    k: int,
    tau: float,
    kappa: float,
    noise: bool = True,
    valid: torch.Tensor | None = None,
    gumbel_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The training mask M [B, n] fp32 of `estimator` (a key of ESTIMATORS).

    gumbel_noise: [k, B, n] (max_softmax uses all k draws, the subset estimators the first); None = draw.
    Raises ValueError on an unknown estimator.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{estimator}' ({' | '.join(ESTIMATORS)})")
    if estimator != "max_softmax" and gumbel_noise is not None:
        gumbel_noise = gumbel_noise[0]
    return ESTIMATORS[estimator](w, k, tau, kappa, noise, generator, valid, gumbel_noise)


def topk_indices(w: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k highest scores per row, best first. w: [B, n] → [B, min(k, n)] long.

    Padded candidates (valid False) rank last; ties break towards the lower index (stable sort).
    """
    scores = w.detach().float()
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[:, : min(k, w.shape[-1])]


def hard_topk_mask(w: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Inference mask: 1.0 on the k highest valid scores, 0.0 elsewhere. w: [B, n] → M: [B, n] fp32."""
    M = torch.zeros_like(w, dtype=torch.float32)
    M.scatter_(1, topk_indices(w, k, valid), 1.0)
    if valid is not None:
        M = M * valid.float()
    return M


def log_mask(M: torch.Tensor, eps: float = 1e-9, valid: torch.Tensor | None = None,
             smooth: bool = False) -> torch.Tensor:
    """The attention-logit bias in fp32: log(clamp(M, eps)), or log(M + eps) when `smooth`; padded candidates get
    attention.NEG_BIAS (= neg_bias(fp32); readers clamp it to their dtype). [B, n] → [B, n].

    The clamp gives M_i < eps no gradient; `smooth` keeps d/dM_i = 1 / (M_i + eps) there, which the straight-through
    estimator needs at M_i = 0 (the product with the attention weight ~eps stays finite)."""
    logM = torch.log(M.float() + eps) if smooth else torch.log(M.float().clamp_min(eps))
    if valid is not None:
        logM = logM.masked_fill(~valid, NEG_BIAS)
    return logM



def mask_entropy(M: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over queries of the entropy of M normalised to a distribution (nats). M: [B, n] → scalar.

    0 when the mask is one-hot; log(n) when uniform. Logged as train/mask_entropy.
    """
    p = M.float()
    if valid is not None:
        p = p * valid.float()
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()


def schedule_value(start: float, end: float | None, step: int, max_steps: int, kind: str = "linear") -> float:
    """Interpolate a hyper-parameter (tau, kappa) from `start` at step 0 to `end` at `max_steps`.

    kind: linear | cosine (half cosine) | exponential (geometric; both ends > 0). `end=None` keeps `start`.
    """
    if end is None or max_steps <= 0:
        return start
    t = min(max(step / max_steps, 0.0), 1.0)
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "exponential":
        return start * (end / start) ** t
    raise ValueError(f"unknown schedule '{kind}' (linear | cosine | exponential)")


def gumbel_k(cfg, step: int) -> int:
    """k at training step `step` (from 0): cfg.gumbel.k_curriculum = [[steps, k], ...] in order, then cfg.gumbel.k
    (cfg: a config.Config)."""
    start = 0
    for steps, k in cfg.gumbel.k_curriculum:
        if step < start + steps:
            return k
        start += steps
    return cfg.gumbel.k


def gumbel_tau_kappa(cfg, step: int) -> tuple[float, float]:
    """(tau, kappa) at `step` from cfg.gumbel's start/end values and schedule (cfg: a config.Config)."""
    g = cfg.gumbel
    tau = schedule_value(g.tau, g.tau_end, step, cfg.train.max_steps, g.schedule)
    kappa = schedule_value(g.kappa, g.kappa_end, step, cfg.train.max_steps, g.schedule)
    return tau, kappa
