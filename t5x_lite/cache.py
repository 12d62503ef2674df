"""What a generating model carries from one decoding step to the next, with its shapes.

    cache = model.init_cache(batch, max_length, encoded=encoded)   # a DecodingCache
    logits, cache = model.decode(ids, None, mask, cache=cache)      # writes at cache.index

`KVCache` is one attention layer's keys and values; `DecodingCache` holds every layer's
self-attention `KVCache`, the number of positions filled so far, the mask over the cached
positions, and for an encoder-decoder the cross-attention keys and values projected once from
the encoder's output. Both are pytrees (`flax.struct.dataclass`): they pass through `jit` and
`lax.while_loop` as they are, and `jax.tree.map` reaches every array.

Shapes: B batch, L cache length (prompt + new tokens), S encoder length, N heads, H head dim.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from sharding import rules


@struct.dataclass
class KVCache:
    """One attention layer's keys and values for decoding, each (B, N, S, H).

    A self-attention cache is made by `zeros` with S = the longest sequence it will hold and is
    filled one step at a time by `update`; a cross-attention cache holds the encoder's keys and
    values, projected once (`MultiHeadAttention.project_kv`)."""

    k: jax.Array
    v: jax.Array

    AXES: ClassVar[tuple[str, ...]] = ("batch", "heads", "length", "kv")

    @classmethod
    def zeros(cls, batch: int, length: int, num_heads: int, head_dim: int, dtype) -> KVCache:
        shape = (batch, num_heads, length, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)).constrain()

    def constrain(self) -> KVCache:
        """Laid out by the sharding rules under an active mesh (a no-op without one)."""
        return KVCache(rules.constrain(self.k, self.AXES), rules.constrain(self.v, self.AXES))

    def update(self, k: jax.Array, v: jax.Array, index: jax.Array) -> KVCache:
        """This step's keys and values (B, N, T, H) written at positions index..index+T-1."""
        at = (0, 0, index, 0)
        return KVCache(
            jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), at),
            jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), at),
        )

    @property
    def length(self) -> int:
        return self.k.shape[2]


@struct.dataclass
class DecodingCache:
    """A generating model's state between steps (see the module doc).

    index: () int32, the cache positions filled so far; the next token goes there.
    layers: one self-attention `KVCache` (B, N, L, H) per decoder layer.
    key_mask: (B, L) 1 where a cache position holds a real token (left-padded prompts leave 0s),
        or None when every position up to `index` is real.
    cross: an encoder-decoder's cross-attention `KVCache` (B, N, S, H) per decoder layer, or None.
    cross_mask: (B, S) 1 for real encoder tokens, or None.
    """

    index: jax.Array
    layers: list[KVCache]
    key_mask: jax.Array | None = None
    cross: list[KVCache] | None = None
    cross_mask: jax.Array | None = None

    @property
    def max_length(self) -> int:
        return self.layers[0].length
