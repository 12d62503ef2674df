"""rlhf/trainer.py: KL to the reference is 0 at the first step (full and LoRA policies; the
raw base is not the reference), PPO raises a known reward for an encoder-decoder and a
decoder-only policy, a step on a (2, 2, 2) mesh equals one on one device, a resumed run equals
an uninterrupted one, and bad input stops with the step, the quantity and the kept checkpoint."""

import json

import chex
import jax
import numpy as np
import pytest

from rlhf import ppo
from rlhf import trainer as trainer_lib
from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from t5x_lite import checkpoint, corpus, lora, models, optim
from t5x_lite import config as config_lib

PROMPTS = [r["dialogue"] for r in corpus.splits()["train"][:48]]
SMALL = dict(batch_size=8, minibatch_size=4, epochs=2, prompt_length=16, max_new_tokens=6)


def lower_half(tok):
    """A known reward: the share of the response's tokens in the lower half of the vocabulary."""

    def reward(texts):
        out = []
        for text in texts:
            ids = tok.encode(text, add_eos=False)
            out.append(np.mean([i < 512 for i in ids]) if ids else 0.0)
        return np.asarray(out, np.float32)

    return reward


def make(tok, lm, *, reward=None, mesh=None, lr=1e-2, reference=None, **options):
    return trainer_lib.PPOTrainer(
        trainer_lib.Options(**{**SMALL, **options}),
        lm,
        tok,
        reward or lower_half(tok),
        mesh=mesh if mesh is not None else mesh_lib.make_mesh(devices=jax.devices()[:1]),
        rules=rules_lib.get_rules("fsdp"),
        tx=optim.make_optimizer("adamw", learning_rate=lr)[0],
        reference=reference,
    )


def fine_tuned_lora():
    lm = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    lora.apply(lm, lora.LoraConfig(rank=4))
    for _, _, adapter in lora.adapters(lm).values():  # as if fine-tuned: B is no longer 0
        adapter.b[...] = 0.5 * jax.random.normal(jax.random.key(1), adapter.b.shape)
    return lm


def first_step(trainer):
    state, ref = trainer.init_state()
    rollout = trainer.rollout(state, trainer.encode_prompts(PROMPTS[:8]), step=1)
    return trainer.learn(state, ref, rollout, kl_coef=0.1, step=1)[1]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kl_is_zero_at_the_first_step(tok, method):
    lm = fine_tuned_lora() if method == "lora" else models.build(config_lib.get_preset("t5-tiny"))
    metrics = first_step(make(tok, lm))
    assert abs(metrics["kl"]) < 1e-3
    assert metrics["kl_coef"] == 0.1


def test_the_raw_base_is_not_a_lora_policys_reference(tok):
    """What the usual PEFT recipe does by mistake: KL against the base without the adapter."""
    base = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    metrics = first_step(make(tok, fine_tuned_lora(), reference=base))
    assert metrics["kl"] > 0.1


def test_a_lora_reference_holds_only_the_adapters(tok):
    trainer = make(tok, fine_tuned_lora())
    facts = trainer.memory_facts(*trainer.init_state())
    lora_params, total = lora.count(fine_tuned_lora())
    assert facts["reference_bytes"] == 4 * lora_params
    assert facts["reference_bytes_saved"] == 4 * (total - lora_params)


def _mean_reward(trainer, state, n=4):
    prompts = trainer.encode_prompts(PROMPTS[:32])
    return np.mean([trainer.rollout(state, prompts, step=10**6 + i)["scores"] for i in range(n)])


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_ppo_raises_a_known_reward(tok, tmp_path, preset):
    lm = models.build(config_lib.get_preset(preset), seed=0)
    trainer = make(tok, lm, steps=12, batch_size=16, minibatch_size=8, kl_coef=0.0)
    before = _mean_reward(trainer, trainer.init_state()[0])
    out = trainer_lib.run(
        trainer, PROMPTS, tmp_path, kl=ppo.KLController(0.0), checkpoint_every=100
    )
    after = _mean_reward(trainer, out["state"])
    assert after > before + 0.2, (before, after)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    for key in trainer_lib.METRIC_KEYS:
        assert all(np.isfinite(r[key]) for r in records), key


def test_a_step_on_a_2x2x2_mesh_matches_one_device(tok):
    lm = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    one = make(tok, lm)
    state, ref = one.init_state()
    rollout = one.rollout(state, one.encode_prompts(PROMPTS[:8]), step=1)
    _, expected = one.learn(state, ref, rollout, kl_coef=0.1, step=1)
    mesh = mesh_lib.make_mesh(2, 2, 2)
    sharded = make(tok, lm, mesh=mesh)
    state, ref = sharded.init_state()
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(state))
    _, got = sharded.learn(state, ref, rollout, kl_coef=0.1, step=1)
    for key in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "kl"):
        chex.assert_trees_all_close(got[key], expected[key], rtol=1e-4, atol=1e-6)


def test_resume_continues_as_an_uninterrupted_run(tok, tmp_path):
    """A trainer holds no run state: one serves all three runs (and compiles once)."""
    trainer = make(tok, models.build(config_lib.get_preset("t5-tiny")), steps=3, lr=3e-3)

    def run(workdir, steps):
        kl = ppo.KLController(0.1, target=1.0, horizon=100)
        return trainer_lib.run(trainer, PROMPTS, workdir, kl=kl, checkpoint_every=2, steps=steps)

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3)
    for key in (*trainer_lib.METRIC_KEYS, "loss"):
        chex.assert_trees_all_close(resumed[key], straight[key], rtol=1e-5, atol=1e-7)
    assert resumed["kl_coef"] == pytest.approx(straight["kl_coef"])  # the controller resumed


def test_a_non_finite_reward_stops_and_keeps_the_last_checkpoint(tok, tmp_path):
    calls = {"n": 0}
    honest = lower_half(tok)

    def reward(texts):
        calls["n"] += 1
        out = honest(texts)
        if calls["n"] == 3:
            out[2] = np.nan
        return out

    lm = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    trainer = make(tok, lm, reward=reward, steps=4)
    with pytest.raises(
        trainer_lib.NonFiniteError,
        match=r"PPO step 3: the reward is not finite \(nan\) for rows \[2\].*step 2",
    ):
        trainer_lib.run(trainer, PROMPTS, tmp_path, kl=ppo.KLController(0.1), checkpoint_every=2)
    assert checkpoint.latest_step(tmp_path / "checkpoints") == 2


def test_a_reward_must_return_one_value_per_text(tok):
    trainer = make(tok, models.build(config_lib.get_preset("t5-tiny")), reward=lambda t: [1.0])
    state, _ = trainer.init_state()
    with pytest.raises(
        ValueError, match="step 1: the reward function returned 1 values for 8 texts"
    ):
        trainer.rollout(state, trainer.encode_prompts(PROMPTS[:8]), step=1)


def test_a_batch_that_does_not_divide_into_minibatches_is_refused():
    with pytest.raises(
        ValueError, match=r"ppo.batch_size=10 .* ppo.minibatch_size=4 \(10 % 4 = 2\)"
    ):
        trainer_lib.Options(batch_size=10, minibatch_size=4)
    with pytest.raises(ValueError, match="temperature=0"):
        trainer_lib.Options(temperature=0.0)
