"""Differentiable masked attention (DMA, G-Rerank Sec. 3.2) as additive attention biases; pure torch.

The mask M [B, n] enters the reader as `log M_i` added to the attention logit of every query position toward
every key token of passage i. These functions build that bias, plus the causal/padding parts the readers need,
as fp32 tensors that readers pass to transformers as 4D float `attention_mask`s (used verbatim, see reader.py),
cast to the reader's dtype with `to_attention_dtype`. Keys that must get no attention get `neg_bias(dtype)`.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def neg_bias(dtype: torch.dtype = torch.float32) -> float:
    """The additive bias of a key that must get zero attention, in `dtype`: half of torch.finfo(dtype).min
    (fp32, bf16: -1.7e38; fp16: -32752). Every mask, bias and fill value of the readers comes from here.

    Finite, so that a fully masked row (an empty passage, a left pad) gives a uniform softmax rather than NaN; half
    of the minimum, so that a logit or a second bias added to it in `dtype` stays finite (HF's eager attention adds
    the mask in the model dtype; -1e9 is -inf in fp16). exp() of it is exactly 0 in every float dtype.
    """
    return torch.finfo(dtype).min / 2


# The fp32 value: masks are built in fp32 (log M is fp32), then cast with to_attention_dtype.
NEG_BIAS = neg_bias(torch.float32)


def to_attention_dtype(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An fp32 additive mask in the attention's dtype, masked keys at neg_bias(dtype) instead of overflowing to
    -inf (fp16). Differentiable: values above neg_bias(dtype) (every log M >= log eps) keep their gradient.
    bias: any shape, fp32 → same shape, `dtype`."""
    if dtype == bias.dtype:
        return bias
    return bias.clamp_min(neg_bias(dtype)).to(dtype)


def passage_key_bias(log_M: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """The DMA bias of every passage key token, passages laid side by side as the reader sees them.

    Args:
        log_M: [B, n] fp32, log of the clamped mask (gumbel.log_mask); NEG_BIAS for padded candidates.
        token_mask: [B, n, L] bool, True on the real tokens of each passage, False on padding.
    Returns:
        [B, n*L] fp32: log_M[b, i] on the real tokens of passage i, NEG_BIAS on padding tokens.
        Padding gets no gradient (masked_fill), so d/d log_M[b, i] sums over passage i's real tokens only.
    """
    B, n, L = token_mask.shape
    bias = log_M.float().unsqueeze(-1).expand(B, n, L)
    bias = bias.masked_fill(~token_mask, NEG_BIAS)
    return bias.reshape(B, n * L)


def cross_attention_bias(log_M: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """FiD decoder cross-attention mask: the passage key bias, broadcast over heads and decoder positions.

    Args:
        log_M: [B, n] fp32; token_mask: [B, n, L] bool (see passage_key_bias).
    Returns:
        [B, 1, 1, n*L] fp32 additive mask.
    """
    return passage_key_bias(log_M, token_mask)[:, None, None, :]


def causal_bias(token_mask: torch.Tensor) -> torch.Tensor:
    """Causal self-attention with key padding: 0 where key j <= query t and key j is a real token, else NEG_BIAS.

    Works for left and right padding. A query row with no visible key (a left pad) stays finite (all NEG_BIAS);
    its output is never read.

    Args:
        token_mask: [B, T] bool, True on real tokens.
    Returns:
        [B, 1, T, T] fp32 additive mask.
    """
    B, T = token_mask.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=token_mask.device).tril()
    allowed = causal.unsqueeze(0) & token_mask.unsqueeze(1)  # [B, T(query), T(key)]
    bias = torch.zeros(B, T, T, dtype=torch.float32, device=token_mask.device)
    return bias.masked_fill(~allowed, NEG_BIAS).unsqueeze(1)


def answer_bias(key_bias: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Decoder-only answer pass: T query tokens attend to S cached passage keys and causally to each other.

    Key columns are ordered [passage keys (S = n*L), query keys (T)], matching the cache the queries extend.

    Args:
        key_bias: [B, S] fp32, bias on the cached passage keys (passage_key_bias; may require grad).
        query_mask: [B, T] bool, True on real query tokens.
    Returns:
        [B, 1, T, S + T] fp32 additive mask: key_bias on passage columns (same for every query row),
        causal_bias on query columns.
    """
    B, T = query_mask.shape
    passage_part = key_bias.float()[:, None, None, :].expand(B, 1, T, key_bias.shape[-1])
    return torch.cat([passage_part, causal_bias(query_mask)], dim=-1)


def fused_bias(log_M: torch.Tensor, token_mask: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """One-pass equivalent of (parallel passage encoding, answer pass) for a sequence [passages..., query].

    Passage rows see only their own passage, causally (block diagonal), and never M: passage states do not
    depend on the mask. Query rows are answer_bias rows.

    Args:
        log_M: [B, n] fp32; token_mask: [B, n, L] bool; query_mask: [B, T] bool.
    Returns:
        [B, 1, n*L + T, n*L + T] fp32 additive mask.
    """
    B, n, L = token_mask.shape
    T = query_mask.shape[1]
    S = n * L
    full = torch.full((B, S + T, S + T), NEG_BIAS, dtype=torch.float32, device=token_mask.device)
    # Block diagonal: passage i's rows x passage i's columns get that passage's own causal/padding mask.
    within = causal_bias(token_mask.reshape(B * n, L)).reshape(B, n, L, L)
    for i in range(n):
        full[:, i * L : (i + 1) * L, i * L : (i + 1) * L] = within[:, i]
    query_rows = answer_bias(passage_key_bias(log_M, token_mask), query_mask)[:, 0]  # [B, T, S + T]
    return torch.cat([full[:, :S], query_rows], dim=1).unsqueeze(1)


def bias_grad_kernels(bias: torch.Tensor) -> contextlib.AbstractContextManager:
    """The SDPA kernels for a pass whose attention bias [.., Q, K] needs a gradient (training through the mask).

    On CUDA the memory-efficient kernel's backward refuses a bias that needs a gradient when the query, key and
    value do not (the frozen reader's first layer): RuntimeError "LSE is not correctly aligned (strideH)", seen on
    an H200 with torch 2.11 (BENCHMARKS.md, GPU readiness). There the math kernel, the reference implementation
    (same values, more memory: the [Q, K] scores are kept), is the only one allowed; without a gradient, or off
    CUDA, the default choice stays. Eager attention is unaffected."""
    if bias.requires_grad and bias.device.type == "cuda":
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def enabled_sdpa_kernels() -> list[SDPBackend]:
    """The SDPA kernels allowed now (what an enclosing `sdpa_kernel` context set), e.g. to recompute a
    checkpointed layer in backward under the same choice as its forward."""
    flags = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
             SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
             SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
             SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled()}
    return [k for k, on in flags.items() if on]
