"""Greedy generation with the KV cache equals a naive loop over the full forward pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import config, decoding, models


def test_greedy_equals_naive_full_forward_loop():
    model = models.build(config.get_preset("t5-tiny"), seed=3)
    model.eval()
    inputs = jax.random.randint(jax.random.key(0), (2, 7), 3, 1000)
    mask = jnp.ones((2, 7), jnp.int32).at[1, 5:].set(0)
    tokens, logprobs = decoding.generate(model, inputs, attention_mask=mask, max_new_tokens=6)
    chex.assert_shape(tokens, (2, 6))

    for b in range(2):
        dec = [0]
        for i in range(6):
            logits = model(inputs[b : b + 1], jnp.array([dec]), mask[b : b + 1])[0, -1]
            choice = int(jnp.argmax(logits))
            assert int(tokens[b, i]) == choice
            chex.assert_trees_all_close(
                float(logprobs[b, i]), float(jax.nn.log_softmax(logits)[choice]), atol=1e-5
            )
            if choice == 1:
                assert (np.asarray(tokens[b, i + 1 :]) == 0).all()
                break
            dec.append(choice)


def test_bad_arguments():
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=2, temperature=-1)
