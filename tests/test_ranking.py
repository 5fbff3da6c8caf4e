"""Ranking metrics (Recall@k, NDCG@k, MRR) and SQuAD EM/F1 against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from gr_train.ranking import exact_match, f1_score, mrr, nanmean, ndcg_at_k, recall_at_k

T, F = True, False


def close(actual: torch.Tensor, expected: list[float]) -> bool:
    """Elementwise equality to 1e-6 with NaN == NaN."""
    return torch.allclose(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-6, equal_nan=True)


def test_distinct_scores():
    # Ranking by score: candidates 1, 2, 3, 0; the relevant ones (1 and 3) sit at 0-based ranks 0 and 2.
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    relevant = torch.tensor([[F, T, F, T]])
    assert close(recall_at_k(scores, relevant, 1), [0.5])
    assert close(recall_at_k(scores, relevant, 2), [0.5])
    assert close(recall_at_k(scores, relevant, 3), [1.0])
    assert close(recall_at_k(scores, relevant, 10), [1.0])  # k > n
    # DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3).
    assert close(ndcg_at_k(scores, relevant, 3), [1.5 / (1 + 1 / math.log2(3))])
    assert close(ndcg_at_k(scores, relevant, 1), [1.0])
    assert close(mrr(scores, relevant), [1.0])


def test_ties_break_towards_lower_index():
    scores = torch.zeros(1, 4)
    relevant = torch.tensor([[F, F, T, F]])
    assert close(recall_at_k(scores, relevant, 2), [0.0])
    assert close(recall_at_k(scores, relevant, 3), [1.0])
    assert close(mrr(scores, relevant), [1 / 3])
    assert close(ndcg_at_k(scores, relevant, 3), [1 / math.log2(4)])
    # A partial tie: 0.7 at indices 1 and 3, index 1 wins; the order is 0, 1, 3, 2.
    scores = torch.tensor([[0.9, 0.7, 0.1, 0.7]])
    assert close(recall_at_k(scores, torch.tensor([[F, F, F, T]]), 2), [0.0])
    assert close(mrr(scores, torch.tensor([[F, F, F, T]])), [1 / 3])


def test_invalid_candidates_rank_last_and_are_never_relevant():
    scores = torch.tensor([[5.0, 1.0, 2.0, 9.0]])
    valid = torch.tensor([[T, T, T, F]])
    relevant = torch.tensor([[F, T, F, F]])
    # Without the mask the padded 9.0 would take rank 0; with it the order is 0, 2, 1, (3).
    assert close(recall_at_k(scores, relevant, 1), [0.0])
    assert close(recall_at_k(scores, relevant, 2, valid), [0.0])
    assert close(recall_at_k(scores, relevant, 3, valid), [1.0])
    assert close(mrr(scores, relevant, valid), [1 / 3])
    assert close(mrr(scores, relevant), [1 / 4])
    # A relevant label on a padded candidate does not count: no relevant passage left.
    only_pad = torch.tensor([[F, F, F, T]])
    assert close(recall_at_k(scores, only_pad, 4, valid), [math.nan])
    assert close(ndcg_at_k(scores, only_pad, 4, valid), [math.nan])
    assert close(mrr(scores, only_pad, valid), [math.nan])
    # A valid candidate scored -inf still ranks before a padded one at a lower index (masking pads to -inf ties them).
    scores = torch.tensor([[0.0, float("-inf")]])
    assert close(recall_at_k(scores, torch.tensor([[F, T]]), 1, torch.tensor([[F, T]])), [1.0])


def test_no_relevant_passage_gives_nan_and_rows_are_independent():
    scores = torch.tensor([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    relevant = torch.tensor([[T, F, F], [F, F, F], [T, T, T]])
    assert close(recall_at_k(scores, relevant, 1), [1.0, math.nan, 1 / 3])
    assert close(mrr(scores, relevant), [1.0, math.nan, 1.0])
    assert close(ndcg_at_k(scores, relevant, 2), [1.0, math.nan, 1.0])
    assert nanmean(recall_at_k(scores, relevant, 1)) == pytest.approx((2 / 3, 2))


def test_ndcg_ideal_is_capped_at_k():
    # 3 relevant, k = 2: ideal DCG counts only 2 of them (1 + 1/log2 3). Ranked at 0 and 2: DCG@2 = 1.
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    relevant = torch.tensor([[T, F, T, T]])
    assert close(ndcg_at_k(scores, relevant, 2), [1.0 / (1 + 1 / math.log2(3))])
    assert close(ndcg_at_k(scores, torch.tensor([[T, T, T, F]]), 2), [1.0])
    # Full ranking of 3 relevant among 4 with k = 4: DCG = 1 + 1/log2(4) + 1/log2(5).
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert close(ndcg_at_k(scores, relevant, 4), [(1 + 1 / math.log2(4) + 1 / math.log2(5)) / ideal])


def test_metric_input_checks():
    scores, relevant = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="k must be >= 1"):
        recall_at_k(scores, relevant, 0)
    with pytest.raises(ValueError, match="one shape"):
        ndcg_at_k(scores, relevant[:, :2], 1)
    with pytest.raises(ValueError, match="NaN"):
        mrr(torch.tensor([[0.0, math.nan]]), torch.tensor([[T, F]]))
    # NaN on a padded candidate is harmless (it never ranks).
    assert close(mrr(torch.tensor([[0.0, math.nan]]), torch.tensor([[T, F]]), torch.tensor([[T, F]])), [1.0])


def test_nanmean():
    assert nanmean(torch.tensor([1.0, math.nan, 0.5])) == (0.75, 2)
    assert nanmean([0.25]) == (0.25, 1)
    mean, count = nanmean(torch.tensor([math.nan, math.nan]))
    assert math.isnan(mean) and count == 0


def test_exact_match_squad():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower", "tower"]) == 0.0
    assert exact_match("tower", ["eiffel tower", "Tower."]) == 1.0  # max over answers
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_f1_squad():
    # pred {big, red, dog}, gold {red, dog, house}: 2 common, P = R = 2/3.
    assert f1_score("the big red dog", ["red dog house"]) == pytest.approx(2 / 3)
    assert f1_score("the big red dog", ["cat", "Big red dog"]) == pytest.approx(1.0)
    # Bag of tokens with counts: x x y vs x y y shares min(2,1) + min(1,2) = 2 tokens of 3.
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert f1_score("paris", ["london"]) == 0.0
    assert f1_score("", ["london"]) == 0.0
    assert f1_score("the", ["a"]) == 1.0  # both normalize to nothing
    # One answer normalizing to nothing must not hide a real match with another.
    assert f1_score("london", ["the", "London"]) == 1.0


def test_fact_coverage_needs_one_copy_of_every_fact():
    from gr_train.ranking import fact_coverage_at_k

    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    fact = torch.tensor([[0, 0, -1, 1, 1],  # two copies of fact 0 first, fact 1 at ranks 3 and 4
                         [0, 1, -1, 0, 1],
                         [-1, -1, -1, -1, -1]])
    assert fact_coverage_at_k(scores, fact, 2)[:2].tolist() == [0.0, 1.0]
    assert fact_coverage_at_k(scores, fact, 4)[:2].tolist() == [1.0, 1.0]
    assert math.isnan(fact_coverage_at_k(scores, fact, 4)[2].item())
    valid = torch.tensor([[True, True, True, False, False]] * 3)  # fact 1 of the first question is padding only
    assert fact_coverage_at_k(scores, fact, 5, valid)[0].item() == 1.0
