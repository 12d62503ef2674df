"""What a generating model carries from one decoding step to the next, with its shapes.

    cache = model.init_cache(batch, max_length, encoded=encoded)   # a DecodingCache
    logits, cache = model.decode(ids, None, mask, cache=cache)      # writes at cache.index

`KVCache` is one attention layer's keys and values; `DecodingCache` holds every layer's
self-attention `KVCache`, the number of positions filled so far, the mask over the cached
positions, and for an encoder-decoder the cross-attention keys and values projected once from
the encoder's output. Both are pytrees (`flax.struct.dataclass`): they pass through `jit` and
`lax.while_loop` as they are, and `jax.tree.map` reaches every array. `cache_bytes` sizes one
before it is made, and `check_cache_fits` refuses one larger than half the free memory.

Shapes: B batch, L cache length (prompt + new tokens), S encoder length, N heads, H head dim.
"""

from __future__ import annotations

import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
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
    def zeros(
        cls, batch: int, length: int, num_heads: int, head_dim: int, dtype, *, layers: int = 0
    ) -> KVCache:
        """Empty (B, N, S, H) keys and values; (layers, B, N, S, H) for a scanned stack."""
        shape = (layers,) * bool(layers) + (batch, num_heads, length, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)).constrain()

    def constrain(self) -> KVCache:
        """Laid out by the sharding rules under an active mesh (a no-op without one); a scanned
        stack's cache has a leading `layers` axis."""
        axes = ("layers",) * (self.k.ndim - len(self.AXES)) + self.AXES
        return KVCache(rules.constrain(self.k, axes), rules.constrain(self.v, axes))

    def update(self, k: jax.Array, v: jax.Array, index: jax.Array) -> KVCache:
        """This step's keys and values (B, N, T, H) written at positions index..index+T-1."""
        at = (0, 0, index, 0)
        return KVCache(
            jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), at),
            jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), at),
        )

    @property
    def length(self) -> int:
        return self.k.shape[-2]


@struct.dataclass
class DecodingCache:
    """A generating model's state between steps (see the module doc).

    index: () int32, the cache positions filled so far; the next token goes there.
    layers: one self-attention `KVCache` (B, N, L, H) per decoder layer; with
        `model.scan_layers`, one `KVCache` of every layer's, (num_layers, B, N, L, H).
    key_mask: (B, L) 1 where a cache position holds a real token (left-padded prompts leave 0s),
        or None when every position up to `index` is real.
    cross: an encoder-decoder's cross-attention `KVCache` (B, N, S, H) per decoder layer (stacked
        likewise when scanned), or None.
    cross_mask: (B, S) 1 for real encoder tokens, or None.
    """

    index: jax.Array
    layers: list[KVCache] | KVCache
    key_mask: jax.Array | None = None
    cross: list[KVCache] | KVCache | None = None
    cross_mask: jax.Array | None = None

    @property
    def scanned(self) -> bool:
        return isinstance(self.layers, KVCache)

    @property
    def max_length(self) -> int:
        return self.layers.length if self.scanned else self.layers[0].length

    def take_rows(self, rows: jax.Array) -> DecodingCache:
        """The self-attention caches of sequences `rows` (e.g. each beam's parent)."""
        take = (lambda x: x[:, rows]) if self.scanned else (lambda x: x[rows])
        return self.replace(layers=jax.tree.map(take, self.layers))

    def repeat_rows(self, n: int) -> DecodingCache:
        """Every sequence's state repeated n times in place: B rows -> B*n (one per beam)."""
        repeat = lambda axis: lambda x: jnp.repeat(x, n, axis=axis)
        per_layer = repeat(1 if self.scanned else 0)
        return self.replace(
            layers=jax.tree.map(per_layer, self.layers),
            cross=jax.tree.map(per_layer, self.cross),
            key_mask=jax.tree.map(repeat(0), self.key_mask),
            cross_mask=jax.tree.map(repeat(0), self.cross_mask),
        )


# ----------------------------------------------------------------------------- its size


def cache_bytes(cfg, *, rows: int, length: int) -> int:
    """Bytes of a decoding cache: every decoder layer's keys and values for `rows` sequences
    of `length` positions, in the compute dtype."""
    per_position = 2 * cfg.num_heads * cfg.d_kv * np.dtype(cfg.dtype).itemsize
    return cfg.decoder_layers * rows * length * per_position


def free_memory_bytes() -> int | None:
    """Memory free on the first local device (host RAM on CPU); None where unknown."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_cache_fits(model, *, rows: int, prompt_length: int, max_new_tokens: int) -> None:
    """ValueError naming max_new_tokens when the decoding cache would take more than half the
    free memory (the rest is for the weights, the activations and the loop's buffers)."""
    free = free_memory_bytes()
    prompt = prompt_length if model.continues_prompt else 0  # decoder-only caches the prompt
    need = cache_bytes(model.config, rows=rows, length=prompt + max_new_tokens)
    if free is None or need <= free // 2:
        return
    fits = free // 2 // cache_bytes(model.config, rows=rows, length=1) - prompt
    raise ValueError(
        f"max_new_tokens={max_new_tokens} needs a {need / 2**30:.1f} GiB decoding cache "
        f"({rows} sequences x {prompt + max_new_tokens} positions x "
        f"{model.config.decoder_layers} layers), more than half the {free / 2**30:.1f} GiB free "
        f"on {jax.local_devices()[0].platform}; at most about {max(fits, 0):,} new tokens fit"
    )
