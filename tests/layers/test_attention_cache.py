"""MultiHeadAttention's key/value cache: incremental attention equals torch's full causal attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from canon.layers.attention import MultiHeadAttention

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pair(embed_dim=12, num_heads=3):
    reference = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
    ours = MultiHeadAttention(embed_dim, num_heads)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def test_self_attention_one_position_at_a_time_equals_full_causal_attention():
    ours, reference = _pair()
    x = torch.randn(2, 7, 12)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)  # torch: True = blocked
    expected, _ = reference(x, x, x, attn_mask=causal)
    cache: dict = {}
    steps = [ours(x[:, t:t + 1], x[:, t:t + 1], x[:, t:t + 1], cache=cache, is_causal=True)[0] for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **TOL)
    assert cache["key"].shape == (2, 3, 7, 4) and cache["value"].shape == (2, 3, 7, 4)


def test_cache_with_several_new_positions_is_bottom_right_causal():
    ours, reference = _pair()
    x = torch.randn(2, 6, 12)
    expected, _ = reference(x, x, x, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1))
    cache: dict = {}
    first = ours(x[:, :4], cache=cache, is_causal=True)[0]
    rest = ours(x[:, 4:], cache=cache, is_causal=True)[0]  # 2 queries over 6 keys: query i is position 4 + i
    torch.testing.assert_close(torch.cat([first, rest], dim=1), expected, **TOL)


def test_static_cache_projects_the_memory_once():
    ours, reference = _pair()
    memory, queries = torch.randn(2, 5, 12), torch.randn(2, 3, 12)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    expected, _ = reference(queries, memory, memory, key_padding_mask=padding)
    cache: dict = {}
    first = ours(queries[:, :1], memory, memory, key_padding_mask=padding, cache=cache, static_kv=True)[0]
    stored = cache["key"]
    # Later calls read the projection back: even a different `key` argument is not looked at.
    rest = ours(queries[:, 1:], torch.zeros_like(memory), None, key_padding_mask=padding, cache=cache,
                static_kv=True)[0]
    assert cache["key"] is stored
    torch.testing.assert_close(torch.cat([first, rest], dim=1), expected, **TOL)


def test_masks_must_cover_every_cached_key():
    ours, _ = _pair()
    cache: dict = {}
    ours(torch.randn(2, 3, 12), cache=cache)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(N, S\) = \(2, 4\)"):
        ours(torch.randn(2, 1, 12), cache=cache, key_padding_mask=torch.zeros(2, 1, dtype=torch.bool))
    assert cache["key"].shape[2] == 3  # a rejected call leaves the cache as it was
