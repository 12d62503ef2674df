"""Optimizers and learning-rate schedules from optax, chosen by name.

    tx, schedule = make_optimizer("adamw", learning_rate=1e-3, schedule="warmup_cosine",
                                  warmup_steps=100, total_steps=10_000, grad_clip=1.0)

Schedules (step s, peak lr, warmup w, total n, end fraction e):
  constant        lr
  warmup_linear   lr * s / w, then linear decay to lr * e at n
  warmup_cosine   lr * s / w, then cosine decay to lr * e at n
  rsqrt           lr * sqrt(w / max(s, w))      (T5: constant 0.01 for 10k steps, then 1/sqrt(s))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_linear", "warmup_cosine", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


def make_schedule(
    name: str,
    *,
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    end_learning_rate_fraction: float = 0.0,
) -> optax.Schedule:
    if name not in SCHEDULES:
        raise ValueError(
            f"optim.schedule={name!r} is not supported; expected one of {', '.join(SCHEDULES)}"
        )
    end = learning_rate * end_learning_rate_fraction
    warmup = max(int(warmup_steps), 0)
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "rsqrt":
        w = max(warmup, 1)
        return lambda step: learning_rate * jnp.sqrt(w / jnp.maximum(step, w))
    decay_steps = max(total_steps - warmup, 1)
    if name == "warmup_linear":
        decay = optax.linear_schedule(learning_rate, end, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(
            learning_rate, decay_steps, alpha=end_learning_rate_fraction
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, max(warmup, 1)), decay], [max(warmup, 1)]
    )


def make_optimizer(
    name: str,
    *,
    learning_rate: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int = 1,
    end_learning_rate_fraction: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    grad_clip: float = 0.0,
    adafactor_parameter_scale: bool = False,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(gradient transformation, schedule): clipping, then AdamW or Adafactor.
    `adafactor_parameter_scale`: Adafactor's steps relative to each parameter's RMS (T5X's
    fine-tuning default) rather than absolute."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"optim.name={name!r} is not supported; expected one of {', '.join(OPTIMIZERS)}"
        )
    lr = make_schedule(
        schedule,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        end_learning_rate_fraction=end_learning_rate_fraction,
    )
    if name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        # T5's Adafactor: factored second moments, no momentum, update clipping at 1.0. Weight
        # decay as AdamW's, lr(step) * weight_decay * param: optax's own `weight_decay_rate`
        # would take weight_decay * param off every step, whatever the learning rate.
        tx = optax.adafactor(
            lr, clipping_threshold=1.0, multiply_by_parameter_scale=adafactor_parameter_scale
        )
        if weight_decay > 0:
            tx = optax.chain(tx, _decoupled_weight_decay(weight_decay, lr))
    if grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return tx, lr


def _decoupled_weight_decay(rate: float, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Subtract schedule(step) * rate * param from the (already signed) updates."""

    def init(params):
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        step = schedule(state.count) * rate
        updates = jax.tree.map(lambda u, p: u - step * p, updates, params)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
