"""The pure train and eval steps against gradients taken independently with `jax.grad`.

One SGD step makes the update a readable copy of the gradient: params' = params - lr * g. The
batch's targets are all real tokens, so every micro-batch counts the same number of tokens and
the mean of micro-batch means is the full-batch mean; accumulation must then give the full
batch's gradient to float32 precision, which a loss-level comparison does not resolve.
"""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from objectives import seq2seq
from t5x_lite import config, models, steps

B, S, T = 4, 7, 5
LR = 0.5


def _batch(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    targets = jax.random.randint(k2, (B, T), 2, 256)  # no pad: equal token counts per row
    return {
        "inputs": jax.random.randint(k1, (B, S), 2, 256),
        "targets": targets,
        "decoder_inputs": models.shift_right(targets),
    }


def _model(dropout_rate=0.0):
    # one layer per stack and a small vocabulary keep compiling cheap
    cfg = config.get_preset("t5-tiny", num_layers=1, vocab_size=256, dropout_rate=dropout_rate)
    return models.build(cfg, seed=0)


def _create():
    model = _model()
    model.train()
    return model, nnx.Optimizer(model, optax.sgd(LR), wrt=nnx.Param)


def _step(grad_accum_steps, batch):
    model, optimizer = _create()
    graphdef, state = nnx.split((model, optimizer))
    train_step = steps.make_train_step(
        graphdef,
        seq2seq.loss_fn,
        schedule=optax.constant_schedule(LR),
        grad_accum_steps=grad_accum_steps,
    )
    new_state, metrics = jax.jit(train_step)(state, batch)
    new_model, new_optimizer = nnx.merge(graphdef, new_state)
    return nnx.state(model, nnx.Param), nnx.state(new_model, nnx.Param), new_optimizer, metrics


def _reference(batch):
    """(full-batch mean loss, its gradient wrt the params), by `jax.value_and_grad` on a pure
    function of the parameters."""
    model, _ = _create()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return seq2seq.loss_fn(nnx.merge(graphdef, params, rest), batch)[0]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def batch():
    return _batch()


@pytest.fixture(scope="module")
def reference(batch):
    return _reference(batch)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_update_is_the_full_batch_gradient(batch, reference, grad_accum_steps):
    """SGD: params - lr * g with g the full-batch gradient, for any number of micro-batches;
    grad_norm is optax.global_norm of that gradient."""
    full_loss, grads = reference
    before, after, optimizer, metrics = _step(grad_accum_steps, batch)
    want = jax.tree.map(lambda p, g: p - LR * g, before, grads)
    chex.assert_trees_all_close(after, want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-5, atol=0)
    assert int(optimizer.step[...]) == 1
    chex.assert_trees_all_close(metrics["learning_rate"], jnp.float32(LR))
    assert float(metrics["num_tokens"]) == B * T  # summed over micro-batches, not averaged
    chex.assert_trees_all_close(metrics["loss"], full_loss, rtol=1e-5)


def test_batch_not_divisible_by_micro_batches(batch):
    with pytest.raises(ValueError, match="batch dimension 4 is not divisible by .*=3"):
        _step(3, batch)


def test_eval_step_is_the_loss_in_eval_mode(batch):
    """Eval step on the eval-mode graphdef: the loss_fn's metrics with dropout off."""
    model = _model(dropout_rate=0.5)
    model.eval()
    graphdef, state = nnx.split(model)
    eval_step = jax.jit(steps.make_eval_step(graphdef, seq2seq.loss_fn, label_smoothing=0.1))
    got = eval_step(state, batch)
    want = nnx.jit(seq2seq.loss_fn, static_argnames="label_smoothing")(
        model, batch, label_smoothing=0.1
    )[1]
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    assert set(got) == {"loss", "accuracy", "num_tokens"}


def test_loss_options_schedule_and_dropout_reach_the_step(batch):
    """The loss keyword arguments reach loss_fn (z-loss raises the logged loss by z * mean
    log Z^2 > 0), `learning_rate` is the schedule at the optimizer's step, and dropout is
    reseeded from (seed, step): the same (seed, step) gives the same loss, another seed does not."""
    model = _model(dropout_rate=0.5)
    model.train()
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.0), wrt=nnx.Param)))
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=10)

    def run(seed, **loss_kwargs):
        train_step = steps.make_train_step(
            graphdef, seq2seq.loss_fn, schedule=schedule, seed=seed, **loss_kwargs
        )
        step = jax.jit(train_step)
        after, first = step(state, batch)
        return first, step(after, batch)[1]  # steps 0 and 1 (lr 0 at step 0: same params)

    (a0, a1), (b0, _), (c0, _) = run(0), run(0), run(1)
    (z0, _) = run(0, z_loss=1e-2)
    assert float(a0["learning_rate"]) == schedule(0) and float(a1["learning_rate"]) == schedule(1)
    assert float(a0["loss"]) == float(b0["loss"])  # same seed and step: same dropout masks
    assert float(a0["loss"]) != float(a1["loss"])  # next step: new masks
    assert float(a0["loss"]) != float(c0["loss"])  # other seed: other masks
    assert float(z0["loss"]) > float(a0["loss"])
