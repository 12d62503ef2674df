"""Relative position buckets against HF transformers' T5Attention._relative_position_bucket."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from t5x_lite.position import RelativePositionBias, relative_position_bucket


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


@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("offset", [0, 7])
def test_bias_matches_hf_compute_bias(is_decoder, offset):
    """The learned bias table read at the bucketed (key - query) offsets, against HF's
    `T5Attention.compute_bias` with the same table (decoder: one-directional buckets; offset:
    the positions of a decoding step's queries)."""
    import transformers
    from flax import nnx

    n, k, d, t, s = 3, 8, 16, 4, 11
    ours = RelativePositionBias(
        k,
        n,
        bidirectional=not is_decoder,
        max_distance=20,
        d_model=d,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    cfg = transformers.T5Config(
        d_model=d,
        num_heads=n,
        d_kv=4,
        relative_attention_num_buckets=k,
        relative_attention_max_distance=20,
        is_decoder=is_decoder,
    )
    ref = T5Attention(cfg, has_relative_attention_bias=True)
    with torch.no_grad():
        ref.relative_attention_bias.weight.copy_(torch.tensor(np.asarray(ours.embedding[...])))
        expected = ref.compute_bias(t, s, past_seen_tokens=offset).numpy()
    got = ours(jnp.arange(t) + offset, jnp.arange(s))
    chex.assert_trees_all_close(np.asarray(got), expected, atol=0, rtol=0)
