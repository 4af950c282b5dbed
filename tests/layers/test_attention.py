"""Attention written from the formula, checked against torch's own kernels and modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.layers.attention import (
    MultiHeadAttention, SelfAttention, causal_mask, merge_heads, scaled_dot_product_attention, split_heads,
)

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _qkv(n=2, heads=3, query_len=5, key_len=7, dim=8, value_dim=6):
    return (torch.randn(n, heads, query_len, dim), torch.randn(n, heads, key_len, dim),
            torch.randn(n, heads, key_len, value_dim))


# --- functional ---------------------------------------------------------------------------

def test_sdpa_matches_torch_without_mask():
    q, k, v = _qkv()
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), **TOL)


def test_sdpa_matches_torch_with_custom_scale():
    q, k, v = _qkv()
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, scale=0.3), **TOL)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (2, 3, 5, 7), (1, 1, 1, 7)])
def test_sdpa_matches_torch_with_boolean_mask(mask_shape):
    q, k, v = _qkv()
    mask = torch.rand(mask_shape) > 0.4
    mask[..., 0] = True  # keep at least one key per row: a fully masked row is NaN in both
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)


def test_sdpa_matches_torch_with_additive_mask():
    q, k, v = _qkv()
    mask = torch.randn(5, 7)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)


def test_sdpa_matches_torch_causal():
    q, k, v = _qkv(query_len=6, key_len=6)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)


def test_sdpa_matches_hand_computed_single_query():
    # One query, two keys, d_k = 4: softmax([q·k1, q·k2] / 2) weights the two values.
    q = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    k = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[10.0], [0.0]])
    w1 = torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1.0)  # logits 2/2 = 1 and 0
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), (10.0 * w1).reshape(1, 1))


def test_sdpa_full_dropout_gives_zeros_and_weights_sum_to_one():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    assert torch.count_nonzero(scaled_dot_product_attention(q, k, v, dropout_p=1.0)) == 0


def test_sdpa_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="broadcast"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="same sequence length"):
        scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="not both"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match="bool or floating"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 7, dtype=torch.long))


def test_split_and_merge_heads_are_inverse_and_slice_channels():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 3)  # (2, 3, 5, 4)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])
    torch.testing.assert_close(merge_heads(heads), x)
    with pytest.raises(ValueError, match="divisible"):
        split_heads(x, 5)


def test_causal_mask_is_lower_triangular():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


# --- MultiHeadAttention vs torch.nn.MultiheadAttention ---------------------------------------

def _pair(embed_dim=16, num_heads=4, batch_first=True, bias=True):
    ours = MultiHeadAttention(embed_dim, num_heads, batch_first=batch_first, bias=bias)
    ref = nn.MultiheadAttention(embed_dim, num_heads, batch_first=batch_first, bias=bias)
    ref.load_state_dict(ours.state_dict())  # strict: the names and shapes must be torch's
    return ours.eval(), ref.eval()


def test_mha_state_dict_is_torch_layout():
    ours = MultiHeadAttention(16, 4)
    ref = nn.MultiheadAttention(16, 4)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert list(ours.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_self_attention_matches_torch(batch_first, bias):
    ours, ref = _pair(batch_first=batch_first, bias=bias)
    x = torch.randn(3, 6, 16) if batch_first else torch.randn(6, 3, 16)
    out, _ = ours(x, x, x)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(out, expected, **TOL)


def test_mha_cross_attention_with_weights_matches_torch():
    ours, ref = _pair()
    query, memory = torch.randn(2, 4, 16), torch.randn(2, 9, 16)
    value = torch.randn(2, 9, 16)
    for average in (True, False):
        out, weights = ours(query, memory, value, need_weights=True, average_attn_weights=average)
        expected, expected_weights = ref(query, memory, value, need_weights=True, average_attn_weights=average)
        torch.testing.assert_close(out, expected, **TOL)
        torch.testing.assert_close(weights, expected_weights, **TOL)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mha_masks_match_torch(kind):
    ours, ref = _pair()
    n, query_len, key_len = 2, 5, 7
    query, memory = torch.randn(n, query_len, 16), torch.randn(n, key_len, 16)
    padding = torch.zeros(n, key_len, dtype=torch.bool)
    padding[0, -2:] = True  # the last two keys of sample 0 are padding
    padding[1, -1] = True
    blocked_2d = torch.rand(query_len, key_len) > 0.7
    blocked_2d[:, 0] = False
    blocked_3d = torch.rand(n * 4, query_len, key_len) > 0.7
    blocked_3d[..., 0] = False
    if kind == "float":
        to_float = lambda m: torch.zeros(m.shape).masked_fill(m, float("-inf"))  # noqa: E731
        padding, blocked_2d, blocked_3d = to_float(padding), to_float(blocked_2d), to_float(blocked_3d)
    for attn_mask in (None, blocked_2d, blocked_3d):
        for key_padding_mask in (None, padding):
            out, weights = ours(query, memory, memory, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=True)
            expected, expected_weights = ref(query, memory, memory, attn_mask=attn_mask,
                                             key_padding_mask=key_padding_mask, need_weights=True)
            torch.testing.assert_close(out, expected, **TOL)
            torch.testing.assert_close(weights, expected_weights, **TOL)


def test_mha_padded_keys_get_zero_weight():
    ours, _ = _pair()
    x = torch.randn(1, 4, 16)
    padding = torch.tensor([[False, False, True, True]])
    _, weights = ours(x, x, x, key_padding_mask=padding, need_weights=True)
    assert torch.all(weights[..., 2:] == 0)


def test_mha_causal_matches_torch_with_causal_mask():
    ours, ref = _pair()
    x = torch.randn(2, 6, 16)
    blocked = ~causal_mask(6, 6)  # torch MHA's boolean mask: True = blocked
    out, _ = ours(x, x, x, is_causal=True)
    expected, _ = ref(x, x, x, attn_mask=blocked, is_causal=True, need_weights=False)
    torch.testing.assert_close(out, expected, **TOL)


def test_mha_gradients_match_torch():
    ours, ref = _pair()
    x = torch.randn(2, 5, 16)
    ours(x, x, x)[0].square().sum().backward()
    ref(x, x, x, need_weights=False)[0].square().sum().backward()
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_mha_bad_arguments_raise():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    ours, _ = _pair()
    with pytest.raises(ValueError, match="E=16"):
        ours(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        ours(torch.randn(2, 5, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        ours(torch.randn(2, 5, 16), attn_mask=torch.zeros(4, 5, dtype=torch.bool))


# --- SelfAttention (timm layout) vs torch.nn.MultiheadAttention -----------------------------

def test_fused_self_attention_matches_torch_mha():
    ours = SelfAttention(24, 6).eval()
    assert list(ours.state_dict()) == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    ref = nn.MultiheadAttention(24, 6, batch_first=True).eval()
    ref.load_state_dict({"in_proj_weight": ours.qkv.weight, "in_proj_bias": ours.qkv.bias,
                         "out_proj.weight": ours.proj.weight, "out_proj.bias": ours.proj.bias})
    x = torch.randn(2, 10, 24)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], **TOL)
    allowed = torch.rand(10, 10) > 0.5
    allowed[:, 0] = True
    torch.testing.assert_close(ours(x, attn_mask=allowed),
                               ref(x, x, x, attn_mask=~allowed, need_weights=False)[0], **TOL)
