"""Relative position buckets against HF transformers' T5Attention._relative_position_bucket."""

import chex
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
