import math

import pytest
import torch

from gr_train import gumbel


def scores(B=8, n=10, seed=0):
    return torch.randn(B, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_mask_range_and_sum(k):
    w = scores()
    M = gumbel.relaxed_topk_mask(w, k, tau=0.5, kappa=1.0, generator=torch.Generator().manual_seed(1))
    assert M.shape == w.shape and M.dtype == torch.float32
    assert (M > 0).all() and (M <= 1).all()
    # Each of the k softmax samples sums to 1; their elementwise max sums to between 1 and k.
    s = M.sum(-1)
    assert (s >= 1 - 1e-5).all() and (s <= k + 1e-5).all()


def test_sum_close_to_k_when_samples_differ():
    """M = max over k samples: the sum reaches k when the samples pick different passages (scores close
    relative to the noise), and stays 1 without noise (all samples equal)."""
    w = torch.zeros(64, 50)
    M = gumbel.relaxed_topk_mask(w, 3, tau=0.05, generator=torch.Generator().manual_seed(0))
    assert M.sum(-1).mean() > 2.8  # ~3 * (1 - collisions among 3 uniform picks out of 50)
    M0 = gumbel.relaxed_topk_mask(torch.randn(64, 50), 3, tau=0.05, noise=False)
    assert torch.allclose(M0.sum(-1), torch.ones(64), atol=1e-4)


def test_tends_to_hard_topk_without_noise():
    w = scores(B=16, n=10)
    M = gumbel.relaxed_topk_mask(w, 1, tau=1e-4, noise=False)
    assert torch.allclose(M, gumbel.hard_topk_mask(w, 1), atol=1e-6)


def test_tends_to_hard_sampled_topk_with_noise():
    """With noise and tau→0 every sample is one-hot: M is 0/1 with between 1 and k ones."""
    w = scores(B=32, n=10)
    M = gumbel.relaxed_topk_mask(w, 3, tau=1e-4, generator=torch.Generator().manual_seed(3))
    assert torch.all((M < 1e-6) | (M > 1 - 1e-6))
    ones = (M > 0.5).sum(-1)
    assert (ones >= 1).all() and (ones <= 3).all()


def test_high_kappa_concentrates_on_top_scores():
    w = scores(B=256, n=10)
    top = gumbel.hard_topk_mask(w, 2)
    M_lo = gumbel.relaxed_topk_mask(w, 2, 0.5, 0.1, generator=torch.Generator().manual_seed(0))
    M_hi = gumbel.relaxed_topk_mask(w, 2, 0.5, 10.0, generator=torch.Generator().manual_seed(0))
    assert (M_hi * top).sum() / M_hi.sum() > (M_lo * top).sum() / M_lo.sum() + 0.3


def test_deterministic_with_generator():
    w = scores()
    a = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(7))
    b = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(7))
    c = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_off_is_single_softmax():
    w = scores()
    M = gumbel.relaxed_topk_mask(w, 4, tau=0.7, kappa=2.0, noise=False)
    assert torch.allclose(M, torch.softmax(2.0 * w / 0.7, -1), atol=1e-6)


def test_gumbel_noise_statistics():
    g = gumbel.sample_gumbel((200_000,), torch.Generator().manual_seed(0))
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772) < 0.02  # Euler–Mascheroni constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.05


def test_padded_candidates_get_zero_and_never_selected():
    w = scores(B=4, n=6)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[:, 4:] = False
    w[:, 4:] = 100.0  # would win without the mask
    M = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(0), valid=valid)
    assert (M[:, 4:] == 0).all() and (M[:, :4] > 0).all()
    H = gumbel.hard_topk_mask(w, 2, valid)
    assert (H[:, 4:] == 0).all() and (H.sum(-1) == 2).all()
    logM = gumbel.log_mask(M, 1e-9, valid)
    assert (logM[:, 4:] == gumbel.NEG_BIAS).all()
    assert torch.allclose(logM[:, :4], torch.log(M[:, :4].clamp_min(1e-9)))


def test_gradient_flows_to_scores():
    w = scores().requires_grad_(True)
    M = gumbel.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(0))
    (gumbel.log_mask(M) * torch.randn_like(M)).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_hard_topk_order_and_ties():
    w = torch.tensor([[0.1, 0.5, 0.5, -1.0]])
    assert gumbel.topk_indices(w, 3).tolist() == [[1, 2, 0]]
    assert gumbel.hard_topk_mask(w, 2).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_mask_entropy_bounds():
    n = 8
    assert gumbel.mask_entropy(torch.ones(3, n)).item() == pytest.approx(math.log(n), abs=1e-5)
    onehot = torch.zeros(3, n)
    onehot[:, 2] = 1
    assert gumbel.mask_entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
def test_schedule_endpoints(kind):
    assert gumbel.schedule_value(1.0, 0.1, 0, 100, kind) == pytest.approx(1.0)
    assert gumbel.schedule_value(1.0, 0.1, 100, 100, kind) == pytest.approx(0.1)
    mid = gumbel.schedule_value(1.0, 0.1, 50, 100, kind)
    assert 0.1 < mid < 1.0
    assert gumbel.schedule_value(1.0, None, 50, 100, kind) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        gumbel.schedule_value(1.0, 0.1, 50, 100, "step")


# -- the subset estimators ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau,kappa", [(0.05, 1.0), (0.5, 1.0), (0.5, 10.0), (2.0, 1.0), (1.0, 100.0)])
def test_subset_mask_sums_to_k_and_stays_in_unit_interval(tau, kappa):
    w = scores(B=64, n=10)
    M = gumbel.relaxed_subset_mask(w, 5, tau, kappa, generator=torch.Generator().manual_seed(0))
    assert M.dtype == torch.float32 and ((M >= 0) & (M <= 1)).all()
    assert (M.sum(-1) - 5).abs().max() < 1e-4


def test_subset_mask_with_padding_sums_to_the_valid_count_when_fewer_than_k():
    w = scores(B=3, n=8)
    valid = torch.ones(3, 8, dtype=torch.bool)
    valid[0, 3:] = False  # 3 valid < k: all three kept whole
    valid[1, 6:] = False
    w[:, 6:] = 50.0  # would win without the mask
    M = gumbel.relaxed_subset_mask(w, 4, 0.5, 1.0, generator=torch.Generator().manual_seed(1), valid=valid)
    assert (M[~valid] == 0).all()
    assert M[0, :3].tolist() == [1.0, 1.0, 1.0]
    assert M.sum(-1).tolist() == pytest.approx([3.0, 4.0, 4.0], abs=1e-4)


def test_subset_mask_tends_to_the_hard_gumbel_top_k_of_the_same_noise():
    w = scores(B=32, n=10)
    g = gumbel.sample_gumbel((32, 10), torch.Generator().manual_seed(2))
    M = gumbel.relaxed_subset_mask(w, 3, 1e-3, 2.0, gumbel_noise=g)
    assert torch.allclose(M, gumbel.hard_topk_mask(2.0 * w + g, 3), atol=1e-4)


def test_subset_mask_gradient_matches_finite_differences():
    """The implicit gradient of nu (bisection under no_grad) is exact: compare with central differences in fp64."""
    w = scores(B=2, n=6)
    g = gumbel.sample_gumbel((2, 6), torch.Generator().manual_seed(3))
    v = torch.randn(2, 6, generator=torch.Generator().manual_seed(4))

    def f(x):
        return (gumbel.relaxed_subset_mask(x, 3, 0.7, 1.0, gumbel_noise=g) * v).sum()

    x = w.clone().requires_grad_(True)
    f(x).backward()
    numeric = torch.zeros_like(w)
    for b in range(2):
        for i in range(6):
            e = torch.zeros_like(w)
            e[b, i] = 1e-3
            numeric[b, i] = (f(w + e) - f(w - e)) / 2e-3
    assert torch.allclose(x.grad, numeric, atol=1e-3)
    assert x.grad.abs().max() > 0.05  # a real gradient: the comparison could fail


def test_gumbel_top_k_sample_follows_softmax_of_kappa_w():
    """The top-1 of kappa * w + G is a draw from softmax(kappa * w) (Gumbel-max): the straight-through forward
    samples passages in proportion to the reranker's distribution."""
    w = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).expand(40_000, 4)
    M = gumbel.straight_through_mask(w, 1, 0.5, 2.0, generator=torch.Generator().manual_seed(5))
    freq = M.mean(0)
    assert torch.allclose(freq, torch.softmax(2.0 * w[0], -1), atol=0.01)


def test_straight_through_value_is_the_hard_sample_and_gradient_the_relaxation():
    w = scores(B=16, n=10).requires_grad_(True)
    g = gumbel.sample_gumbel((16, 10), torch.Generator().manual_seed(6))
    M = gumbel.straight_through_mask(w, 4, 0.5, 3.0, gumbel_noise=g)
    assert torch.equal(M.detach(), gumbel.hard_topk_mask(3.0 * w.detach() + g, 4))
    v = torch.randn(16, 10, generator=torch.Generator().manual_seed(7))
    (M * v).sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    (gumbel.relaxed_subset_mask(w2, 4, 0.5, 3.0, gumbel_noise=g) * v).sum().backward()
    assert torch.allclose(w.grad, w2.grad) and w.grad.abs().sum() > 0


def test_smooth_log_mask_gives_excluded_passages_a_gradient_and_clamp_gives_none():
    M = torch.tensor([[1.0, 0.0, 1.0]], requires_grad=True)
    gumbel.log_mask(M, 1e-9, smooth=True).sum().backward()
    assert M.grad[0, 1] == pytest.approx(1e9, rel=1e-3) and M.grad[0, 0] == pytest.approx(1.0, rel=1e-6)
    M.grad = None
    gumbel.log_mask(M, 1e-9).sum().backward()
    assert M.grad[0, 1] == 0.0
    assert gumbel.log_mask(M.detach(), 1e-9, smooth=True)[0, 1] == pytest.approx(math.log(1e-9))


@pytest.mark.parametrize("estimator", list(gumbel.ESTIMATORS))
def test_training_mask_is_deterministic_under_a_generator(estimator):
    w = scores()
    a = gumbel.training_mask(estimator, w, 3, 0.5, 2.0, generator=torch.Generator().manual_seed(7))
    b = gumbel.training_mask(estimator, w, 3, 0.5, 2.0, generator=torch.Generator().manual_seed(7))
    c = gumbel.training_mask(estimator, w, 3, 0.5, 2.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_mask_reads_the_first_of_k_draws_for_subset_estimators():
    w = scores(B=4, n=6)
    noise = gumbel.sample_gumbel((3, 4, 6), torch.Generator().manual_seed(8))
    assert torch.equal(gumbel.training_mask("straight_through", w, 3, 0.5, 1.0, gumbel_noise=noise),
                       gumbel.hard_topk_mask(w + noise[0], 3))
    assert torch.equal(gumbel.training_mask("max_softmax", w, 3, 0.5, 1.0, gumbel_noise=noise),
                       gumbel.relaxed_topk_mask(w, 3, 0.5, 1.0, gumbel_noise=noise))
    with pytest.raises(ValueError, match="unknown estimator 'topk'"):
        gumbel.training_mask("topk", w, 3, 0.5, 1.0)


def test_spread_normalized_scores_have_unit_std_over_valid_candidates_and_no_gradient_through_the_std():
    w = torch.tensor([[1.0, 3.0, 5.0, 100.0], [2.0, 2.0, 2.0, 2.0]], requires_grad=True)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    z = gumbel.spread_normalized(w, valid)
    std = (8.0 / 3.0) ** 0.5  # population std of 1, 3, 5
    assert torch.allclose(z[0, :3], torch.tensor([1.0, 3.0, 5.0]) / std)
    assert torch.isfinite(z[1]).all() and torch.equal(z[1], z[1, :1].expand(4))  # equal scores stay equal
    # scaling every score by c leaves the normalized scores unchanged: kappa means the same at any score scale
    assert torch.allclose(gumbel.spread_normalized(7.0 * w, valid)[0, :3], z[0, :3], atol=1e-6)
    z[0, 0].backward()  # the std is detached: dz_0 / dw_0 = 1 / std, nothing flows to the other candidates
    assert torch.allclose(w.grad[0], torch.tensor([1.0 / std, 0.0, 0.0, 0.0]))
