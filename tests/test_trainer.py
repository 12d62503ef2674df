"""rlhf/trainer.py: KL to the reference is 0 at the first step (full and LoRA policies; the
raw base is not the reference), PPO raises a known reward for an encoder-decoder and a
decoder-only policy, a step on a (2, 2, 2) mesh equals one on one device, a resumed run equals
an uninterrupted one, and bad input stops with the step, the quantity and the kept checkpoint."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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

REPO = Path(__file__).resolve().parent.parent
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


def first_step_kl(trainer):
    """KL per response at PPO step 0: the rollout's KL to the reference, before any update
    (`learn` puts the same number in its `kl` metric)."""
    state, ref = trainer.init_state()
    rollout = trainer.rollout(state, trainer.encode_prompts(PROMPTS[:8]), step=1)
    return float(trainer.sequence_kl(state, ref, rollout).mean())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kl_is_zero_at_the_first_step(tok, method):
    lm = fine_tuned_lora() if method == "lora" else models.build(config_lib.get_preset("t5-tiny"))
    assert abs(first_step_kl(make(tok, lm))) < 1e-3


def test_the_raw_base_is_not_a_lora_policys_reference(tok):
    """What the usual PEFT recipe does by mistake: KL against the base without the adapter."""
    base = models.build(config_lib.get_preset("t5-tiny"), seed=0)
    assert first_step_kl(make(tok, fine_tuned_lora(), reference=base)) > 0.1


def test_a_lora_reference_holds_only_the_adapters(tok):
    trainer = make(tok, fine_tuned_lora())
    facts = trainer.memory_facts(*trainer.init_state())
    lora_params, total = lora.count(fine_tuned_lora())
    assert facts["reference_bytes"] == 4 * lora_params
    assert facts["reference_bytes_saved"] == 4 * (total - lora_params)


def _mean_reward(trainer, state, n=2):
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
    assert expected["kl"] == pytest.approx(0.0, abs=1e-3)  # step 0, as sequence_kl says
    assert expected["kl_coef"] == 0.1


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


def test_epochs_stop_early_past_the_target_kl(tok):
    lm = models.build(config_lib.get_preset("t5-tiny"))
    trainer = make(tok, lm, target_kl=1e-12, epochs=3)  # any move passes 1.5 x the target
    state, ref = trainer.init_state()
    rollout = trainer.rollout(state, trainer.encode_prompts(PROMPTS[:8]), step=1)
    _, first = trainer.learn(state, ref, rollout, kl_coef=0.1, step=1)
    # Minibatch 1 is on-policy (approx KL 0) and applied; minibatch 2 sees the moved policy.
    assert first["ppo_updates"] == 1 and first["early_stopped"]
    full = make(tok, lm, epochs=3)
    _, metrics = full.learn(*full.init_state(), rollout, kl_coef=0.1, step=1)
    assert metrics["ppo_updates"] == 3 * 2 and not metrics["early_stopped"]


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


_PPO_SCRIPT = """
import sys
import numpy as np
from sharding import multihost
workdir, address, num, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if address:
    multihost.initialize(address, num, pid, timeout=120)
from rlhf import ppo, trainer
from sharding import mesh, rules
from t5x_lite import config, corpus, models, optim, tokenizer
tok = tokenizer.load(corpus.DEFAULT_TOKENIZER_DIR)
prompts = [r["dialogue"] for r in corpus.splits()["train"][:48]]
def reward(texts):  # any deterministic function of the text
    return np.array([(len(t) % 7) / 7 for t in texts], np.float32)
options = trainer.Options(
    steps=2, batch_size=8, minibatch_size=4, epochs=2, prompt_length=16, max_new_tokens=6
)
lm = models.build(config.get_preset("t5-tiny"), seed=0)
tx = optim.make_optimizer("adamw", learning_rate=3e-3)[0]
t = trainer.PPOTrainer(
    options, lm, tok, reward, mesh=mesh.make_mesh(-1), rules=rules.get_rules("fsdp"), tx=tx
)
trainer.run(t, prompts, workdir, kl=ppo.KLController(0.1), checkpoint_every=2)
"""


def _ppo_processes(workdir, processes: int, devices: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}" if processes > 1 else ""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PPO_SCRIPT, str(workdir), address, str(processes), str(i)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_run_ppo_as_one_process(tmp_path):
    """2 processes x 2 CPU devices (gloo) against 1 process x 4: the same global batches, the
    same samples (partitionable RNG), so the same rewards and losses."""
    single = _ppo_processes(tmp_path / "single", 1, 4)
    multi = _ppo_processes(tmp_path / "multi", 2, 2)
    assert [r["step"] for r in multi] == [1, 2]
    assert checkpoint.latest_step(tmp_path / "multi" / "checkpoints") == 2
    for key in ("reward_mean", "kl", "loss", "policy_loss", "value_loss", "entropy"):
        np.testing.assert_allclose(
            [r[key] for r in multi], [r[key] for r in single], rtol=1e-4, atol=1e-6, err_msg=key
        )
