"""rlhf/policy.py: the teacher-forced pass over sampled responses gives the log-probs that
generation sampled them with (encoder-decoder and decoder-only), the response mask, and the
reference: a copy of only what PPO trains, equal to the policy at the start, and checked
against the policy when given separately."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from rlhf import policy as policy_lib
from rlhf import ppo
from t5x_lite import config as config_lib
from t5x_lite import corpus, decoding, lora, models


def _prompts(tok, continues_prompt, n=6, length=24):
    texts = [r["dialogue"][: 15 + 11 * i] for i, r in enumerate(corpus.splits()["train"][:n])]
    enc = tok.encode_batch(
        texts, max_length=length, padding="max_length", add_eos=not continues_prompt
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if continues_prompt:
        ids, mask = policy_lib.left_pad(ids, mask)
    return {"prompt_ids": ids, "prompt_mask": mask}


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_teacher_forced_logprobs_are_the_sampling_logprobs(tok, preset):
    lm = models.build(config_lib.get_preset(preset), seed=0)
    lm.eval()
    batch = _prompts(tok, lm.continues_prompt)
    tokens, sampled_logprobs = decoding.generate(
        lm,
        batch["prompt_ids"],
        attention_mask=batch["prompt_mask"],
        max_new_tokens=10,
        temperature=1.0,
        rng=jax.random.key(3),
    )
    batch["response"] = np.asarray(tokens)
    batch["response_mask"] = policy_lib.response_mask(batch["response"], tok.eos_id)
    policy = policy_lib.Policy(lm, rngs=nnx.Rngs(0))
    logits, values = policy(batch)
    assert values.shape == batch["response"].shape
    logprobs = ppo.token_logprobs(logits, batch["response"])
    chex.assert_trees_all_close(
        np.asarray(logprobs) * batch["response_mask"], np.asarray(sampled_logprobs), atol=1e-4
    )


def test_response_mask_ends_at_the_first_eos():
    tokens = np.array([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    expected = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    np.testing.assert_array_equal(policy_lib.response_mask(tokens, 1), expected)


def test_left_pad_moves_padding_first():
    ids, mask = policy_lib.left_pad(
        np.array([[4, 5, 0, 0], [4, 5, 6, 7]]), np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    )
    np.testing.assert_array_equal(ids, [[0, 0, 4, 5], [4, 5, 6, 7]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 1, 1, 1]])


def _fine_tuned_lora(seed=0):
    lm = models.build(config_lib.get_preset("t5-tiny"), seed=seed)
    lora.apply(lm, lora.LoraConfig(rank=4))
    for _, _, adapter in lora.adapters(lm).values():  # as if fine-tuned: B is no longer 0
        adapter.b[...] = 0.1 * jax.random.normal(jax.random.key(1), adapter.b.shape)
    lm.eval()
    return lm


def test_a_lora_reference_copies_only_the_adapters():
    lm = _fine_tuned_lora()
    train = policy_lib.trainable(lm)
    ref = policy_lib.reference_state(lm, train)
    ref_bytes = sum(x.nbytes for x in jax.tree.leaves(ref))
    lora_params, total = lora.count(lm)
    assert ref_bytes == 4 * lora_params < 4 * total
    # The reference is the policy as it is now, adapter included ...
    batch = {
        "prompt_ids": np.array([[5, 6, 7, 1]], np.int32),
        "prompt_mask": np.ones((1, 4), np.int32),
        "response": np.array([[8, 9, 1]], np.int32),
    }
    same = policy_lib.forward(policy_lib.with_reference(lm, train, ref), batch)
    chex.assert_trees_all_close(same, policy_lib.forward(lm, batch))
    # ... and keeps it when the policy's adapter moves on.
    for _, _, adapter in lora.adapters(lm).values():
        adapter.b[...] = adapter.b[...] * 3.0
    before = policy_lib.forward(policy_lib.with_reference(lm, train, ref), batch)
    chex.assert_trees_all_close(before, same)
    assert float(np.abs(np.asarray(policy_lib.forward(lm, batch) - same)).max()) > 1e-3


def test_a_reference_of_another_shape_is_refused():
    lm = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    other = models.build(config_lib.get_preset("t5-tiny", d_ff=96), seed=0)
    with pytest.raises(
        ValueError, match=r"ppo.reference parameter .*wi.* has shape \(64, 96\).*\(64, 128\)"
    ):
        policy_lib.check_reference(lm, other)
    decoder = models.build(config_lib.get_preset("decoder-tiny"), seed=0)
    with pytest.raises(ValueError, match="ppo.reference has no parameter"):
        policy_lib.check_reference(lm, decoder)
    policy_lib.check_reference(lm, models.build(config_lib.get_preset("t5-tiny"), seed=1))


def test_a_policy_must_generate():
    with pytest.raises(TypeError, match="EncoderOnly"):
        policy_lib.Policy(models.build(config_lib.get_preset("encoder-tiny")), rngs=nnx.Rngs(0))
