"""Ranking and answer metrics: Recall@k, NDCG@k, MRR over reranker scores; SQuAD exact match and F1. Pure functions.

Conventions shared by the ranking metrics: candidates are ranked by descending score, ties broken towards the
lower index (stable sort), padded candidates (valid False) rank after every valid one and are never relevant;
a question with no relevant valid candidate gets NaN (average with `nanmean`, which also returns the count).
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from gr_train.data import normalize_answer


def _ranks(
    scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of every candidate and the relevance mask restricted to valid candidates.

    scores: [B, n] float; relevant, valid: [B, n] bool. Returns (rank [B, n] long, relevant [B, n] bool).
    """
    if scores.dim() != 2 or relevant.shape != scores.shape or (valid is not None and valid.shape != scores.shape):
        shapes = f"scores {tuple(scores.shape)}, relevant {tuple(relevant.shape)}"
        shapes += f", valid {tuple(valid.shape)}" if valid is not None else ""
        raise ValueError(f"expected [B, n] tensors of one shape, got {shapes}")
    scores = scores.detach().float()
    relevant = relevant.bool()
    if valid is None:
        valid = torch.ones_like(relevant)
    valid = valid.bool()
    # A NaN score would sort first and silently win every top-k; a diverged scorer must be visible.
    if torch.isnan(scores[valid]).any():
        raise ValueError("scores contain NaN on valid candidates")
    # Two stable sorts: by score, then by validity. The second keeps the score order inside each group, so a
    # valid candidate scored -inf still ranks before any padded one (masking pads to -inf would tie them).
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    by_valid = torch.sort(valid.gather(-1, order).int(), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, by_valid)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return rank, relevant & valid


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def recall_at_k(
    scores: torch.Tensor, relevant: torch.Tensor, k: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of each question's relevant passages that rank in the top k.

    Args:
        scores: [B, n] reranker scores w (higher = better).
        relevant: [B, n] bool relevance labels (gold, direct or indirect).
        k: cut-off >= 1; k > n is allowed (then every valid relevant passage counts).
        valid: [B, n] bool, False for padded candidates; None = all valid.
    Returns:
        [B] float32; NaN where a question has no relevant valid passage.
    """
    _check_k(k)
    rank, relevant = _ranks(scores, relevant, valid)
    hits = (relevant & (rank < k)).sum(-1).float()
    total = relevant.sum(-1).float()
    return torch.where(total > 0, hits / total.clamp_min(1), torch.full_like(total, math.nan))


def ndcg_at_k(scores: torch.Tensor, relevant: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """NDCG@k with binary gains and a log2 discount: DCG = sum over relevant passages at rank r < k of 1/log2(r + 2)
    (r 0-based); the ideal DCG puts min(#relevant, k) relevant passages first.

    Shapes and conventions as `recall_at_k`. Returns [B] float32 in [0, 1], NaN without relevant passages.
    """
    _check_k(k)
    rank, relevant = _ranks(scores, relevant, valid)
    discount = 1.0 / torch.log2(rank.float() + 2.0)  # [B, n], discount of each candidate at its own rank
    dcg = (discount * (relevant & (rank < k)).float()).sum(-1)
    n_ideal = relevant.sum(-1).clamp(max=k)  # [B]
    ideal_discount = 1.0 / torch.log2(torch.arange(k, device=scores.device).float() + 2.0)  # [k]
    idcg = (ideal_discount.unsqueeze(0) * (torch.arange(k, device=scores.device) < n_ideal.unsqueeze(-1))).sum(-1)
    return torch.where(n_ideal > 0, dcg / idcg.clamp_min(1e-12), torch.full_like(dcg, math.nan))


def mrr(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reciprocal rank of the best-ranked relevant passage, 1 / (r + 1) with r 0-based, over the full ranking.

    Shapes and conventions as `recall_at_k`. Returns [B] float32 in (0, 1], NaN without relevant passages.
    """
    rank, relevant = _ranks(scores, relevant, valid)
    n = scores.shape[-1]
    first = torch.where(relevant, rank, torch.full_like(rank, n)).min(-1).values  # n where nothing is relevant
    return torch.where(first < n, 1.0 / (first.float() + 1.0), torch.full(first.shape, math.nan, device=first.device))


def fact_coverage_at_k(
    scores: torch.Tensor, fact: torch.Tensor, k: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1.0 when every needed fact has at least one of its copies in the top k, else 0.0 (per question).

    Args:
        scores: [B, n] reranker scores; k: cut-off >= 1; valid: as in recall_at_k.
        fact: [B, n] long, the fact id of each gold passage (copies of one fact share an id), -1 elsewhere.
    Returns:
        [B] float32; NaN where a question has no gold passage.
    """
    _check_k(k)
    rank, gold = _ranks(scores, fact >= 0, valid)
    n = scores.shape[-1]
    ids = torch.where(gold, fact, torch.full_like(fact, -1))  # [B, n]
    covered = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    for f in ids.unique():
        if f < 0:
            continue
        member = ids == f  # [B, n]
        needed = member.any(-1)
        best = torch.where(member, rank, torch.full_like(rank, n)).min(-1).values
        covered &= ~needed | (best < k)
    return torch.where(gold.any(-1), covered.float(), torch.full(covered.shape, math.nan, device=scores.device))


def nanmean(x: torch.Tensor | list[float]) -> tuple[float, int]:
    """Mean over the non-NaN entries and how many there were; (nan, 0) when there are none."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    kept = x[~torch.isnan(x)]
    if kept.numel() == 0:
        return math.nan, 0
    return kept.mean().item(), kept.numel()


def exact_match(prediction: str, answers: list[str], mode: str = "typographic") -> float:
    """SQuAD exact match: 1.0 when the normalized prediction equals some normalized answer, else 0.0.
    mode: data.normalize_answer's (typographic: typographic variants fold; squad: SQuAD v1.1's figures)."""
    if not answers:
        raise ValueError("exact_match needs at least one answer")
    pred = normalize_answer(prediction, mode)
    return float(any(pred == normalize_answer(a, mode) for a in answers))


def f1_score(prediction: str, answers: list[str], mode: str = "typographic") -> float:
    """SQuAD token F1 (bag of normalized tokens), max over answers; mode as in exact_match.

    When the prediction or an answer normalizes to nothing, F1 is 1.0 if both do, else 0.0 (SQuAD v2 rule).
    """
    if not answers:
        raise ValueError("f1_score needs at least one answer")
    pred_tokens = normalize_answer(prediction, mode).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer, mode).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_tokens), common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
