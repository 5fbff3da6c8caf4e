import math

import pytest
import torch

from gr_train import gumbel as G


def scores(B=8, n=10, seed=0):
    return torch.randn(B, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_mask_range_and_sum(k):
    w = scores()
    M = G.relaxed_topk_mask(w, k, tau=0.5, kappa=1.0, generator=torch.Generator().manual_seed(1))
    assert M.shape == w.shape and M.dtype == torch.float32
    assert (M > 0).all() and (M <= 1).all()
    # Each of the k softmax samples sums to 1; their elementwise max sums to between 1 and k.
    s = M.sum(-1)
    assert (s >= 1 - 1e-5).all() and (s <= k + 1e-5).all()


def test_sum_close_to_k_when_samples_differ():
    """M = max over k samples: the sum reaches k when the samples pick different passages (scores close
    relative to the noise), and stays 1 without noise (all samples equal)."""
    w = torch.zeros(64, 50)
    M = G.relaxed_topk_mask(w, 3, tau=0.05, generator=torch.Generator().manual_seed(0))
    assert M.sum(-1).mean() > 2.8  # ~3 * (1 - collisions among 3 uniform picks out of 50)
    M0 = G.relaxed_topk_mask(torch.randn(64, 50), 3, tau=0.05, noise=False)
    assert torch.allclose(M0.sum(-1), torch.ones(64), atol=1e-4)


def test_tends_to_hard_topk_without_noise():
    w = scores(B=16, n=10)
    M = G.relaxed_topk_mask(w, 1, tau=1e-4, noise=False)
    assert torch.allclose(M, G.hard_topk_mask(w, 1), atol=1e-6)


def test_tends_to_hard_sampled_topk_with_noise():
    """With noise and tau→0 every sample is one-hot: M is 0/1 with between 1 and k ones."""
    w = scores(B=32, n=10)
    M = G.relaxed_topk_mask(w, 3, tau=1e-4, generator=torch.Generator().manual_seed(3))
    assert torch.all((M < 1e-6) | (M > 1 - 1e-6))
    ones = (M > 0.5).sum(-1)
    assert (ones >= 1).all() and (ones <= 3).all()


def test_high_kappa_concentrates_on_top_scores():
    w = scores(B=256, n=10)
    top = G.hard_topk_mask(w, 2)
    M_lo = G.relaxed_topk_mask(w, 2, 0.5, 0.1, generator=torch.Generator().manual_seed(0))
    M_hi = G.relaxed_topk_mask(w, 2, 0.5, 10.0, generator=torch.Generator().manual_seed(0))
    assert (M_hi * top).sum() / M_hi.sum() > (M_lo * top).sum() / M_lo.sum() + 0.3


def test_deterministic_with_generator():
    w = scores()
    a = G.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(7))
    b = G.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(7))
    c = G.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_off_is_single_softmax():
    w = scores()
    M = G.relaxed_topk_mask(w, 4, tau=0.7, kappa=2.0, noise=False)
    assert torch.allclose(M, torch.softmax(2.0 * w / 0.7, -1), atol=1e-6)


def test_gumbel_noise_statistics():
    g = G.sample_gumbel((200_000,), torch.Generator().manual_seed(0))
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772) < 0.02  # Euler–Mascheroni constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.05


def test_padded_candidates_get_zero_and_never_selected():
    w = scores(B=4, n=6)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[:, 4:] = False
    w[:, 4:] = 100.0  # would win without the mask
    M = G.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(0), valid=valid)
    assert (M[:, 4:] == 0).all() and (M[:, :4] > 0).all()
    H = G.hard_topk_mask(w, 2, valid)
    assert (H[:, 4:] == 0).all() and (H.sum(-1) == 2).all()
    logM = G.log_mask(M, 1e-9, valid)
    assert (logM[:, 4:] == G.NEG_BIAS).all()
    assert torch.allclose(logM[:, :4], torch.log(M[:, :4].clamp_min(1e-9)))


def test_gradient_flows_to_scores():
    w = scores().requires_grad_(True)
    M = G.relaxed_topk_mask(w, 2, generator=torch.Generator().manual_seed(0))
    (G.log_mask(M) * torch.randn_like(M)).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_hard_topk_order_and_ties():
    w = torch.tensor([[0.1, 0.5, 0.5, -1.0]])
    assert G.topk_indices(w, 3).tolist() == [[1, 2, 0]]
    assert G.hard_topk_mask(w, 2).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_mask_entropy_bounds():
    n = 8
    assert G.mask_entropy(torch.ones(3, n)).item() == pytest.approx(math.log(n), abs=1e-5)
    onehot = torch.zeros(3, n)
    onehot[:, 2] = 1
    assert G.mask_entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
def test_schedule_endpoints(kind):
    assert G.schedule_value(1.0, 0.1, 0, 100, kind) == pytest.approx(1.0)
    assert G.schedule_value(1.0, 0.1, 100, 100, kind) == pytest.approx(0.1)
    mid = G.schedule_value(1.0, 0.1, 50, 100, kind)
    assert 0.1 < mid < 1.0
    assert G.schedule_value(1.0, None, 50, 100, kind) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        G.schedule_value(1.0, 0.1, 50, 100, "step")
