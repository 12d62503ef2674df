"""T5's bucketed relative position bias.

Each (query, key) pair gets a bucket from the offset `key - query`: small offsets have a
bucket each, larger ones share log-spaced buckets up to `max_distance`. A learned table
(num_buckets, N) turns buckets into a per-head bias added to the attention scores. One
`RelativePositionBias` is owned by each stack and shared by all of its layers, as in T5.

    bias = RelativePositionBias(32, 8, bidirectional=True, max_distance=128, rngs=rngs)
    scores = scores + bias(jnp.arange(T), jnp.arange(S))    # (1, N, T, S)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite import xla_cpu
from t5x_lite.layers import normal, param


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Bucket index for `relative_position = key_pos - query_pos` (any integer array).

    bidirectional: half the buckets for keys after the query, half for keys before.
    causal: offsets > 0 (the future) fall in bucket 0, which the causal mask hides anyway.
    Within a half, offsets |r| < max_exact = n/2 map to themselves; beyond,
    bucket = max_exact + floor(log(|r| / max_exact) / log(max_distance / max_exact)
    * (n - max_exact)), capped at n - 1.
    """
    relative_position = relative_position.astype(jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Float32 like the reference; the max() only keeps log() finite where is_small wins anyway.
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nnx.Module):
    """Learned per-head bias from bucketed relative positions: (T,), (S,) -> (1, N, T, S)."""

    def __init__(
        self,
        num_buckets: int,
        num_heads: int,
        *,
        bidirectional: bool,
        max_distance: int,
        d_model: int,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.embedding = param(
            rngs,
            normal(d_model**-0.5),
            (num_buckets, num_heads),
            ("relpos_buckets", "heads"),
            param_dtype,
        )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None],  # (T, S)
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        table = self.embedding[...].astype(jnp.float32)  # (K, N)
        take = xla_cpu.for_backend(lambda t, b: jnp.take(t.T, b, axis=1), xla_cpu.take_columns)
        return take(table, buckets)[None]  # (1, N, T, S)
