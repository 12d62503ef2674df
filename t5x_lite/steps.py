"""Pure train and eval steps: `(state, batch) -> (state, metrics)`, jitted by the caller.

    train_step = make_train_step(graphdef, loss_fn, schedule=lr, grad_accum_steps=2, seed=0)
    state, metrics = jax.jit(train_step, donate_argnums=0)(state, batch)

`state` is `nnx.state((model, optimizer))` and `graphdef` the matching `nnx.graphdef` with the
model in train mode (eval steps take the eval-mode graphdef of the model alone). Functional
split/merge keeps the jitted call free of Python graph traversal and lets `sharding/` give
`state` explicit shardings. Dropout is reseeded from (seed, step) each step, so a resumed run
draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _split_micro_batches(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B / n, ...) for each array of the batch."""

    def split(x):
        if x.shape[0] % n:
            raise ValueError(
                f"batch dimension {x.shape[0]} is not divisible by optim.grad_accum_steps={n}"
            )
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    *,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    seed: int = 0,
    wrt: nnx.filterlib.Filter = nnx.Param,
    **loss_kwargs,
):
    """A train step: mean gradient over `grad_accum_steps` micro-batches, one optimizer update.

    Gradients are taken with respect to the variables `wrt` selects (the optimizer's own `wrt`):
    every parameter, or `nnx.LoRAParam` alone for LoRA, leaving the rest bitwise unchanged.

    Gradients accumulate in float32 (the parameter dtype) under `lax.scan`; metrics are means
    over micro-batches, plus `grad_norm` (before clipping) and `learning_rate`.
    """

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        step = optimizer.step[...]
        # One key per step; a scanned stack's per-layer keys are split from it.
        key = jax.random.fold_in(jax.random.key(seed), step)
        nnx.reseed(model, dropout=key, policy="match_shape")
        model_def, model_state = nnx.split(model)

        def micro_step(carry, micro):
            grad_sum, model_state = carry
            m = nnx.merge(model_def, model_state)  # created at this trace level: rngs advance
            grad_fn = nnx.value_and_grad(
                lambda m: loss_fn(m, micro, **loss_kwargs),
                argnums=nnx.DiffState(0, wrt),
                has_aux=True,
            )
            (_, metrics), grads = grad_fn(m)
            return (jax.tree.map(jnp.add, grad_sum, grads), nnx.state(m)), metrics

        zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, wrt))
        if grad_accum_steps == 1:
            (grads, model_state), metrics = micro_step((zeros, model_state), batch)
        else:
            (grads, model_state), metrics = jax.lax.scan(
                micro_step, (zeros, model_state), _split_micro_batches(batch, grad_accum_steps)
            )
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
            metrics = {k: v.sum(0) if k == "num_tokens" else v.mean(0) for k, v in metrics.items()}
        nnx.update(model, model_state)
        optimizer.update(model, grads)
        metrics = dict(
            metrics,
            grad_norm=optax.global_norm(grads),
            learning_rate=jnp.asarray(schedule(step), jnp.float32),
        )
        return nnx.state((model, optimizer)), metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn, **loss_kwargs):
    """An eval step on the model alone: `(model_state, batch) -> metrics` (no dropout)."""

    def eval_step(model_state, batch):
        model = nnx.merge(graphdef, model_state)
        _, metrics = loss_fn(model, batch, **loss_kwargs)
        return metrics

    return eval_step
