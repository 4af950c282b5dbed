"""Scaled dot-product attention and multi-head attention, written from the formula.

Paper: "Attention Is All You Need", Vaswani et al., 2017, arXiv:1706.03762 (section 3.2).

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

Follows the paper:
    - the 1/√d_k scale, the softmax over keys, one projection per head (stored as one
      matrix split into ``num_heads`` slices, as every implementation does);
    - masks are added to the logits before the softmax (−∞ where attention is not allowed),
      which is how the paper's decoder prevents leftward information flow.

Deviates, and why:
    - dropout on the attention probabilities (``dropout``) is not in section 3.2 but is what
      torch, torchvision's ViT and timm do; it is off by default;
    - :class:`MultiHeadAttention` stores its weights under torch's names (``in_proj_weight``,
      ``in_proj_bias``, ``out_proj``) so a ``torch.nn.MultiheadAttention`` state_dict loads 1:1;
      :class:`SelfAttention` stores the same projection under timm's names (``qkv``, ``proj``).
      Both call the one functional :func:`scaled_dot_product_attention`.
    - ``batch_first=True`` is the default (canon is batch-first everywhere; torch defaults to
      False), ``need_weights=False`` is the default (weights cost memory), and ``kdim``/``vdim``,
      ``add_bias_kv`` and ``add_zero_attn`` are not offered.

Mask conventions are those of the torch API each function mirrors, so call sites port unchanged:
    - :func:`scaled_dot_product_attention` (like ``F.scaled_dot_product_attention``): a boolean
      ``attn_mask`` is True where a query MAY attend; a float mask is added to the logits.
    - :class:`MultiHeadAttention` (like ``nn.MultiheadAttention``): a boolean ``attn_mask`` or
      ``key_padding_mask`` is True where attention is NOT allowed (a padded key); float masks
      are added.
A query row whose every key is masked gets a softmax over nothing and comes out NaN, as in torch.

Incremental decoding: :class:`MultiHeadAttention` takes a key/value ``cache`` (a dict it reads and
updates), so a decoder that generates one token at a time projects only the new position's key and
value and attends over the stored ones: step t costs O(t) instead of recomputing all t positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "split_heads", "merge_heads", "causal_mask", "attention_weights", "scaled_dot_product_attention",
    "MultiHeadAttention", "SelfAttention",
]


# --- small pure functions -------------------------------------------------------------------

def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, L, E) -> (N, num_heads, L, E // num_heads): head h takes channels [h·d, (h+1)·d)."""
    n, length, embed_dim = x.shape
    if embed_dim % num_heads:
        raise ValueError(f"embedding size {embed_dim} is not divisible by num_heads={num_heads}")
    return x.reshape(n, length, num_heads, embed_dim // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, num_heads, L, d) -> (N, L, num_heads·d), the inverse of :func:`split_heads`."""
    n, num_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, num_heads * head_dim)


def causal_mask(query_len: int, key_len: int, device=None) -> torch.Tensor:
    """Boolean (L, S) mask, True where query i may attend to key j, i.e. j <= i (top-left aligned)."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril()


def _additive_mask(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean allow-mask (True = attend) as 0 / −∞; a float mask is returned as it is."""
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
            ~attn_mask, float("-inf"))
    if not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    return attn_mask.to(dtype)


def attention_weights(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) over the keys.

    query (..., L, E), key (..., S, E) -> (..., L, S). ``scale`` defaults to 1/√E.
    ``attn_mask`` broadcasts to (..., L, S): bool True = may attend, float = added to the logits.
    """
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must share their last dimension, got query {tuple(query.shape)} "
                         f"and key {tuple(key.shape)}")
    if is_causal and attn_mask is not None:
        raise ValueError("give either attn_mask or is_causal=True, not both (as in torch)")
    query_len, key_len = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = query @ key.transpose(-2, -1) * scale  # (..., L, S)
    if is_causal:
        attn_mask = causal_mask(query_len, key_len, device=query.device)
    if attn_mask is not None:
        try:
            torch.broadcast_shapes(attn_mask.shape, logits.shape)
        except RuntimeError:
            raise ValueError(f"attn_mask must broadcast to the logits' shape {tuple(logits.shape)} "
                             f"(..., L, S), got shape {tuple(attn_mask.shape)}") from None
        logits = logits + _additive_mask(attn_mask, logits.dtype)
    return logits.softmax(dim=-1)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 return_weights: bool = False):
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + mask) V, same contract as ``F.scaled_dot_product_attention``.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev).
    ``dropout_p`` is applied to the attention probabilities whenever it is > 0 (callers pass 0
    in eval mode, as with torch). With ``return_weights=True`` returns ``(output, weights)``
    with weights (..., L, S) after dropout.
    """
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must have the same sequence length, got key {tuple(key.shape)} "
                         f"and value {tuple(value.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    weights = attention_weights(query, key, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    output = weights @ value  # (..., L, Ev)
    return (output, weights) if return_weights else output


# --- modules --------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``torch.nn.MultiheadAttention``'s parameter names and masks.

    ``in_proj_weight`` (3E, E) stacks W^Q, W^K, W^V; ``out_proj`` is W^O. Returns
    ``(output, weights)``: output (N, L, E) (or (L, N, E) with ``batch_first=False``), weights
    (N, L, S) averaged over heads, (N, num_heads, L, S) per head, or None unless ``need_weights``.

    Key/value cache (not in torch's API): pass ``cache``, a dict, to decode incrementally.
        - ``static_kv=False`` (self-attention): ``key``/``value`` hold only the NEW positions; their
          projections are appended to ``cache["key"]``/``cache["value"]`` (N, num_heads, S, d), and the
          queries attend over every stored position. ``is_causal`` then aligns the mask to the
          bottom-right (query i is position S - L + i), so one new query sees all the past.
        - ``static_kv=True`` (cross-attention on a fixed memory): ``key``/``value`` are projected on the
          first call and read back from the cache afterwards.
    Masks then cover all S stored keys. Every cached tensor has the batch on dim 0, so a beam
    search reorders the cache with ``index_select(0, ...)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # torch's initialisation: Xavier-uniform over the stacked projection, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _padding_and_attn_mask(self, attn_mask, key_padding_mask, n, query_len, key_len, dtype):
        """Both torch-convention masks (bool True = blocked) as one additive (N, H, L, S)-broadcastable mask."""
        combined = None
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                expected = (query_len, key_len)
                if tuple(attn_mask.shape) != expected:
                    raise ValueError(f"2-D attn_mask must be (L, S) = {expected}, got {tuple(attn_mask.shape)}")
                mask = attn_mask
            elif attn_mask.dim() == 3:
                expected = (n * self.num_heads, query_len, key_len)
                if tuple(attn_mask.shape) != expected:
                    raise ValueError(f"3-D attn_mask must be (N·num_heads, L, S) = {expected}, "
                                     f"got {tuple(attn_mask.shape)}")
                mask = attn_mask.reshape(n, self.num_heads, query_len, key_len)
            else:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
            combined = _additive_mask(~mask if mask.dtype == torch.bool else mask, dtype)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (n, key_len):
                raise ValueError(f"key_padding_mask must be (N, S) = {(n, key_len)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
            padding = key_padding_mask
            padding = _additive_mask(~padding if padding.dtype == torch.bool else padding, dtype)
            padding = padding[:, None, None, :]  # (N, 1, 1, S)
            combined = padding if combined is None else combined + padding
        return combined

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                *, key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False, cache: dict | None = None, static_kv: bool = False):
        key = query if key is None else key
        value = key if value is None else value
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != self.embed_dim:
                layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
                raise ValueError(f"{name} must be {layout} with E={self.embed_dim}, got {tuple(t.shape)}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, query_len, _ = query.shape

        # Q = X W^Q + b^Q etc., from the stacked (3E, E) matrix.
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = split_heads(F.linear(query, w_q, b_q), self.num_heads)  # (N, H, L, d)
        if cache is not None and static_kv and "key" in cache:
            k, v = cache["key"], cache["value"]                      # the memory, projected once
        else:
            k = split_heads(F.linear(key, w_k, b_k), self.num_heads)    # (N, H, S, d)
            v = split_heads(F.linear(value, w_v, b_v), self.num_heads)  # (N, H, S, d)
            if cache is not None and not static_kv and "key" in cache:  # the past positions, then the new
                k = torch.cat([cache["key"], k], dim=2)
                v = torch.cat([cache["value"], v], dim=2)
        key_len = k.shape[2]

        mask = self._padding_and_attn_mask(attn_mask, key_padding_mask, n, query_len, key_len, q.dtype)
        if cache is not None:  # stored only once the masks are known to fit
            cache["key"], cache["value"] = k, v
        if is_causal:
            if cache is not None:  # bottom-right aligned: the cached keys precede the queries
                allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=q.device).tril(key_len - query_len)
            else:  # top-left aligned, as torch (the same when L = S)
                allowed = causal_mask(query_len, key_len, device=q.device)
            causal = _additive_mask(allowed, q.dtype)
            mask = causal if mask is None else mask + causal
        dropout_p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                    return_weights=True)  # (N, H, L, d)
        out = self.out_proj(merge_heads(out))  # (N, L, E)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(dim=1) if average_attn_weights else weights)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear and an output ``proj`` (timm's names).

    ``qkv.weight`` (3·dim, dim) is laid out exactly like ``MultiHeadAttention.in_proj_weight``.
    x (N, L, dim) -> (N, L, dim). ``attn_mask`` follows ``F.scaled_dot_product_attention``
    (bool True = may attend).
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (N, H, L, d) each
        out = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(merge_heads(out)))  # (N, L, dim)
