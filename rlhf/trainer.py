"""The PPO loop: rollouts through `decoding.generate`, rewards from decoded text, KL-penalised
per-token rewards, GAE, and minibatch epochs of clipped updates, all under the run's mesh.

    trainer = PPOTrainer(options, lm, tok, reward_fn, mesh=mesh, rules=rules, tx=tx)
    state = trainer.init_state()
    rollout = trainer.rollout(state, prompts, step=1)      # host: generate, decode, reward
    state, metrics = trainer.learn(state, rollout)          # device: KL, GAE, PPO epochs
    ppo_train(config, workdir, reward_fn=..., lm=..., prompts=[...])   # the whole run

One PPO step: sample a response for each of `batch_size` prompts with the current policy (at
`temperature`: every log-prob below is of logits / temperature, as trl computes them; top-k and
top-p truncation, if set, are not in the log-probs);
score the decoded texts with the reward function (any `texts -> (N,)` callable, e.g. a reward
model's `score`); compute log π, log π_ref and the values teacher-forced; per-token rewards
−β·KL_t plus the score at the last token (`ppo.token_rewards`); advantages by GAE, whitened;
then `epochs` passes over shuffled minibatches minimising
policy_loss + vf_coef · value_loss − ent_coef · entropy, stopping the epochs at the first
minibatch whose approx_kl exceeds 1.5 · target_kl (when set; its update is not applied, as in
SB3). The KL controller then updates β.

The RNG of step n is `fold_in(key(seed), n)`, so a resumed run samples exactly what an
uninterrupted one would; the checkpoint holds the policy, value head, optimizer, prompt
iterator and the KL controller.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from rlhf import policy as policy_lib
from rlhf import ppo
from sharding import rules as rules_lib
from t5x_lite import adapters, checkpoint, decoding, loop, models

log = logging.getLogger(__name__)

PPO_STATE = "ppo"  # the checkpoint's JSON item with the KL controller
FACTS = "run_facts.json"
METRIC_KEYS = (
    "reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "policy_clipfrac",
    "value_clipfrac", "approx_kl", "entropy",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Options:
    """The `ppo` config block (see configs/ppo_detox.py for each key's meaning)."""

    steps: int = 40
    batch_size: int = 32
    minibatch_size: int = 16
    epochs: int = 4
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_target: float = 0.0
    kl_horizon: int = 10000
    kl_estimator: str = "k1"
    whiten_advantages: bool = True
    target_kl: float = 0.0
    prompt_length: int = 256
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.batch_size <= 0 or self.minibatch_size <= 0:
            raise ValueError(
                f"ppo.batch_size={self.batch_size} and ppo.minibatch_size="
                f"{self.minibatch_size} must be positive"
            )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"ppo.batch_size={self.batch_size} does not divide into minibatches of "
                f"ppo.minibatch_size={self.minibatch_size} ({self.batch_size} % "
                f"{self.minibatch_size} = {self.batch_size % self.minibatch_size})"
            )
        if self.kl_estimator not in ppo.KL_ESTIMATORS:
            raise ValueError(
                f"ppo.kl_estimator={self.kl_estimator!r}; expected one of {ppo.KL_ESTIMATORS}"
            )
        if self.epochs < 1 or self.steps < 0:
            raise ValueError(f"ppo.epochs={self.epochs} must be >= 1, ppo.steps >= 0")
        decoding.check_flags(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            num_beams=1,
        )
        if self.temperature == 0:
            raise ValueError("ppo.temperature=0 is greedy decoding: PPO needs sampled rollouts")

    @classmethod
    def from_config(cls, block: ml_collections.ConfigDict | dict) -> Options:
        values = dict(block)
        known = {f.name for f in dataclasses.fields(cls)}
        recipe = {"init_from", "reference", "reward", "reward_score", "eval_examples", "eval_seed"}
        unknown = sorted(set(values) - known - recipe)
        if unknown:
            raise ValueError(f"ppo has no key {', '.join(unknown)}; its keys: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if k in known})


class NonFiniteError(FloatingPointError):
    """A reward or advantage that is not finite: the run stops, the last checkpoint kept."""


class PPOTrainer:
    """The policy (with its value head), its reference and the jitted rollout-scoring and
    update steps, laid out on `mesh` by `rules` (see the module doc)."""

    def __init__(
        self,
        options: Options,
        lm: models.Model,
        tok,
        reward_fn: Callable[[Sequence[str]], np.ndarray],
        *,
        mesh: jax.sharding.Mesh,
        rules: dict,
        tx,
        reference: models.Model | None = None,
    ):
        self.options, self.tok, self.reward_fn, self.mesh = options, tok, reward_fn, mesh
        self.lm_config = lm.config
        self.continues_prompt = lm.continues_prompt
        lm.eval()
        self.lm_train = policy_lib.trainable(lm)
        self.wrt = nnx.Any(self.lm_train, policy_lib.ValueParam)
        self.adapters = adapters.spec(lm)

        policy_model = policy_lib.Policy(lm, rngs=nnx.Rngs(options.seed))
        policy_model.eval()  # PPO runs without dropout, as trl does
        optimizer = nnx.Optimizer(policy_model, tx, wrt=self.wrt)
        graphdef, self._initial = nnx.split((policy_model, optimizer))
        abstract = self._initial
        self.graphdef = graphdef
        self.shardings = rules_lib.state_shardings(abstract, mesh, rules)
        self.batch_sharding = rules_lib.batch_sharding(mesh)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        # The reference: the policy's trained part as it is now (sharing the frozen rest), or a
        # separate model of the same architecture.
        if reference is None:
            self.ref_graphdef = None
            ref_abstract = nnx.state(lm, self.lm_train)
            self._ref_source = lambda: policy_lib.reference_state(lm, self.lm_train)
        else:
            policy_lib.check_reference(lm, reference)
            reference.eval()
            self.ref_graphdef, _ = nnx.split(reference)
            ref_abstract = nnx.state(reference)
            self._ref_source = lambda: nnx.state(reference)
        self.ref_shardings = rules_lib.state_shardings(ref_abstract, mesh, rules)

        o = options
        ref_graphdef, lm_train = self.ref_graphdef, self.lm_train

        def score(state, ref_state, batch):
            """(values, log π, per-token KL to the reference) of the sampled responses."""
            policy_model, _ = nnx.merge(graphdef, state)
            logits, values = policy_model(batch)
            logprobs = ppo.token_logprobs(logits / o.temperature, batch["response"])
            if ref_graphdef is None:
                ref_lm = policy_lib.with_reference(policy_model.lm, lm_train, ref_state)
            else:
                ref_lm = nnx.merge(ref_graphdef, ref_state)
            ref_logits = policy_lib.forward(ref_lm, batch) / o.temperature
            ref_logprobs = ppo.token_logprobs(ref_logits, batch["response"])
            mask = batch["response_mask"].astype(jnp.float32)
            kl = ppo.kl_penalty(logprobs, ref_logprobs, o.kl_estimator) * mask
            return values, logprobs, kl

        def prepare(state, ref_state, batch, scores, kl_coef):
            values, logprobs, kl = score(state, ref_state, batch)
            mask = batch["response_mask"].astype(jnp.float32)
            rewards = ppo.token_rewards(scores, kl, mask, kl_coef=kl_coef)
            advantages, returns = ppo.gae(rewards, values, mask, gamma=o.gamma, lam=o.lam)
            if o.whiten_advantages:
                advantages = ppo.whiten(advantages, mask)
            prepared = dict(
                batch,
                old_logprobs=logprobs,
                old_values=values * mask,
                advantages=advantages,
                returns=returns,
            )
            stats = dict(
                kl=kl.sum(-1).mean(),  # per sequence, as trl's objective/kl
                kl_per_token=ppo.masked_mean(kl, mask),
                advantages_finite=jnp.isfinite(advantages).all(),
                value_mean=ppo.masked_mean(values, mask),
            )
            return prepared, stats

        def loss_fn(policy_model, mb):
            logits, values = policy_model(mb)
            logits = logits / o.temperature  # the distribution the rollouts sampled from
            mask = mb["response_mask"].astype(jnp.float32)
            logprobs = ppo.token_logprobs(logits, mb["response"])
            pg, pg_stats = ppo.policy_loss(
                logprobs, mb["old_logprobs"], mb["advantages"], mask, clip=o.clip
            )
            vf, vf_stats = ppo.value_loss(
                values, mb["old_values"], mb["returns"], mask, clip=o.value_clip
            )
            ent = ppo.entropy(logits, mask)
            loss = pg + o.vf_coef * vf - o.ent_coef * ent
            return loss, dict(
                loss=loss, policy_loss=pg, value_loss=vf, entropy=ent, **pg_stats, **vf_stats
            )

        kl_limit = 1.5 * o.target_kl if o.target_kl > 0 else float("inf")

        def update(state, mb):
            """One minibatch step; skipped (state unchanged) when the minibatch's approx KL
            already passes 1.5 x target_kl, which then ends the step's epochs (as SB3 does)."""
            policy_model, optimizer = nnx.merge(graphdef, state)
            diff = nnx.DiffState(0, self.wrt)
            grads, metrics = nnx.grad(loss_fn, argnums=diff, has_aux=True)(policy_model, mb)
            optimizer.update(policy_model, grads)
            stop = metrics["approx_kl"] > kl_limit
            new = nnx.state((policy_model, optimizer))
            return jax.tree.map(lambda n, old: jnp.where(stop, old, n), new, state), metrics

        b = self.batch_sharding
        self._prepare = jax.jit(
            rules_lib.under(mesh, rules, prepare),
            in_shardings=(self.shardings, self.ref_shardings, b, b, replicated),
            out_shardings=(b, replicated),
        )
        self._sequence_kl = jax.jit(
            rules_lib.under(mesh, rules, lambda *args: score(*args)[2].sum(-1)),
            in_shardings=(self.shardings, self.ref_shardings, b),
            out_shardings=replicated,
        )
        self._update = jax.jit(
            rules_lib.under(mesh, rules, update),
            in_shardings=(self.shardings, b),
            out_shardings=(self.shardings, replicated),
            donate_argnums=0,
        )

    # ------------------------------------------------------------------ state

    def init_state(self) -> tuple[nnx.State, nnx.State]:
        """(policy and optimizer state, reference state), laid out on the mesh."""
        # Copies (jit outputs are new buffers): the update donates its input state.
        state = jax.jit(lambda s: s, out_shardings=self.shardings)(self._initial)
        ref = jax.jit(lambda s: s, out_shardings=self.ref_shardings)(self._ref_source())
        return state, ref

    def policy(self, state) -> policy_lib.Policy:
        return nnx.merge(self.graphdef, state)[0]

    def memory_facts(self, state, ref_state) -> dict:
        """Bytes of the LM's parameters and of the reference's own arrays; with a LoRA policy
        the reference shares the frozen base, so `reference_bytes_saved` is the base."""
        lm_bytes = sum(
            x.nbytes for x in jax.tree.leaves(nnx.state(self.policy(state).lm, nnx.Param))
        )
        ref_bytes = sum(x.nbytes for x in jax.tree.leaves(ref_state))
        return dict(
            policy_lm_param_bytes=lm_bytes,
            reference_bytes=ref_bytes,
            reference_bytes_saved=max(lm_bytes - ref_bytes, 0),
        )

    # ------------------------------------------------------------------ rollouts

    def encode_prompts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Prompt texts -> `prompt_ids`, `prompt_mask` (N, prompt_length): cut to fit, with EOS
        for an encoder, without (and left-padded) for a decoder-only model."""
        enc = self.tok.encode_batch(
            list(texts),
            max_length=self.options.prompt_length,
            padding="max_length",
            add_eos=not self.continues_prompt,
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if self.continues_prompt:
            ids, mask = policy_lib.left_pad(ids, mask, self.tok.pad_id)
        return {"prompt_ids": ids, "prompt_mask": mask}

    def rollout(self, state, prompts: dict[str, np.ndarray], *, step: int) -> dict:
        """Sample one response per prompt with the policy of `state`; decode and score it.
        -> the batch (numpy) with `response`, `response_mask`, `scores` and `texts`."""
        o = self.options
        key = jax.random.fold_in(jax.random.key(o.seed), step)
        arrays = self._global(prompts)
        tokens, _ = decoding.sample_arrays(
            self.policy(state).lm,
            arrays["prompt_ids"],
            arrays["prompt_mask"],
            max_new_tokens=o.max_new_tokens,
            temperature=o.temperature,
            top_k=o.top_k,
            top_p=o.top_p,
            eos_id=self.tok.eos_id,
            pad_id=self.tok.pad_id,
            rng=key,
        )
        response = self._local(tokens).astype(np.int32)
        texts = self.tok.decode_batch(response)
        scores = np.asarray(self.reward_fn(texts), np.float32).reshape(-1)
        if scores.shape != (len(texts),):
            raise ValueError(
                f"PPO step {step}: the reward function returned {scores.size} values for "
                f"{len(texts)} texts; it must return one reward per text"
            )
        return dict(
            prompts,
            response=response,
            response_mask=policy_lib.response_mask(response, self.tok.eos_id),
            scores=scores,
            texts=texts,
        )

    def sequence_kl(self, state, ref_state, rollout: dict) -> np.ndarray:
        """(B,) Σ_t KL_t of each sampled response (the `ppo.kl_estimator`) to the reference."""
        keys = ("prompt_ids", "prompt_mask", "response", "response_mask")
        batch = self._global({k: rollout[k] for k in keys})
        return np.asarray(self._sequence_kl(state, ref_state, batch))

    # ------------------------------------------------------------------ updates

    def _global(self, batch: dict) -> dict:
        """This process's rows -> global arrays split over the mesh's batch axes."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def own_rows(self, rows: int) -> np.ndarray:
        """The rows of a global batch of `rows` that this process holds (all of them in one
        process): where `_global` puts its local rows."""
        index = self.batch_sharding.addressable_devices_indices_map((rows,)).values()
        spans = sorted({(s[0].start or 0, rows if s[0].stop is None else s[0].stop) for s in index})
        return np.concatenate([np.arange(a, b) for a, b in spans])

    def _local(self, x) -> np.ndarray:
        """A global array's rows that this process holds, on the host."""
        return self._everywhere(x)[self.own_rows(x.shape[0])]

    @staticmethod
    def _everywhere(x) -> np.ndarray:
        """A global array, whole, on every process's host."""
        if jax.process_count() == 1:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def learn(self, state, ref_state, rollout: dict, *, kl_coef: float, step: int):
        """KL, GAE and the PPO epochs over one rollout batch. -> (state, metrics)."""
        o = self.options
        local_scores = rollout["scores"]
        scores = self._everywhere(self._global({"s": local_scores})["s"])  # every process's
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise NonFiniteError(
                f"PPO step {step}: the reward is not finite ({scores[bad[0]]}) for rows "
                f"{bad[:8].tolist()}"
            )
        arrays = {k: rollout[k] for k in ("prompt_ids", "prompt_mask", "response", "response_mask")}
        prepared, stats = self._prepare(
            state, ref_state, self._global(arrays), self._global({"s": local_scores})["s"], kl_coef
        )
        if not bool(stats["advantages_finite"]):
            raise NonFiniteError(f"PPO step {step}: the advantages are not finite")
        # The whole batch on every host; each minibatch is drawn from it by one permutation
        # (the same in every process), and each process feeds its own rows of it.
        host = {k: self._everywhere(v) for k, v in prepared.items()}
        mine = self.own_rows(o.minibatch_size)
        rows = len(scores)
        sums: dict[str, float] = {}
        seen, updates, early_stopped = 0, 0, False
        order_rng = np.random.default_rng([o.seed, step])
        for _ in range(o.epochs):
            order = order_rng.permutation(rows)
            for start in range(0, rows, o.minibatch_size):
                index = order[start : start + o.minibatch_size][mine]
                state, m = self._update(state, self._global({k: v[index] for k, v in host.items()}))
                seen += 1
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if o.target_kl > 0 and float(m["approx_kl"]) > 1.5 * o.target_kl:
                    early_stopped = True  # this minibatch's update was not applied
                    break
                updates += 1
            if early_stopped:
                break
        metrics = {k: v / seen for k, v in sums.items()}  # over the minibatches computed
        mask = host["response_mask"]
        metrics.update(
            reward_mean=float(scores.mean()),
            reward_std=float(scores.std()),
            kl=float(stats["kl"]),
            kl_per_token=float(stats["kl_per_token"]),
            kl_coef=float(kl_coef),
            value_mean=float(stats["value_mean"]),
            response_length=float(mask.sum(1).mean()),
            ppo_updates=updates,
            early_stopped=early_stopped,
        )
        return state, metrics


# ---------------------------------------------------------------------------- the run


def prompt_iterator(trainer: PPOTrainer, texts: Sequence[str], *, batch_size: int, seed: int):
    """A grain iterator (checkpointable) over shuffled, encoded prompts: of each global batch
    of `batch_size`, the rows this process holds (`PPOTrainer.own_rows`), so the global batch
    is the same for any number of processes."""
    encoded = trainer.encode_prompts(texts)
    mine = trainer.own_rows(batch_size)
    ds = grain.MapDataset.range(len(texts)).shuffle(seed=seed).repeat()
    ds = ds.map(lambda i: {k: v[i] for k, v in encoded.items()})
    ds = ds.batch(batch_size, drop_remainder=True).map(
        lambda batch: {k: v[mine] for k, v in batch.items()}
    )
    return iter(ds.to_iter_dataset())


def run(
    trainer: PPOTrainer,
    prompts: Sequence[str],
    workdir: str | Path,
    *,
    kl: ppo.KLController,
    log_every: int = 1,
    checkpoint_every: int = 10,
    keep: int | None = 3,
    run_config: dict | None = None,
    progress_bar: bool = False,
    steps: int | None = None,
) -> dict:
    """PPO up to step `steps` (default `trainer.options.steps`) in `workdir`, resuming from
    its checkpoints:
    `metrics.jsonl` per step, checkpoints, `run_facts.json`. Returns the last step's metrics,
    `state` and `reference` (the reference state) included."""
    o = trainer.options
    steps = o.steps if steps is None else steps
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if o.minibatch_size % jax.process_count():
        raise ValueError(
            f"ppo.minibatch_size={o.minibatch_size} is not divisible by the number of processes "
            f"({jax.process_count()})"
        )
    state, ref_state = trainer.init_state()
    prompt_iter = prompt_iterator(trainer, prompts, batch_size=o.batch_size, seed=o.seed)
    ckpts = checkpoint.TrainCheckpoints(workdir / "checkpoints", keep=keep, async_save=False)
    start = ckpts.latest_step or 0
    if start:
        state[0], state[1] = ckpts.restore(start, state[0], state[1], prompt_iter)
        saved = checkpoint.load_json_item(ckpts.directory, PPO_STATE, step=start) or {}
        kl = ppo.KLController(**saved.get("kl_controller", kl.state_dict()))
        log.info("resumed PPO from %s at step %d (kl_coef %.4g)", ckpts.directory, start, kl.value)
    # The reference as PPO first started, kept beside the checkpoints for a resumed run.
    ref_state = checkpoint.keep_state(workdir / "reference", ref_state)
    facts = trainer.memory_facts(state, ref_state)
    facts.update(method=trainer.adapters)
    log.info(
        "reference: %d bytes of its own (the policy LM's parameters: %d bytes; shared: %d)",
        facts["reference_bytes"],
        facts["policy_lm_param_bytes"],
        facts["reference_bytes_saved"],
    )
    if jax.process_index() == 0:
        (workdir / FACTS).write_text(json.dumps(facts, indent=2) + "\n")

    def save(step, state):
        ckpts.save(
            step,
            state[0],
            state[1],
            model_config=trainer.lm_config,
            data_iterator=prompt_iter,
            run_config=run_config,
            adapters=None,
            json_items={PPO_STATE: {"kl_controller": kl.state_dict()}},
        )

    counter = {"step": start}

    def step_fn(state):
        counter["step"] += 1
        step = counter["step"]
        rollout = trainer.rollout(state, next(prompt_iter), step=step)
        try:
            state, metrics = trainer.learn(state, ref_state, rollout, kl_coef=kl.value, step=step)
        except NonFiniteError as e:
            raise NonFiniteError(
                f"{e}; stopping. The last good checkpoint (step {ckpts.latest_step}) in "
                f"{ckpts.directory} is kept"
            ) from None
        kl.update(metrics["kl"], o.batch_size)
        return state, metrics

    cadence = loop.Cadence(steps, log_every, checkpoint_every)
    result = loop.run_in(
        workdir,
        ckpts,
        state,
        step_fn,
        start=start,
        cadence=cadence,
        save=save,
        progress_bar=progress_bar,
    )
    return dict(result.metrics, state=result.state, reference=ref_state, kl_coef=kl.value)
