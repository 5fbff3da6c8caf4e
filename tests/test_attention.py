"""DMA biases (attention.py): shapes, values, gradients, and the hard-mask limit on plain softmax attention."""

import torch

from gr_train import gumbel
from gr_train.attention import answer_bias, causal_bias, cross_attention_bias, fused_bias, passage_key_bias
from gr_train.gumbel import NEG_BIAS


def _token_mask() -> torch.Tensor:
    """B=2, n=3, L=4, right-padded passages of lengths [[4, 2, 1], [3, 4, 2]]."""
    lengths = torch.tensor([[4, 2, 1], [3, 4, 2]])
    return torch.arange(4)[None, None, :] < lengths[..., None]


def test_passage_key_bias_values_and_gradient():
    token_mask = _token_mask()
    log_M = torch.tensor([[-0.1, -2.0, -0.5], [0.0, -3.0, NEG_BIAS]], requires_grad=True)
    bias = passage_key_bias(log_M, token_mask)
    assert bias.shape == (2, 12) and bias.dtype == torch.float32
    expected = log_M.detach()[:, :, None].expand(2, 3, 4).masked_fill(~token_mask, NEG_BIAS).reshape(2, 12)
    assert torch.equal(bias.detach(), expected)
    assert bias[0, 4:6].tolist() == [-2.0, -2.0] and bias[0, 6:8].tolist() == [NEG_BIAS, NEG_BIAS]
    # Each passage's bias is read once per real token; padding contributes no gradient.
    bias.sum().backward()
    assert torch.equal(log_M.grad, token_mask.sum(-1).float())
    assert torch.equal(cross_attention_bias(log_M, token_mask), bias[:, None, None, :])


def test_causal_bias_right_and_left_padding():
    mask = torch.tensor([[True, True, True, False], [False, False, True, True]])
    bias = causal_bias(mask)
    assert bias.shape == (2, 1, 4, 4)
    for b in range(2):
        for t in range(4):
            for j in range(4):
                visible = j <= t and bool(mask[b, j])
                assert bias[b, 0, t, j].item() == (0.0 if visible else NEG_BIAS)


def test_answer_bias_layout():
    key_bias = torch.tensor([[0.0, -1.0, NEG_BIAS], [-2.0, 0.0, 0.0]])
    query_mask = torch.tensor([[True, True], [False, True]])
    bias = answer_bias(key_bias, query_mask)
    assert bias.shape == (2, 1, 2, 5)
    assert torch.equal(bias[:, 0, :, :3], key_bias[:, None, :].expand(2, 2, 3))  # every query row sees the passages
    assert torch.equal(bias[:, :, :, 3:], causal_bias(query_mask))


def test_fused_bias_blocks_and_independence_from_mask():
    token_mask = _token_mask()
    query_mask = torch.tensor([[True, True], [True, False]])
    log_M = torch.tensor([[-0.1, -2.0, -0.5], [0.0, -3.0, -1.0]], requires_grad=True)
    bias = fused_bias(log_M, token_mask, query_mask)[:, 0]
    assert bias.shape == (2, 14, 14)
    within = causal_bias(token_mask.reshape(6, 4)).reshape(2, 3, 4, 4)
    for i in range(3):
        for j in range(3):
            block = bias[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            expected = within[:, i] if i == j else torch.full_like(block, NEG_BIAS)
            assert torch.equal(block, expected)
    assert torch.all(bias[:, :12, 12:] == NEG_BIAS)  # passages never see the query
    assert torch.equal(bias[:, 12:], answer_bias(passage_key_bias(log_M, token_mask), query_mask)[:, 0])
    # Passage rows carry no gradient to the mask: passage states do not depend on M.
    (grad,) = torch.autograd.grad(bias[:, :12].sum(), log_M, allow_unused=True, materialize_grads=True)
    assert torch.equal(grad, torch.zeros_like(log_M))


def _attend(q, k, v, bias):
    return torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v


def test_hard_mask_bias_equals_dropping_passages():
    """Plain softmax attention: the log-mask bias of a hard 0/1 mask equals deleting the dropped passages' keys."""
    g = torch.Generator().manual_seed(0)
    B, n, L, T, d = 2, 4, 3, 5, 8
    token_mask = torch.ones(B, n, L, dtype=torch.bool)
    token_mask[0, 1, 2] = False
    q, k, v = (torch.randn(B, T if x == "q" else n * L, d, generator=g) for x in "qkv")
    M = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    out = _attend(q, k, v, passage_key_bias(gumbel.log_mask(M), token_mask)[:, None, :])
    for b in range(B):
        keep = (M[b].bool()[:, None] & token_mask[b]).reshape(-1)
        dropped = _attend(q[b], k[b, keep], v[b, keep], torch.zeros(1))
        torch.testing.assert_close(out[b], dropped, rtol=0, atol=1e-6)
    # A soft mask is not a hard one: the same test would fail with M = 0.5 on the dropped passages.
    soft = _attend(q, k, v, passage_key_bias(gumbel.log_mask(M.clamp_min(0.5)), token_mask)[:, None, :])
    assert (soft - out).abs().max() > 1e-2


def test_fully_masked_row_stays_finite():
    bias = passage_key_bias(torch.full((1, 2), NEG_BIAS), torch.ones(1, 2, 3, dtype=torch.bool))
    out = _attend(torch.randn(1, 1, 4), torch.randn(1, 6, 4), torch.randn(1, 6, 4), bias[:, None, :])
    assert torch.isfinite(out).all()
