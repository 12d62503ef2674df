"""Learning-rate schedules against their closed forms; optimizer choice errors."""

import math

import numpy as np
import pytest

from t5x_lite import optim


def test_schedules_follow_their_formulas():
    lr, w, n = 1e-2, 10, 110
    rsqrt = optim.make_schedule("rsqrt", learning_rate=lr, warmup_steps=w, total_steps=n)
    for s in (0, 5, 10, 40, 100):
        np.testing.assert_allclose(float(rsqrt(s)), lr * math.sqrt(w / max(s, w)), rtol=1e-6)
    cos = optim.make_schedule(
        "warmup_cosine",
        learning_rate=lr,
        warmup_steps=w,
        total_steps=n,
        end_learning_rate_fraction=0.1,
    )
    np.testing.assert_allclose(float(cos(5)), lr * 5 / w, rtol=1e-5)
    mid = w + (n - w) // 2
    expected = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (mid - w) / (n - w))))
    np.testing.assert_allclose(float(cos(mid)), expected, rtol=1e-5)
    lin = optim.make_schedule("warmup_linear", learning_rate=lr, warmup_steps=w, total_steps=n)
    np.testing.assert_allclose(float(lin(n)), 0.0, atol=1e-9)
    np.testing.assert_allclose(float(lin(w + 50)), lr * 0.5, rtol=1e-5)


def test_unknown_names():
    with pytest.raises(ValueError, match="optim.schedule='cyclic'"):
        optim.make_schedule("cyclic", learning_rate=1.0, warmup_steps=0, total_steps=1)
    with pytest.raises(ValueError, match="optim.name='sgd'.*adamw, adafactor"):
        optim.make_optimizer("sgd", learning_rate=1.0)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_is_the_learning_rate_times_the_rate(name):
    """With zero gradients only the decay moves a weight: -lr(step) * weight_decay * w, as
    AdamW's decoupled decay does (optax's Adafactor alone would take weight_decay * w off every
    step, whatever the learning rate)."""
    import jax.numpy as jnp

    tx, _ = optim.make_optimizer(
        name, learning_rate=0.1, schedule="warmup_linear", warmup_steps=4, total_steps=8,
        weight_decay=0.01,
    )  # fmt: skip
    params = {"w": jnp.full((4, 3), 2.0)}
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update({"w": jnp.zeros((4, 3))}, state, params)
        np.testing.assert_allclose(updates["w"], -0.1 * step / 4 * 0.01 * 2.0, atol=1e-9)
