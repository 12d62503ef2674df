"""Basic T5 building blocks as Flax NNX modules: RMSNorm, token embedding, MLP, dense head.

Every parameter is created through `param`, which attaches logical axis names
(`vocab, embed, mlp, heads, kv, relpos_buckets, classes`) as `out_sharding` metadata;
`sharding/` maps those names to mesh axes, so sharding is declared here once and nowhere else.
Parameters live in `param_dtype` (float32); computation runs in `dtype` (bfloat16 on
accelerators), with normalisation statistics in float32 as T5 does. Every weight product
goes through `project`, which inside a decoding loop's step (`decoding_step`) uses the layouts
XLA:CPU reads weights fastest in.

Shapes: B batch, T length, D d_model, F d_ff, V vocab.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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


# ----------------------------------------------------------------------------- decoding steps

# Rows up to which `project` uses its decoding-step layouts (one new token per row).
DECODING_STEP_MAX_ROWS = 64
_decoding_step = [False]


@contextlib.contextmanager
def decoding_step() -> Iterator[None]:
    """Trace-time context that `decoding`'s loops enter while tracing one step (one new token
    per row): inside it, on CPU, `project` multiplies few rows by a weight matrix in the layout
    XLA:CPU streams fastest. Outside it, `project` is a plain product. The switch is read while
    tracing and is not part of any jit cache key: enter it only around code traced for a
    program of its own (as the loops' steps are), never around a call that may reuse a trace
    made outside it."""
    outer = _decoding_step[0]
    _decoding_step[0] = True
    try:
        yield
    finally:
        _decoding_step[0] = outer


def step_layouts(rows: int) -> bool:
    """Whether `project` uses its decoding-step layouts for a product of `rows` rows here."""
    return _decoding_step[0] and rows <= DECODING_STEP_MAX_ROWS and jax.default_backend() == "cpu"


def _materialized(w: jax.Array) -> jax.Array:
    """`w` as an array of its own in its logical layout (the barrier keeps XLA from folding a
    transposed view back into the product that reads it). Inside a decoding loop the weights
    are loop-invariant, so XLA computes this once, before the loop."""
    return jax.lax.optimization_barrier(w)


def project(x: jax.Array, kernel: jax.Array, *, vocab_major: bool = False) -> jax.Array:
    """x (..., K) times a weight matrix: kernel (K, N), or (N, K) with `vocab_major` (the tied
    embedding) -> (..., N).

    Inside `decoding_step()` on CPU with at most `DECODING_STEP_MAX_ROWS` rows, the product is
    arranged for how XLA:CPU reads a weight matrix from memory (benchmarks/decode_step_layouts.py
    times generate with and without): one row reads it fastest as a (K, N) matrix on the right
    (a tied embedding is copied to (D, V) for that), several rows as an (N, K) matrix on the
    left of the transposed rows, `(W x^T)^T` (other kernels are copied to (N, K) for that).
    The copies are made once per loop, before it, and cost the memory of those weights.
    """
    w = kernel.T if vocab_major else kernel  # (K, N) view
    rows = math.prod(x.shape[:-1])
    if not step_layouts(rows):
        return jnp.einsum("...k,kn->...n", x, w)
    x2 = x.reshape(rows, x.shape[-1])
    if rows == 1:
        y = x2 @ (_materialized(w) if vocab_major else w)
    else:
        w_left = kernel if vocab_major else _materialized(w.T)  # (N, K)
        y = jax.lax.optimization_barrier(w_left @ jax.lax.optimization_barrier(x2.T)).T
    return y.reshape(*x.shape[:-1], y.shape[-1])


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
        return project(x, self.embedding[...].astype(self.dtype), vocab_major=True)


class Dense(nnx.Module):
    """A bias-free projection (in_dim -> out_dim) with logical axis names; T5 has no biases."""

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

    def __call__(self, x: jax.Array) -> jax.Array:  # (..., in) -> (..., out)
        y = project(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


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
