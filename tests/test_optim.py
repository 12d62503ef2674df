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
