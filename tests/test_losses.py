"""`losses.cross_entropy` against a naive numpy loop written from the definitions, and its
label smoothing against PyTorch's `F.cross_entropy(label_smoothing=eps)`."""

import chex
import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import torch

from t5x_lite import losses


def naive_cross_entropy(logits, labels, mask, *, z_loss=0.0, label_smoothing=0.0):
    """Per counted token (label != -100 and mask): the cross-entropy of the target distribution
    q = (1 - eps) one_hot(label) + eps / V against softmax(logits), plus z_loss * log(Z)**2;
    averaged over counted tokens (0 if none). Accuracy: argmax == label, over counted tokens."""
    logits = np.asarray(logits, np.float64)
    b, t, v = logits.shape
    total = correct = count = 0.0
    for i in range(b):
        for j in range(t):
            label = int(labels[i, j])
            if label == -100 or (mask is not None and not mask[i, j]):
                continue
            row = logits[i, j]
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            target = np.full(v, label_smoothing / v)
            target[label] += 1.0 - label_smoothing
            total += -np.sum(target * (row - log_z)) + z_loss * log_z**2
            correct += float(np.argmax(row) == label)
            count += 1
    denom = max(count, 1.0)
    return total / denom, {"loss": total / denom, "accuracy": correct / denom, "num_tokens": count}


def _example(seed, b=3, t=5, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    labels = rng.integers(0, v, size=(b, t))
    labels[0, 1] = labels[2, 4] = -100  # HF's ignore index
    mask = rng.random((b, t)) < 0.7
    mask[1, 0], mask[0, 3] = True, False
    # the label is the argmax at a counted and at a masked-out position: one correct token
    labels[1, 0] = logits[1, 0].argmax()
    labels[0, 3] = logits[0, 3].argmax()
    return logits, labels, mask


class CrossEntropyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_naive_loop(self):
        logits, labels, mask = _example(0)
        for z_loss, eps, m in [
            (0.0, 0.0, mask),
            (1e-2, 0.0, mask),
            (0.0, 0.1, mask),
            (1e-1, 0.3, None),
        ]:
            fn = self.variant(
                lambda x, y, m, z=z_loss, e=eps: losses.cross_entropy(
                    x, y, m, z_loss=z, label_smoothing=e
                )
            )
            loss, metrics = fn(jnp.asarray(logits), jnp.asarray(labels), m)
            want_loss, want = naive_cross_entropy(
                logits, labels, m, z_loss=z_loss, label_smoothing=eps
            )
            chex.assert_trees_all_close(loss, jnp.float32(want_loss), rtol=1e-5)
            chex.assert_trees_all_close(
                metrics, {k: jnp.float32(v) for k, v in want.items()}, rtol=1e-5
            )
        assert 0 < want["accuracy"] < 1 and want["num_tokens"] == 13  # only -100 ignored

    @chex.variants(with_jit=True, without_jit=True)
    def test_nothing_counted_is_zero_not_nan(self):
        logits, labels, _ = _example(1)
        loss, metrics = self.variant(losses.cross_entropy)(
            jnp.asarray(logits), jnp.asarray(labels), jnp.zeros(labels.shape, bool)
        )
        chex.assert_trees_all_equal(
            (loss, metrics), (0.0, {"loss": 0.0, "accuracy": 0.0, "num_tokens": 0.0})
        )

    def test_bfloat16_logits_are_computed_in_float32(self):
        logits, labels, mask = _example(2)
        low = jnp.asarray(logits, jnp.bfloat16)
        loss, _ = losses.cross_entropy(low, jnp.asarray(labels), mask, label_smoothing=0.1)
        assert loss.dtype == jnp.float32
        want, _ = naive_cross_entropy(
            np.asarray(low, np.float32), labels, mask, label_smoothing=0.1
        )
        chex.assert_trees_all_close(loss, jnp.float32(want), rtol=1e-5)


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(1, 1, 2), (2, 3, 5), (4, 2, 7)]),
    eps=st.floats(0.0, 0.9),
)
def test_label_smoothing_matches_torch(seed, shape, eps):
    """PyTorch's definition: the mean over non-ignored tokens of the cross-entropy against
    (1 - eps) one-hot + eps / V."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(np.float32) * 4
    labels = rng.integers(0, shape[-1], size=shape[:2])
    mask = rng.random(shape[:2]) < 0.8
    mask.flat[0] = True
    loss, metrics = losses.cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), label_smoothing=eps
    )
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).double().reshape(-1, shape[-1]),
        torch.from_numpy(np.where(mask, labels, -100)).reshape(-1),
        ignore_index=-100,
        label_smoothing=eps,
    )
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5, atol=1e-6)
    assert float(metrics["num_tokens"]) == mask.sum()
