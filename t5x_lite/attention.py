"""T5 multi-head attention and the masks that feed it.

T5 does not scale scores by 1/sqrt(H) (the scale is folded into the query initialisation).
Scores, bias and softmax are computed in float32 whatever the compute dtype. Masks are
boolean, True where a query may attend to a key, shaped (B, 1, T, S) so they broadcast
over heads:

    mask = combine_masks(key_padding_mask(k_valid), causal_mask(q_pos, k_pos))
    out, _ = attn(x, bias=position_bias, mask=mask)                  # self-attention
    out, _ = attn(y, encoded, mask=key_padding_mask(x_valid))        # cross-attention
    out, cache = attn(x1, bias=b, mask=m, cache=cache, cache_index=i)  # a decoding step

The assemblies take their masks from `self_attention_mask` (padding or packed segments),
`cross_attention_mask` and `causal_inputs` (positions and mask of a causal stack, with or
without a decoding cache).

Products are `jnp.einsum`s on operands cast by Flax's `promote_dtype` (see `layers`). Inside,
heads come before positions, as in Hugging Face's caches.

Shapes: B batch, T query length, S key length, D d_model, N heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite import xla_cpu
from t5x_lite.cache import DecodingCache, KVCache
from t5x_lite.layers import LoRA, normal, param, product

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


def dot_product_attention(
    q: jax.Array,  # (B, N, T, H)
    k: jax.Array,  # (B, N, S, H)
    v: jax.Array,  # (B, N, S, H)
    *,
    bias: jax.Array | None = None,  # (1|B, N, T, S) float32
    mask: jax.Array | None = None,  # (1|B, 1|N, T|1, S) bool
    dropout: nnx.Dropout | None = None,
) -> jax.Array:  # (B, N, T, H)
    """softmax(q k^T + bias, masked) v, without T5's absent 1/sqrt(H) scaling; scores and
    softmax in float32. Heads come before positions (the layout of Hugging Face's caches): a
    decoding step's one query then reads the cached keys and values as stored."""
    scores = jnp.einsum("BNTH,BNSH->BNTS", q, k, preferred_element_type=jnp.float32)
    if bias is not None:
        scores = xla_cpu.bias_add()(scores, bias)
    if mask is not None:
        scores = jnp.where(mask, scores, _MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("BNTS,BNSH->BNTH", weights, v)


def self_attention_mask(valid: jax.Array | None, segment_ids: jax.Array | None):
    """Key-padding or packed-segment mask, or None when every token is real."""
    if segment_ids is not None:
        return segment_mask(segment_ids, segment_ids)
    return None if valid is None else key_padding_mask(valid)


def cross_attention_mask(encoder_valid, segment_ids, decoder_segment_ids):
    if segment_ids is not None and decoder_segment_ids is not None:
        return segment_mask(decoder_segment_ids, segment_ids)
    if segment_ids is not None:
        return key_padding_mask(segment_ids != 0)
    return None if encoder_valid is None else key_padding_mask(encoder_valid)


def causal_inputs(length: int, key_valid, segment_ids, prefix, cache: DecodingCache | None):
    """(query positions, key positions, mask) for a causal stack over `length` new tokens.

    Without a cache: positions 0..T-1, causal (+ prefix-LM) and padding or segment masks. With a
    cache: the new tokens sit at `cache.index` onwards, keys are every cache position, and
    `key_valid` (B, L) masks positions.
    """
    if cache is None:
        positions = jnp.arange(length)
        causal = causal_mask(positions, positions)
        if prefix is not None:  # prefix tokens attend bidirectionally among themselves
            causal = jnp.logical_or(causal, prefix_mask(prefix))
        return (
            positions,
            positions,
            combine_masks(causal, self_attention_mask(key_valid, segment_ids)),
        )
    query_positions = cache.index + jnp.arange(length)
    key_positions = jnp.arange(cache.max_length)
    mask = combine_masks(
        causal_mask(query_positions, key_positions),
        None if key_valid is None else key_padding_mask(key_valid),
    )
    return query_positions, key_positions, mask


class MultiHeadAttention(nnx.Module):
    """Bias-free q/k/v/o projections around `dot_product_attention`, with an optional KV cache.

    Kernels: q, k, v (D, N, H) named (embed, heads, kv); o (N, H, D) named (heads, kv, embed).
    Every call returns `(out, cache)`: the updated self-attention `KVCache` when one was given,
    else None.
    """

    # (B, T, D) -> (B, N, T, H) for q, k, v; (B, N, T, H) -> (B, T, D) for o
    ADAPTABLE = {
        "q": "BTD,DNH->BNTH",
        "k": "BTD,DNH->BNTH",
        "v": "BTD,DNH->BNTH",
        "o": "BNTH,NHD->BTD",
    }

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
        self.q_lora: LoRA | None = nnx.data(None)
        self.k_lora: LoRA | None = nnx.data(None)
        self.v_lora: LoRA | None = nnx.data(None)
        self.o_lora: LoRA | None = nnx.data(None)

    def project_kv(self, x: jax.Array) -> KVCache:
        """(B, S, D) -> its keys and values, each (B, N, S, H) (a cross-attention cache)."""
        return KVCache(product(self, "k", x), product(self, "v", x))

    def __call__(
        self,
        x: jax.Array,  # (B, T, D) queries
        kv_input: jax.Array | None = None,  # (B, S, D); None: self-attention on x
        *,
        bias: jax.Array | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,  # self-attention: this step's k/v go in at cache_index
        cache_index: jax.Array | None = None,
        kv: KVCache | None = None,  # cross-attention keys/values projected already
    ) -> tuple[jax.Array, KVCache | None]:
        q = product(self, "q", x)
        if kv is None:
            kv = self.project_kv(x if kv_input is None else kv_input)
        if cache is not None:  # decoding: attend over everything cached so far
            cache = kv = cache.update(kv.k, kv.v, cache_index)
        h = dot_product_attention(q, kv.k, kv.v, bias=bias, mask=mask, dropout=self.dropout)
        return product(self, "o", h), cache
