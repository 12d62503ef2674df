"""`layers.project`, the weight product every dense layer goes through: its decoding-step
layouts (one new token per row, on CPU) compute the same product as numpy."""

import chex
import jax
import numpy as np
import pytest

from t5x_lite import layers

K, N = 24, 40


@pytest.mark.parametrize("rows", [1, 3, layers.DECODING_STEP_MAX_ROWS + 1])
@pytest.mark.parametrize("vocab_major", [False, True])
def test_project_in_decoding_step_equals_numpy(rows, vocab_major):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 1, K), dtype=np.float32)  # (B, T=1, K)
    kernel = rng.standard_normal((N, K) if vocab_major else (K, N), dtype=np.float32)
    want = x @ (kernel.T if vocab_major else kernel)

    def product(x, kernel):
        return layers.project(x, kernel, vocab_major=vocab_major)

    assert not layers.step_layouts(rows)
    with layers.decoding_step():
        # The tests run on CPU, where the step layouts apply up to the row limit.
        assert layers.step_layouts(rows) == (rows <= layers.DECODING_STEP_MAX_ROWS)
        inside = jax.jit(product)(x, kernel)
    assert not layers.step_layouts(rows)  # the context is left as it was
    outside = jax.jit(lambda x, kernel: product(x, kernel))(x, kernel)  # traced anew
    chex.assert_shape(inside, (rows, 1, N))
    chex.assert_trees_all_close(inside, want, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(outside, want, rtol=1e-5, atol=1e-5)
