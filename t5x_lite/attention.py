"""T5 multi-head attention and the masks that feed it.

T5 does not scale scores by 1/sqrt(H) (the scale is folded into the query initialisation).
Scores, bias and softmax are computed in float32 whatever the compute dtype. Masks are
boolean, True where a query may attend to a key, shaped (B, 1, T, S) so they broadcast
over heads:

    mask = combine_masks(key_padding_mask(k_valid), causal_mask(q_pos, k_pos))
    out = attn(x, x, bias=position_bias, mask=mask)          # self-attention
    out = attn(y, encoded, mask=key_padding_mask(x_valid))   # cross-attention

Shapes: B batch, T query length, S key length, D d_model, N heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite import layers
from t5x_lite.layers import normal, param

# Large finite negative: a fully masked row stays finite (uniform) instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def key_padding_mask(key_valid: jax.Array) -> jax.Array:
    """(B, S) -> (B, 1, 1, S): the key is a real token.

    As in T5 and HF, only keys are masked: a padded query still produces (ignored) output,
    which keeps every row of the softmax non-empty.
    """
    return key_valid.astype(bool)[:, None, None, :]


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """(T,), (S,) -> (1, 1, T, S): key position <= query position."""
    return (key_positions[None, :] <= query_positions[:, None])[None, None]


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """(B, T), (B, S) -> (B, 1, T, S): same packed segment, and the key is not padding (id 0)."""
    same = query_segments[:, :, None] == key_segments[:, None, :]
    return (same & (key_segments[:, None, :] != 0))[:, None]


def prefix_mask(is_prefix: jax.Array) -> jax.Array:
    """(B, T) -> (B, 1, T, T): prefix-LM, tokens of the prefix see each other bidirectionally."""
    p = is_prefix.astype(bool)
    return (p[:, :, None] & p[:, None, :])[:, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the masks that are not None (broadcasting), or None if all are."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else jnp.logical_and(out, m)
    return out


def _sum_leading(x: jax.Array, size: int) -> jax.Array:
    """Sum the leading axis down to `size` (1 or unchanged) by halving: XLA:CPU reduces a
    leading axis ~50x slower than it adds two contiguous halves."""
    while x.shape[0] > size:
        half = x.shape[0] // 2
        odd = x[2 * half :]
        x = x[:half] + x[half : 2 * half]
        if odd.shape[0]:
            x = x.at[:1].add(odd)
    return x


@jax.custom_vjp
def add_bias(scores: jax.Array, bias: jax.Array) -> jax.Array:
    """scores (B, N, T, S) + bias broadcast over the batch (1|B, N, T, S)."""
    return scores + bias


def _add_bias_fwd(scores, bias):
    return scores + bias, bias.shape[0]


def _add_bias_bwd(bias_batch, g):
    return g, _sum_leading(g, bias_batch)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


# Queries per block: a block's (B, N, 128, S) scores stay in cache through the softmax passes,
# ~25% faster than the whole (B, N, T, S) at T = S = 512 on XLA:CPU.
QUERY_BLOCK = 128


def _rows(x: jax.Array | None, start: int, stop: int) -> jax.Array | None:
    """Query rows [start, stop) of a (.., T|1, S) bias or mask (a broadcast T of 1 stays)."""
    return x if x is None or x.shape[-2] == 1 else x[..., start:stop, :]


def dot_product_attention(
    q: jax.Array,  # (B, T, N, H)
    k: jax.Array,  # (B, S, N, H), or (B, N, H, S) with heads_first
    v: jax.Array,  # (B, S, N, H), or (B, N, S, H) with heads_first
    *,
    bias: jax.Array | None = None,  # (1|B, N, T, S) float32
    mask: jax.Array | None = None,  # (1|B, 1|N, T|1, S) bool
    dropout: nnx.Dropout | None = None,
    heads_first: bool = False,
) -> jax.Array:  # (B, T, N, H)
    """softmax(q k^T + bias, masked) v, without T5's absent 1/sqrt(H) scaling.

    Computed in blocks of `QUERY_BLOCK` queries (each block sees every key, so the result is
    the same). `heads_first` keys/values (the decoding caches' layout: keys already transposed)
    are read as stored: for one query token against a long cache, XLA:CPU would otherwise
    transpose the cache at every step, which costs up to 8x the attention itself.
    """
    length = q.shape[1]
    if length > QUERY_BLOCK:
        blocks = [
            _attend(
                q[:, i : i + QUERY_BLOCK],
                k,
                v,
                _rows(bias, i, i + QUERY_BLOCK),
                _rows(mask, i, i + QUERY_BLOCK),
                dropout,
                heads_first,
            )
            for i in range(0, length, QUERY_BLOCK)
        ]
        return jnp.concatenate(blocks, axis=1)
    return _attend(q, k, v, bias, mask, dropout, heads_first)


def _attend(q, k, v, bias, mask, dropout, heads_first):
    k_axes, v_axes = ("BNHS", "BNSH") if heads_first else ("BSNH", "BSNH")
    scores = jnp.einsum(f"BTNH,{k_axes}->BNTS", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = add_bias(scores, bias)
    if mask is not None:
        scores = jnp.where(mask, scores, _MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum(f"BNTS,{v_axes}->BTNH", weights, v)


class MultiHeadAttention(nnx.Module):
    """Bias-free q/k/v/o projections around `dot_product_attention`, with an optional KV cache.

    Kernels: q, k, v (D, N, H) named (embed, heads, kv); o (N, H, D) named (heads, kv, embed).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_kv: int,
        *,
        dropout_rate: float,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        qkv = ("embed", "heads", "kv")
        shape = (d_model, num_heads, d_kv)
        # HF/Mesh-TF T5 initialisation; the query absorbs the missing 1/sqrt(H).
        self.q = param(rngs, normal((d_model * d_kv) ** -0.5), shape, qkv, param_dtype)
        self.k = param(rngs, normal(d_model**-0.5), shape, qkv, param_dtype)
        self.v = param(rngs, normal(d_model**-0.5), shape, qkv, param_dtype)
        self.o = param(
            rngs,
            normal((num_heads * d_kv) ** -0.5),
            (num_heads, d_kv, d_model),
            ("heads", "kv", "embed"),
            param_dtype,
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.dtype = dtype

    def project_kv(self, x: jax.Array, *, heads_first: bool = False) -> tuple[jax.Array, jax.Array]:
        """(B, S, D) -> keys and values, each (B, S, N, H); with heads_first (the caches'
        layout) keys (B, N, H, S) and values (B, N, S, H)."""
        x = x.astype(self.dtype)
        k = jnp.einsum("BSD,DNH->BSNH", x, self.k[...].astype(self.dtype))
        v = jnp.einsum("BSD,DNH->BSNH", x, self.v[...].astype(self.dtype))
        if heads_first:  # transpose the (small) result, not the kernels, inside decoding loops
            k, v = jnp.transpose(k, (0, 2, 3, 1)), jnp.swapaxes(v, 1, 2)
        return k, v

    def qkv_kernel(self) -> jax.Array:
        """q, k and v stacked as one (D, 3*N*H) kernel (q, k, v order; heads, then kv within
        each), in the compute dtype: a decoding step's single self-attention projection."""
        w = jnp.stack([self.q[...], self.k[...], self.v[...]], axis=1).astype(self.dtype)
        return w.reshape(w.shape[0], -1)

    def __call__(
        self,
        x: jax.Array,  # (B, T, D) queries
        kv_input: jax.Array | None = None,  # (B, S, D); None: self-attention on x
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: dict | None = None,  # k (B, N, H, S_max), v (B, N, S_max, H); see _append
        cache_index: jax.Array | None = None,
        kv: dict | None = None,  # {"k", "v"} projected already (cross-attention), as the cache
    ) -> jax.Array | tuple[jax.Array, dict]:
        x = x.astype(self.dtype)
        decoding = cache is not None or kv is not None  # caches are laid out heads first
        b, t, _ = x.shape
        n, hd = self.q.shape[1:]
        step = decoding and layers.step_layouts(b * t)  # one decoding step, on CPU
        if step and kv is None and kv_input is None:
            # One product for q, k and v: the three kernels stacked (once, before the loop).
            qkv = layers.project(x, self.qkv_kernel()).reshape(b, t, 3, n, hd)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            k, v = jnp.transpose(k, (0, 2, 3, 1)), jnp.swapaxes(v, 1, 2)  # heads first
        else:
            if step:
                q = layers.project(x, self.q[...].astype(self.dtype).reshape(-1, n * hd))
                q = q.reshape(b, t, n, hd)
            else:
                q = jnp.einsum("BTD,DNH->BTNH", x, self.q[...].astype(self.dtype))
            if kv is not None:
                k, v = kv["k"], kv["v"]
            else:
                k, v = self.project_kv(x if kv_input is None else kv_input, heads_first=decoding)
        if cache is not None:
            # Decoding: append this step's keys/values at cache_index, attend over the cache.
            cache = _append(cache, k, v, cache_index)
            k, v = (c[None] if c.ndim == 3 else c for c in (cache["k"], cache["v"]))
        h = dot_product_attention(
            q,
            k.astype(self.dtype),
            v.astype(self.dtype),
            bias=bias,
            mask=mask,
            dropout=self.dropout,
            heads_first=decoding,
        )
        if decoding:  # a plain (B*T, N*H) x (N*H, D) matmul: the kernel is read as stored
            o = self.o[...].astype(self.dtype).reshape(n * hd, -1)
            out = layers.project(h.reshape(b, t, n * hd), o)
        else:
            out = jnp.einsum("BTNH,NHD->BTD", h, self.o[...].astype(self.dtype))
        return out if cache is None else (out, cache)


def _append(cache: dict, k: jax.Array, v: jax.Array, index: jax.Array) -> dict:
    """The cache with this step's keys (B, N, H, T) and values (B, N, T, H) written at slot
    `index`. A batch of one may be cached without its batch axis, k (N, H, S) and v (N, S, H):
    `decoding` carries it so through its loop, because XLA:CPU would otherwise make the update
    twice, each on its own copy of the cache, when the batch axis of 1 is dropped for the
    attention products."""
    if cache["k"].ndim == 3:
        if k.shape[0] != 1:
            raise ValueError(f"a cache without a batch axis holds one row, got {k.shape[0]} rows")
        k, v, at_k, at_v = k[0], v[0], (0, 0, index), (0, index, 0)
    else:
        at_k, at_v = (0, 0, 0, index), (0, 0, index, 0)
    return {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at_k),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at_v),
    }
