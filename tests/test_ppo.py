"""rlhf/ppo.py against references written independently of it: GAE as the textbook loop over
each response (Schulman et al. 2016, eq. 16), whitening with numpy, the clipped objectives at
and beyond the clip bounds (PPO paper, eq. 7 and fig. 1), the KL estimators against the exact
KL of known categorical distributions, and the adaptive controller's update (Ziegler et al.
2019, eq. 2) in plain Python."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf import ppo


def _batch(seed, b=4, t=7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    values = rng.normal(size=(b, t)).astype(np.float32)
    return rewards, values, mask, lengths


def _naive_gae(rewards, values, lengths, gamma, lam):
    """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t, V_{T} = 0, per row."""
    adv = np.zeros_like(rewards)
    for i, n in enumerate(lengths):
        v = list(values[i, :n]) + [0.0]
        deltas = [rewards[i, t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[i, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (0.9, 0.0), (1.0, 1.0)])
def test_gae_equals_the_naive_loop(gamma, lam):
    rewards, values, mask, lengths = _batch(0)
    advantages, returns = ppo.gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = _naive_gae(rewards, values, lengths, gamma, lam)
    chex.assert_trees_all_close(np.asarray(advantages), expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        np.asarray(returns), (expected + values) * mask, rtol=1e-5, atol=1e-5
    )


def test_gae_ignores_whatever_lies_in_padding():
    rewards, values, mask, _ = _batch(1)
    noisy_r = np.where(mask > 0, rewards, 1e3)
    noisy_v = np.where(mask > 0, values, -1e3)
    a = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    b = ppo.gae(noisy_r, noisy_v, mask, gamma=1.0, lam=0.95)
    chex.assert_trees_all_close(a, b)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_whitening_matches_numpy(seed, shift_mean):
    rewards, _, mask, _ = _batch(seed, b=3, t=6)
    x = rewards * 3.0 + 1.5
    got = np.asarray(ppo.whiten(x, mask, shift_mean=shift_mean))
    real = x[mask > 0]
    mean, var = real.mean(), real.var(ddof=1) if real.size > 1 else 0.0
    expected = (x - mean) / np.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)
    chex.assert_trees_all_close(got, expected * mask, rtol=1e-4, atol=1e-4)


def test_token_rewards_put_the_score_on_the_last_real_token():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    kl = np.full((2, 4), 0.5, np.float32)
    out = np.asarray(ppo.token_rewards(np.array([2.0, -1.0]), kl, mask, kl_coef=0.1))
    expected = np.array([[-0.05, -0.05, 1.95, 0.0], [-1.05, 0.0, 0.0, 0.0]], np.float32)
    chex.assert_trees_all_close(out, expected, rtol=1e-6)


# ---- the clipped objectives (PPO paper: L^CLIP = E[min(ρA, clip(ρ, 1−ε, 1+ε)A)])


def _one_token(ratio, advantage):
    logp = np.array([[math.log(ratio)]], np.float32)
    return logp, np.zeros((1, 1), np.float32), np.array([[advantage]], np.float32)


@pytest.mark.parametrize(
    "ratio,advantage,objective,clipped",
    [
        (1.0, 1.0, 1.0, False),  # on-policy: ρA
        (1.2, 1.0, 1.2, False),  # at the upper bound: unclipped and clipped agree
        (1.5, 1.0, 1.2, True),  # A > 0 beyond 1 + ε: capped at (1 + ε)A
        (0.5, 1.0, 0.5, False),  # A > 0 below 1 − ε: min keeps the lower, unclipped ρA
        (0.5, -1.0, -0.8, True),  # A < 0 below 1 − ε: capped at (1 − ε)A
        (0.8, -1.0, -0.8, False),  # at the lower bound
        (1.5, -1.0, -1.5, False),  # A < 0 beyond 1 + ε: the pessimistic ρA stays
    ],
)
def test_policy_loss_at_and_beyond_the_clip_bounds(ratio, advantage, objective, clipped):
    logp, old, adv = _one_token(ratio, advantage)
    loss, stats = ppo.policy_loss(logp, old, adv, np.ones((1, 1)), clip=0.2)
    chex.assert_trees_all_close(float(loss), -objective, rtol=1e-5)
    assert float(stats["policy_clipfrac"]) == float(clipped)
    chex.assert_trees_all_close(float(stats["approx_kl"]), 0.5 * math.log(ratio) ** 2, rtol=1e-5)


@pytest.mark.parametrize("ratio,advantage", [(1.5, 1.0), (0.5, -1.0)])
def test_clipped_policy_loss_has_no_gradient_past_the_bound(ratio, advantage):
    logp, old, adv = _one_token(ratio, advantage)
    grad = jax.grad(lambda lp: ppo.policy_loss(lp, old, adv, jnp.ones((1, 1)), clip=0.2)[0])(logp)
    assert float(grad[0, 0]) == 0.0
    inside = jax.grad(lambda lp: ppo.policy_loss(lp, old, adv, jnp.ones((1, 1)), clip=0.2)[0])(
        np.zeros((1, 1), np.float32)
    )
    assert float(inside[0, 0]) == -advantage  # d(−ρA)/d log π at ρ = 1


@pytest.mark.parametrize(
    "value,old,ret,loss,clipped",
    [
        (1.0, 1.0, 0.0, 0.5, False),  # inside the range: ½(V − R)²
        (2.0, 1.0, 0.0, 2.0, False),  # moved beyond +ε away from R: the larger, unclipped error
        (2.0, 1.0, 3.0, 0.5 * 1.8**2, True),  # moved beyond +ε towards R: clipped V = 1.2
        (0.0, 1.0, 3.0, 4.5, False),  # moved away from R below −ε: unclipped
        (0.0, 1.0, -3.0, 0.5 * 3.8**2, True),  # clipped V = 0.8
    ],
)
def test_value_loss_at_and_beyond_the_clip_bounds(value, old, ret, loss, clipped):
    arr = lambda x: np.array([[x]], np.float32)
    got, stats = ppo.value_loss(arr(value), arr(old), arr(ret), np.ones((1, 1)), clip=0.2)
    chex.assert_trees_all_close(float(got), loss, rtol=1e-5)
    assert float(stats["value_clipfrac"]) == float(clipped)


def test_losses_ignore_masked_tokens():
    rng = np.random.default_rng(3)
    logp, old, adv = (rng.normal(size=(2, 5)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.float32)
    a = ppo.policy_loss(logp, old, adv, mask, clip=0.2)
    b = ppo.policy_loss(
        np.where(mask > 0, logp, 9.0), old, np.where(mask > 0, adv, -7.0), mask, clip=0.2
    )
    chex.assert_trees_all_close(a, b)


def test_entropy_of_uniform_and_one_hot_logits():
    uniform = np.zeros((1, 2, 8), np.float32)
    chex.assert_trees_all_close(
        float(ppo.entropy(uniform, np.ones((1, 2)))), math.log(8), rtol=1e-6
    )
    peaked = np.full((1, 1, 8), -1e4, np.float32)
    peaked[0, 0, 3] = 0.0
    assert abs(float(ppo.entropy(peaked, np.ones((1, 1))))) < 1e-6


# ---- KL estimators on known distributions


@pytest.mark.parametrize("estimator", ppo.KL_ESTIMATORS)
def test_kl_estimators_are_unbiased_on_known_distributions(estimator):
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    exact = float((p * np.log(p / q)).sum())
    samples = np.random.default_rng(0).choice(4, size=200_000, p=p)
    kl = ppo.kl_penalty(np.log(p)[samples], np.log(q)[samples], estimator)
    assert abs(float(kl.mean()) - exact) < 4 * float(kl.std()) / math.sqrt(samples.size)
    # Exact expectation, summed over the support instead of sampled:
    per_token = np.asarray(ppo.kl_penalty(np.log(p), np.log(q), estimator))
    chex.assert_trees_all_close(float((p * per_token).sum()), exact, rtol=1e-5)


def test_k3_is_never_negative_and_both_vanish_when_equal():
    logp = np.log(np.array([0.9, 0.05, 0.05]))
    logq = np.log(np.array([0.1, 0.45, 0.45]))
    assert (np.asarray(ppo.kl_penalty(logp, logq, "k3")) >= 0).all()
    assert (np.asarray(ppo.kl_penalty(logp, logq, "k1")) < 0).any()  # k1 per token can be < 0
    for estimator in ppo.KL_ESTIMATORS:
        assert float(jnp.abs(ppo.kl_penalty(logp, logp, estimator)).max()) == 0.0


def test_unknown_kl_estimator_is_named():
    with pytest.raises(ValueError, match="kl_estimator='k2'.*k1"):
        ppo.kl_penalty(np.zeros(2), np.zeros(2), "k2")


# ---- KL controllers


def test_fixed_controller_never_moves():
    c = ppo.KLController(0.05)
    assert c.update(10.0, 256) == 0.05


def test_adaptive_controller_follows_ziegler_et_al():
    c = ppo.KLController(0.2, target=6.0, horizon=10000)
    beta = 0.2
    for kl in (12.0, 6.0, 1.0, 6.6):
        error = min(max(kl / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + error * 256 / 10000
        assert c.update(kl, 256) == pytest.approx(beta, rel=1e-12)
    assert ppo.KLController(**c.state_dict()) == c


def test_controller_rejects_bad_settings():
    with pytest.raises(ValueError, match="kl_coef"):
        ppo.KLController(-1.0)
    with pytest.raises(ValueError, match="kl_horizon"):
        ppo.KLController(0.1, target=1.0, horizon=0)
