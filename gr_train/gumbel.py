"""Gumbel relaxed top-k mask (G-Rerank, Huang et al. 2025, Sec. 3) and hard top-k; pure torch.

Training: M = max_j softmax((kappa * w + G_j) / tau), j = 1..k, G_j i.i.d. Gumbel(0, 1).
Inference: M = 1 on the k highest scores, 0 elsewhere.
"""

from __future__ import annotations

import math

import torch

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


def log_mask(M: torch.Tensor, eps: float = 1e-9, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The attention-logit bias log(clamp(M, eps)) in fp32; padded candidates get NEG_BIAS. [B, n] → [B, n]."""
    logM = torch.log(M.float().clamp_min(eps))
    if valid is not None:
        logM = logM.masked_fill(~valid, NEG_BIAS)
    return logM


# Bias for keys that must get zero attention (padding, padded candidates). Finite so that a row that is
# fully masked yields a uniform softmax rather than NaN; exp(-1e9) underflows to exactly 0 in fp32 and bf16.
NEG_BIAS = -1e9


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
