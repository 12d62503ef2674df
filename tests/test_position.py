"""Relative position buckets against HF transformers' T5Attention._relative_position_bucket."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from t5x_lite.position import relative_position_bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 32), (10, 12), (64, 512)])
def test_buckets_match_hf(bidirectional, num_buckets, max_distance):
    rel = np.arange(-3000, 3001)
    expected = T5Attention._relative_position_bucket(
        torch.tensor(rel),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    ).numpy()
    ours = relative_position_bucket(
        jnp.asarray(rel),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    chex.assert_trees_all_equal(np.asarray(ours), expected)
    assert np.asarray(ours).max() < num_buckets


def test_bias_gradient_equals_the_plain_gather_gradient():
    """The custom matmul gradient of the bias lookup equals autodiff through jnp.take."""
    from t5x_lite.position import _lookup

    q, k = jnp.arange(7) + 5, jnp.arange(12)
    buckets = relative_position_bucket(
        k[None] - q[:, None], bidirectional=False, num_buckets=16, max_distance=20
    )
    table = jax.random.normal(jax.random.key(0), (16, 3))
    g = jax.random.normal(jax.random.key(1), (3, 7, 12))
    plain = lambda t: (jnp.transpose(jnp.take(t, buckets, axis=0), (2, 0, 1)) * g).sum()
    ours = lambda t: (_lookup(t, buckets) * g).sum()
    chex.assert_trees_all_close(ours(table), plain(table), atol=1e-5)
    chex.assert_trees_all_close(jax.grad(ours)(table), jax.grad(plain)(table), atol=1e-5)
