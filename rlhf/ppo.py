"""PPO's arithmetic as pure, masked functions over (B, T) response tokens, in float32.

    kl = ppo.kl_penalty(logprobs, ref_logprobs, estimator="k1")        # per token
    rewards = ppo.token_rewards(scores, kl, mask, kl_coef=0.05)         # -beta KL, score at end
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    advantages = ppo.whiten(advantages, mask)
    pg, pg_stats = ppo.policy_loss(new_logprobs, logprobs, advantages, mask, clip=0.2)
    vf, vf_stats = ppo.value_loss(new_values, values, returns, mask, clip=0.2)

`mask` is 1 on response tokens (up to and including EOS) and 0 on padding; every mean is over
the masked tokens of the whole batch, as trl computes them. Notation: π the policy being
trained, π_old the policy that sampled the rollout, π_ref the frozen reference, ρ_t =
π(a_t|s_t) / π_old(a_t|s_t). References: Schulman et al. 2017 (PPO, arXiv:1707.06347),
Schulman et al. 2016 (GAE, arXiv:1506.02438), Ziegler et al. 2019 (KL-penalised rewards and the
adaptive KL controller, arXiv:1909.08593), Schulman 2020 ("Approximating KL divergence": k1, k3).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k3")


def _f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def masked_mean(x, mask, axis=None):
    """Σ x·m / Σ m (over `axis`, default all)."""
    x, mask = _f32(x, mask)
    return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_var(x, mask, *, unbiased: bool = True):
    """The variance of the masked entries; with `unbiased`, times n / (n - 1) (Bessel)."""
    x, mask = _f32(x, mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / jnp.maximum(n - 1.0, 1.0)
    return var


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8):
    """Advantage whitening: (x − μ) / sqrt(σ² + eps) over the masked entries (μ added back when
    not `shift_mean`); masked-out entries are 0."""
    x, mask = _f32(x, mask)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_logprobs(logits, tokens):
    """log π(a_t | s_t): (B, T, V) logits and (B, T) tokens -> (B, T) float32."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits, mask):
    """Mean per-token entropy H_t = −Σ_a π(a|s_t) log π(a|s_t) over the masked tokens."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return masked_mean(-(jnp.exp(logp) * logp).sum(-1), mask)


def kl_penalty(logprobs, ref_logprobs, estimator: str = "k1"):
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled by π, with r = π_ref / π:
    k1 = log π − log π_ref = −log r (unbiased, can be negative);
    k3 = (r − 1) − log r (unbiased, never negative, lower variance when π ≈ π_ref)."""
    logprobs, ref_logprobs = _f32(logprobs, ref_logprobs)
    log_ratio = ref_logprobs - logprobs  # log r
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return jnp.expm1(log_ratio) - log_ratio
    raise ValueError(f"ppo.kl_estimator={estimator!r}; expected one of {KL_ESTIMATORS}")


def token_rewards(scores, kl, mask, *, kl_coef):
    """Ziegler et al.'s per-token reward: r_t = −β·KL_t on every response token, plus the
    sequence's score on its last real token. (B,), (B, T), (B, T) -> (B, T)."""
    scores, kl, mask = _f32(scores, kl, mask)
    last = jnp.maximum(mask.sum(-1).astype(jnp.int32) - 1, 0)
    at_end = jax.nn.one_hot(last, mask.shape[-1], dtype=jnp.float32) * mask
    return (-kl_coef * kl + scores[:, None] * at_end) * mask


def gae(rewards, values, mask, *, gamma: float, lam: float):
    """Generalised advantage estimation, backwards over each response:
    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γ λ A_{t+1},   R_t = A_t + V_t,
    with V and A zero past the last real token. -> (advantages, returns), 0 where masked."""
    rewards, values, mask = _f32(rewards, values, mask)
    rewards, values = rewards * mask, values * mask
    next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = rewards + gamma * next_values - values

    def back(carry, delta):  # padding has δ = 0, so nothing flows back from past the end
        adv = delta + gamma * lam * carry
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros(rewards.shape[0]), deltas.T, reverse=True)
    advantages = adv.T * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, *, clip: float):
    """PPO's clipped surrogate, as a loss to minimise:
    L = −mean_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t),  ρ_t = exp(log π − log π_old).
    -> (L, {"policy_clipfrac": share of tokens where the clipped term binds,
            "approx_kl": mean ½(log ρ)²})."""
    logprobs, old_logprobs, advantages, mask = _f32(logprobs, old_logprobs, advantages, mask)
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    stats = {
        "policy_clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
    }
    return loss, stats


def value_loss(values, old_values, returns, mask, *, clip: float):
    """The clipped value loss: ½ mean_t max((V_t − R_t)², (clip(V_t, V_old ± ε) − R_t)²).
    -> (loss, {"value_clipfrac": share of tokens where the clipped term binds})."""
    values, old_values, returns, mask = _f32(values, old_values, returns, mask)
    clipped_values = jnp.clip(values, old_values - clip, old_values + clip)
    unclipped_err, clipped_err = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_err, clipped_err), mask)
    return loss, {
        "value_clipfrac": masked_mean((clipped_err > unclipped_err).astype(jnp.float32), mask)
    }


@dataclasses.dataclass
class KLController:
    """The KL coefficient β. Fixed when `target` is 0; otherwise Ziegler et al.'s adaptive
    controller: after a batch with mean KL `kl` over `n_steps` steps,
    e = clip(kl / target − 1, −0.2, 0.2),  β ← β (1 + e · n_steps / horizon)."""

    value: float
    target: float = 0.0
    horizon: int = 10000

    def __post_init__(self):
        if self.value < 0:
            raise ValueError(f"ppo.kl_coef={self.value} must be >= 0")
        if self.target < 0 or (self.target > 0 and self.horizon <= 0):
            raise ValueError(
                f"ppo.kl_target={self.target} must be >= 0 and ppo.kl_horizon={self.horizon} "
                "> 0 for the adaptive controller"
            )

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def update(self, kl: float, n_steps: int) -> float:
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)
