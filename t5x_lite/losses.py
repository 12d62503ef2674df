"""Token-level losses in float32, shared by every objective and by the HF-parity tests.

    loss, metrics = cross_entropy(logits, labels, mask)     # mean over mask, as HF's loss

Labels equal to -100 (HF's ignore index) are ignored as if masked out.
Shapes: B batch, T length, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def cross_entropy(
    logits: jax.Array,  # (B, T, V)
    labels: jax.Array,  # (B, T) int
    mask: jax.Array | None = None,  # (B, T), 1 where the loss counts
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean over counted tokens of -log softmax(logits)[label] (+ z_loss * logsumexp**2).

    With label smoothing eps the target is (1 - eps) one-hot + eps / V uniform. The z-loss
    (PaLM / T5X) keeps the softmax normaliser near 1. Returns (loss, metrics) with metrics
    `loss`, `accuracy`, `num_tokens` (as float32 scalars).
    """
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE_INDEX
    if mask is not None:
        valid = valid & mask.astype(bool)
    safe_labels = jnp.where(valid, labels, 0)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    label_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    nll = log_z - label_logit
    if label_smoothing:
        smooth = log_z - logits.mean(axis=-1)  # -mean_v log softmax_v
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    per_token = nll + z_loss * jnp.square(log_z) if z_loss else nll
    weights = valid.astype(jnp.float32)
    num_tokens = weights.sum()
    denom = jnp.maximum(num_tokens, 1.0)
    loss = (per_token * weights).sum() / denom
    correct = (jnp.argmax(logits, axis=-1) == labels) & valid
    metrics = {
        "loss": loss,
        "accuracy": correct.astype(jnp.float32).sum() / denom,
        "num_tokens": num_tokens,
    }
    return loss, metrics
