"""Basic T5 building blocks as Flax NNX modules: RMSNorm, token embedding, MLP, dense head.

Every parameter is created through `param`, which attaches logical axis names
(`vocab, embed, mlp, heads, kv, relpos_buckets, classes`) as `out_sharding` metadata;
`sharding/` maps those names to mesh axes, so sharding is declared here once and nowhere else.
Parameters live in `param_dtype` (float32); computation runs in `dtype` (bfloat16 on
accelerators), with normalisation statistics in float32 as T5 does. Every weight product is a
`jnp.einsum` on operands cast by Flax's `promote_dtype`, as `nnx.Linear` does it, so a library
that intercepts those calls (qwix's LoRA and int8 quantization) sees every product.

A module lists the weights a LoRA adapter may attach to in `ADAPTABLE` (weight name -> the
einsum that applies it); `product` runs that einsum and adds the adapter's low-rank update
when `t5x_lite.lora.apply` has put one at `<weight>_lora`.

Shapes: B batch, T length, D d_model, F d_ff, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    names: Sequence[str | None],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter initialised with `init` and annotated with logical axis `names`.

    Eager sharding is off: state is sharded by `jax.jit(..., out_shardings=...)` from these
    names (see `sharding/`), so the same module builds on one CPU or under a mesh.
    """
    if len(shape) != len(names):
        raise ValueError(f"shape {tuple(shape)} and logical names {tuple(names)} differ in rank")
    return nnx.Param(
        init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False
    )


def normal(stddev: float) -> Initializer:
    return jax.nn.initializers.normal(stddev=stddev)


def product(module: nnx.Module, name: str, x: jax.Array) -> jax.Array:
    """`x` times the module's weight `name` by its einsum in `module.ADAPTABLE`, in the compute
    dtype, plus the LoRA update of the adapter at `<name>_lora` if there is one (unmerged)."""
    x, w = dtypes.promote_dtype((x, getattr(module, name)[...]), dtype=module.dtype)
    y = jnp.einsum(module.ADAPTABLE[name], x, w)
    adapter = getattr(module, f"{name}_lora")
    return y if adapter is None or adapter.merged else y + adapter(x)


def input_ndim(spec: str) -> int:
    """How many leading dimensions of the weight in einsum `spec` contract with the input."""
    lhs, rest = spec.split(",")
    rhs = rest.split("->")[0]
    n_in = sum(c in lhs for c in rhs)
    if any(c not in lhs for c in rhs[:n_in]):
        raise ValueError(f"{spec}: the weight's input dimensions must come first")
    return n_in


class LoRA(nnx.Module):
    """The low-rank update of one weight W: `x -> scale * dropout(x) A B` (Hu et al., 2021).

    `spec` is W's einsum (e.g. "BTD,DNH->BNTH"); W's dimensions are its input dimensions (the
    ones x contracts with) then its output dimensions. A has the input dimensions and the rank,
    initialised as PEFT does (Kaiming-uniform, bound 1/sqrt(fan_in)); B the rank and the
    output dimensions, zero, so a new adapter leaves the model's outputs unchanged. A and B
    carry W's logical axis names (None for the rank), so they shard by the same rules. Dropout
    acts in train mode only. `merged`: the update has been added to W (see `lora.merge`).
    """

    def __init__(
        self,
        spec: str,
        weight: nnx.Param,
        *,
        rank: int,
        scale: float,
        dropout_rate: float,
        dtype,
        rngs: nnx.Rngs,
    ):
        lhs, rest = spec.split(",")
        rhs, out = rest.split("->")
        n_in = input_ndim(spec)
        r = next(c for c in "rRzZ" if c not in spec)
        self.spec_a = f"{lhs},{rhs[:n_in]}{r}->" + "".join(c for c in lhs if c not in rhs) + r
        self.spec_b = "".join(c for c in lhs if c not in rhs) + f"{r},{r}{rhs[n_in:]}->{out}"
        shape, names = weight.shape, weight.get_metadata()["out_sharding"]
        bound = math.prod(shape[:n_in]) ** -0.5
        init_a = jax.nn.initializers.uniform(2 * bound)
        self.a = nnx.LoRAParam(
            init_a(rngs.params(), (*shape[:n_in], rank), weight.dtype) - bound,
            out_sharding=(*names[:n_in], None),
            eager_sharding=False,
        )
        self.b = nnx.LoRAParam(
            jnp.zeros((rank, *shape[n_in:]), weight.dtype),
            out_sharding=(None, *names[n_in:]),
            eager_sharding=False,
        )
        self.scale = scale
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.dtype = dtype
        self.merged = False

    def __call__(self, x: jax.Array) -> jax.Array:
        x, a, b = dtypes.promote_dtype(
            (self.dropout(x), self.a[...], self.b[...]), dtype=self.dtype
        )
        return jnp.einsum(self.spec_b, jnp.einsum(self.spec_a, x, a), b) * self.scale

    def delta(self) -> jax.Array:
        """scale * A B in W's shape (float32): what `merge` adds to W."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        rank = a.shape[-1]
        w = a.reshape(-1, rank) @ b.reshape(rank, -1) * self.scale
        return w.reshape(*a.shape[:-1], *b.shape[1:])


class RMSNorm(nnx.Module):
    """T5 LayerNorm: scale * x / sqrt(mean(x**2) + eps); no mean subtraction, no bias."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, jax.nn.initializers.ones, (dim,), ("embed",), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, T, D) -> (B, T, D)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class Embed(nnx.Module):
    """Token embedding table (V, D); `attend` reuses it as a tied output projection."""

    def __init__(self, vocab_size: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        # T5 initialises the shared embedding with unit variance.
        self.embedding = param(
            rngs, normal(1.0), (vocab_size, dim), ("vocab", "embed"), param_dtype
        )
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:  # (B, T) int -> (B, T, D)
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:  # (B, T, D) -> (B, T, V)
        x, table = dtypes.promote_dtype((x, self.embedding[...]), dtype=self.dtype)
        return jnp.einsum("...d,vd->...v", x, table)


class Dense(nnx.Module):
    """A bias-free projection (in_dim -> out_dim) with logical axis names; T5 has no biases."""

    ADAPTABLE = {"kernel": "...k,kn->...n"}

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        names: tuple[str, str],
        *,
        stddev: float,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
        use_bias: bool = False,
    ):
        self.kernel = param(rngs, normal(stddev), (in_dim, out_dim), names, param_dtype)
        self.bias = (
            param(rngs, jax.nn.initializers.zeros, (out_dim,), (names[1],), param_dtype)
            if use_bias
            else None
        )
        self.dtype = dtype
        self.kernel_lora: LoRA | None = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:  # (..., in) -> (..., out)
        y = product(self, "kernel", x)
        if self.bias is None:
            return y
        return y + dtypes.promote_dtype((self.bias[...],), dtype=self.dtype)[0]


class PromptParam(nnx.Param):
    """A soft prompt's embeddings: the variable type prompt tuning trains (`nnx.LoRAParam`'s
    counterpart)."""


class SoftPrompt(nnx.Module):
    """n trainable virtual-token embeddings (n, D) put before the input's embeddings, with
    their positions marked real in the attention mask (Lester et al., 2021)."""

    def __init__(self, table: jax.Array):
        self.embedding = PromptParam(table, out_sharding=(None, "embed"), eager_sharding=False)

    @property
    def num_tokens(self) -> int:
        return self.embedding.shape[0]

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, S, D) -> (B, n + S, D)
        prompt = jnp.broadcast_to(self.embedding[...], (x.shape[0], *self.embedding.shape))
        return jnp.concatenate([prompt.astype(x.dtype), x], axis=1)

    def mask(self, attention_mask: jax.Array | None) -> jax.Array | None:  # (B, S) -> (B, n + S)
        if attention_mask is None:
            return None
        ones = jnp.ones((attention_mask.shape[0], self.num_tokens), attention_mask.dtype)
        return jnp.concatenate([ones, attention_mask], axis=1)


_ACTIVATIONS = {
    "relu": jax.nn.relu,
    # HF maps T5's "gated-gelu" to gelu_new, the tanh approximation.
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


class MLP(nnx.Module):
    """T5 feed-forward: relu (v1.0) `wo(act(wi x))`, or gated `wo(act(wi_0 x) * wi_1 x)` (v1.1)."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        feed_forward_proj: str,
        *,
        dropout_rate: float,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        gated = feed_forward_proj.startswith("gated-")
        self.act = _ACTIVATIONS[feed_forward_proj.removeprefix("gated-")]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if gated:
            self.wi_0 = Dense(d_model, d_ff, ("embed", "mlp"), stddev=d_model**-0.5, **kw)
            self.wi_1 = Dense(d_model, d_ff, ("embed", "mlp"), stddev=d_model**-0.5, **kw)
            self.wi = None
        else:
            self.wi = Dense(d_model, d_ff, ("embed", "mlp"), stddev=d_model**-0.5, **kw)
            self.wi_0 = self.wi_1 = None
        self.wo = Dense(d_ff, d_model, ("mlp", "embed"), stddev=d_ff**-0.5, **kw)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # (B, T, D) -> (B, T, D)
        if self.wi is not None:
            h = self.act(self.wi(x))
        else:
            h = self.act(self.wi_0(x)) * self.wi_1(x)
        return self.wo(self.dropout(h))
