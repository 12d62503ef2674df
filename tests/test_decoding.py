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


def test_greedy_matches_hugging_face_generate(tmp_path):
    import torch
    from hf_reference import save_random_t5

    from t5x_lite import hf

    ref = save_random_t5(
        tmp_path, vocab_size=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False
    )
    ours = hf.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(2, 64, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    with torch.no_grad():
        expected = ref.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
        ).numpy()[:, 1:]
    tokens, _ = decoding.generate(ours, ids, attention_mask=mask, max_new_tokens=10)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens[:, : expected.shape[1]], expected)
    assert (tokens[:, expected.shape[1] :] == 0).all()


def test_filters_follow_hugging_face_warpers():
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.6)]:
        expected = torch.tensor(logits)
        expected = TemperatureLogitsWarper(temperature)(None, expected)
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1:
            expected = TopPLogitsWarper(top_p)(None, expected)
        ours = decoding.filter_logits(
            jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p
        )
        np.testing.assert_array_equal(np.isinf(np.asarray(ours)), np.isinf(expected.numpy()))
        finite = ~np.isinf(expected.numpy())
        np.testing.assert_allclose(np.asarray(ours)[finite], expected.numpy()[finite], rtol=1e-6)


def test_top_k_one_is_greedy_and_sampling_is_seeded():
    model = models.build(config.get_preset("t5-tiny"), seed=1)
    ids = jax.random.randint(jax.random.key(2), (2, 6), 3, 1000)
    greedy, _ = decoding.generate(model, ids, max_new_tokens=5)
    top1, _ = decoding.generate(
        model, ids, max_new_tokens=5, temperature=0.9, top_k=1, rng=jax.random.key(5)
    )
    chex.assert_trees_all_equal(top1, greedy)
    a, _ = decoding.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=jax.random.key(3))
    b, _ = decoding.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=jax.random.key(3))
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"num_beams": 0}, "num_beams must be >= 1"),
    ],
)
def test_flag_ranges(flags, message):
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match=message):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=2, **flags)


def test_empty_prompt_is_an_error():
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match="non-empty"):
        decoding.generate(model, jnp.ones((1, 0), jnp.int32), max_new_tokens=2)
