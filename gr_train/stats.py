"""Paired bootstrap intervals over questions and seeds, for comparing rerankers evaluated on the same questions.

Each bootstrap replicate draws S seeds and Q questions with replacement (one question draw shared by every drawn
seed: the rows are paired by question and by seed) and averages over the drawn (seed, question) grid; the interval
is the percentile interval of the replicates (Efron & Tibshirani 1993, Sec. 13.3; paired resampling of test items
as in Koehn 2004). Pure torch.
"""

from __future__ import annotations

import torch


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor | None = None, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Mean of a (or of a - b) over seeds and questions with its bootstrap interval.

    Args:
        a, b: [S, Q] float, one value per (seed, question) of two rows evaluated on the same Q questions with the same
            S seeds (b None: an interval for a alone). NaN marks a question that does not count (e.g. no indirect
            gold passage); it must be NaN in both rows.
        n_boot: replicates; level: coverage of the percentile interval; seed: the resampling generator's seed.
    Returns:
        {"mean", "lo", "hi"}: the nan-mean over the grid and the interval; "n": questions that count.
    Raises:
        ValueError on shapes that differ or are not 2-D, or NaN patterns that differ between a and b.
    """
    a = a.double()
    if a.dim() != 2:
        raise ValueError(f"expected [seeds, questions], got shape {tuple(a.shape)}")
    if b is not None:
        b = b.double()
        if b.shape != a.shape:
            raise ValueError(f"paired rows differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            raise ValueError("paired rows count different questions (NaN patterns differ)")
        a = a - b
    S, Q = a.shape
    counts = ~torch.isnan(a)
    values = torch.nan_to_num(a, nan=0.0)
    gen = torch.Generator().manual_seed(seed)
    s_idx = torch.randint(S, (n_boot, S), generator=gen)  # [R, S]
    q_idx = torch.randint(Q, (n_boot, Q), generator=gen)  # [R, Q]
    # sum over the drawn grid = sum_s sum_q values[s_idx, q_idx]; as a gather: [R, S, Q]
    grid_v = values[s_idx[:, :, None], q_idx[:, None, :]]
    grid_c = counts[s_idx[:, :, None], q_idx[:, None, :]]
    reps = grid_v.sum((1, 2)) / grid_c.sum((1, 2)).clamp_min(1)
    alpha = (1.0 - level) / 2
    lo, hi = torch.quantile(reps, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    mean = (values.sum() / counts.sum().clamp_min(1)).item()
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(counts.any(0).sum())}
