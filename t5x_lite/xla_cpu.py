"""Workarounds for XLA:CPU, each kept because `benchmarks/` shows it pays more than 10% end to end
on CPU; on GPU and TPU the model uses the plain operation. The model picks one through
`for_backend`, at trace time, from the backend the program is compiled for.

- `add_bias`: attention scores (B, N, T, S) + a position bias shared by the batch (1, N, T, S).
  Autodiff's gradient of the broadcast reduces the batch axis, which XLA:CPU does about 50x slower
  than adding contiguous halves; this gradient adds halves. With it, the t5-small train step
  (`benchmarks/train_throughput.py`) runs at 1.0x HF PyTorch rather than 0.9x.
"""

from __future__ import annotations

import operator

import jax


def _sum_leading(x: jax.Array, size: int) -> jax.Array:
    """Sum the leading axis down to `size` (1 or unchanged) by halving."""
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


def for_backend(plain, cpu):
    """`cpu` when tracing for XLA:CPU, else `plain`."""
    return cpu if jax.default_backend() == "cpu" else plain


def bias_add():
    return for_backend(operator.add, add_bias)


@jax.custom_vjp
def take_columns(table: jax.Array, buckets: jax.Array) -> jax.Array:
    """table (K, N), buckets (T, S) int -> (N, T, S): `jnp.take(table.T, buckets, axis=1)`."""
    return jax.numpy.take(table.T, buckets, axis=1)


def _take_fwd(table, buckets):
    return take_columns(table, buckets), (buckets, table.shape[0])


def _take_bwd(res, g):
    # d table[k, n] = sum of g[n, t, s] over the (t, s) in bucket k, as a one-hot product; the
    # gather's own gradient (a transposing scatter-add) is ~10x slower on XLA:CPU.
    buckets, num_buckets = res
    n, t, s = g.shape
    one_hot = jax.nn.one_hot(buckets.reshape(t * s), num_buckets, dtype=g.dtype)  # (T*S, K)
    return jax.numpy.dot(g.reshape(n, t * s), one_hot).T, None


take_columns.defvjp(_take_fwd, _take_bwd)
