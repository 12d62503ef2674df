"""The T5 block and layer stack shared by all three model assemblies.

A `Block` is pre-norm self-attention, optional cross-attention and an MLP, each added to the
residual stream after dropout. A `Stack` embeds nothing: it takes embeddings, computes the
relative position bias once, runs its blocks and applies the final RMSNorm. The encoder is a
bidirectional `Stack`; the decoder a causal one with cross-attention; a decoder-only model a
causal one without.

Shapes: B batch, T query length, S key length, D d_model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sharding import rules
from t5x_lite.attention import KVCache, MultiHeadAttention
from t5x_lite.config import REMAT_POLICIES, ModelConfig
from t5x_lite.layers import MLP, RMSNorm
from t5x_lite.position import RelativePositionBias

ACTIVATION = ("batch", "length", "embed")


class Block(nnx.Module):
    """x += attn(norm(x)); [x += cross_attn(norm(x), encoded)]; x += mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, cross_attention: bool, rngs: nnx.Rngs):
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = dict(eps=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        attn = dict(dropout_rate=cfg.dropout_rate, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.self_attn_norm = RMSNorm(cfg.d_model, **norm)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.d_kv, **attn)
        if cross_attention:
            self.cross_attn_norm = RMSNorm(cfg.d_model, **norm)
            self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.d_kv, **attn)
        else:
            self.cross_attn_norm = self.cross_attn = None
        self.mlp_norm = RMSNorm(cfg.d_model, **norm)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.feed_forward_proj, **attn)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,  # (B, T, D)
        *,
        bias: jax.Array,  # (1, N, T, S)
        mask: jax.Array | None,  # (B|1, 1, T, S)
        encoded: jax.Array | None = None,  # (B, S_enc, D)
        cross_mask: jax.Array | None = None,  # (B, 1, T|1, S_enc)
        cache: KVCache | None = None,
        cache_index: jax.Array | None = None,
        cross_kv: KVCache | None = None,  # this layer's cross-attention keys/values, precomputed
    ) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.self_attn(
            self.self_attn_norm(x), bias=bias, mask=mask, cache=cache, cache_index=cache_index
        )
        x = x + self.dropout(h)
        if self.cross_attn is not None:
            h, _ = self.cross_attn(self.cross_attn_norm(x), encoded, mask=cross_mask, kv=cross_kv)
            x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, cache


def run_block(layer: Block, x, bias, mask, encoded, cross_mask, cache, cache_index, cross_kv):
    """`layer(x, ...)` with every argument positional, as `nnx.remat` needs them."""
    return layer(
        x,
        bias=bias,
        mask=mask,
        encoded=encoded,
        cross_mask=cross_mask,
        cache=cache,
        cache_index=cache_index,
        cross_kv=cross_kv,
    )


class Stack(nnx.Module):
    """Embeddings -> dropout -> blocks (sharing one position bias) -> RMSNorm -> dropout."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_layers: int,
        *,
        causal: bool,
        cross_attention: bool,
        rngs: nnx.Rngs,
    ):
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.relative_bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.num_heads,
            bidirectional=not causal,
            max_distance=cfg.relative_attention_max_distance,
            d_model=cfg.d_model,
            param_dtype=pdtype,
            rngs=rngs,
        )
        self.scanned = cfg.scan_layers
        if cfg.scan_layers:  # one Block whose parameters carry a leading (num_layers,) axis
            self.layers = stacked_blocks(
                cfg, num_layers, cross_attention=cross_attention, rngs=rngs
            )
        else:
            self.layers = nnx.List(
                [Block(cfg, cross_attention=cross_attention, rngs=rngs) for _ in range(num_layers)]
            )
        self.final_norm = RMSNorm(
            cfg.d_model, eps=cfg.layer_norm_epsilon, dtype=dtype, param_dtype=pdtype, rngs=rngs
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
        self.remat = cfg.remat

    def block_fn(self, cached: bool):
        """`run_block`, under `jax.checkpoint` with the configured policy when training
        (decoding, with a cache, runs no backward pass)."""
        if self.remat == "none" or cached:
            return run_block
        name = REMAT_POLICIES[self.remat]
        policy = None if name is None else getattr(jax.checkpoint_policies, name)
        return nnx.remat(run_block, policy=policy, prevent_cse=True)

    def __call__(
        self,
        x: jax.Array,  # (B, T, D) embeddings
        *,
        mask: jax.Array | None,
        query_positions: jax.Array,  # (T,)
        key_positions: jax.Array,  # (S,)
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        cache: list[KVCache] | KVCache | None = None,  # per layer, or stacked when scanned
        cache_index: jax.Array | None = None,
        cross_cache: list[KVCache] | KVCache | None = None,
    ) -> tuple[jax.Array, list[KVCache] | KVCache | None]:
        bias = self.relative_bias(query_positions, key_positions)
        x = self.dropout(x)
        x = rules.constrain(x, ACTIVATION)
        block = self.block_fn(cached=cache is not None)

        def step(x, layer, layer_cache, layer_cross_kv):
            x, layer_cache = block(
                layer, x, bias, mask, encoded, cross_mask, layer_cache, cache_index, layer_cross_kv
            )
            return rules.constrain(x, ACTIVATION), layer_cache  # block boundary

        if self.scanned:  # the caches, like the parameters, carry the leading layer axis
            graphdef, layers = nnx.split(self.layers)

            def scan_step(x, xs):
                layer_state, layer_cache, layer_cross_kv = xs
                layer = nnx.merge(graphdef, layer_state)  # one layer's slice of the stack
                x, layer_cache = step(x, layer, layer_cache, layer_cross_kv)
                return x, (nnx.state(layer), layer_cache)

            x, (layers, new_cache) = jax.lax.scan(scan_step, x, (layers, cache, cross_cache))
            if not self.dropout.deterministic and self.dropout.rate > 0:
                nnx.update(self.layers, layers)  # dropout advanced each layer's rng counter
        else:
            new_cache = []
            for i, layer in enumerate(self.layers):
                x, layer_cache = step(
                    x,
                    layer,
                    None if cache is None else cache[i],
                    None if cross_cache is None else cross_cache[i],
                )
                new_cache.append(layer_cache)
        x = self.dropout(self.final_norm(x))
        return x, (new_cache if cache is not None else None)

    def cross_kv(self, encoded: jax.Array) -> list[KVCache] | KVCache:
        """Every layer's cross-attention keys/values of the (B, S, D) `encoded` input, projected
        once for decoding: a list, or one `KVCache` with a leading layer axis when scanned."""
        if self.scanned:
            project = nnx.vmap(lambda layer: layer.cross_attn.project_kv(encoded).constrain())
            return project(self.layers)
        return [layer.cross_attn.project_kv(encoded).constrain() for layer in self.layers]


def stacked_blocks(cfg: ModelConfig, num_layers: int, *, cross_attention: bool, rngs: nnx.Rngs):
    """`num_layers` Blocks as one, each parameter stacked on a leading axis named `layers`
    (replicated by the sharding rules), each layer with its own init and dropout keys."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs: nnx.Rngs) -> Block:
        return Block(cfg, cross_attention=cross_attention, rngs=rngs)

    return create(rngs)


def stack_layers(tree: dict, scanned: bool) -> dict:
    """A pure parameter dict (`nnx.to_pure_dict`) in the other layout: every `layers` entry
    `{0: block, 1: block, ...}` stacked into one block of (num_layers, ...) arrays
    (`scanned=True`), or split back (`scanned=False`). Other entries are kept as they are."""
    out = {}
    for key, value in tree.items():
        if key == "layers" and scanned and isinstance(value, dict) and 0 in value:
            value = jax.tree.map(lambda *xs: jnp.stack(xs), *(value[i] for i in range(len(value))))
        elif key == "layers" and not scanned and isinstance(value, dict) and 0 not in value:
            n = len(jax.tree.leaves(value)[0])
            value = {i: jax.tree.map(lambda x, i=i: x[i], value) for i in range(n)}
        elif isinstance(value, dict):
            value = stack_layers(value, scanned)
        out[key] = value
    return out
