"""Paired bootstrap (stats.py): coverage of a known mean, pairing shrinks the interval, NaN handling."""

import pytest
import torch

from gr_train.stats import paired_bootstrap


def test_interval_covers_the_true_mean_at_about_the_nominal_rate():
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for trial in range(200):
        a = (torch.rand(3, 100, generator=gen) < 0.3).float()  # Bernoulli(0.3) recalls
        r = paired_bootstrap(a, n_boot=400, seed=trial)
        hits += r["lo"] <= 0.3 <= r["hi"]
    assert 0.85 <= hits / 200 <= 0.995


def test_pairing_removes_the_shared_question_difficulty():
    """Two rows that share a large per-question effect and differ by 0.05: the paired interval of the difference
    is far narrower than either row's own interval and excludes 0."""
    gen = torch.Generator().manual_seed(1)
    difficulty = torch.randn(1, 300, generator=gen).expand(3, 300)
    a = difficulty + 0.05 + 0.01 * torch.randn(3, 300, generator=gen)
    b = difficulty + 0.01 * torch.randn(3, 300, generator=gen)
    d = paired_bootstrap(a, b)
    alone = paired_bootstrap(a)
    assert d["mean"] == pytest.approx(0.05, abs=0.005)
    assert d["lo"] > 0 and (d["hi"] - d["lo"]) < 0.1 * (alone["hi"] - alone["lo"])


def test_nan_questions_do_not_count_and_must_match():
    a = torch.tensor([[1.0, float("nan"), 0.0], [1.0, float("nan"), 1.0]])
    r = paired_bootstrap(a, n_boot=200)
    assert r["mean"] == pytest.approx(0.75) and r["n"] == 2
    with pytest.raises(ValueError, match="NaN patterns differ"):
        paired_bootstrap(a, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(a, torch.zeros(3, 3))
