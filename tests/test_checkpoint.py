"""Native Orbax checkpoints: steps, the latest one, config overrides, eval mode, pruning to the
newest `max_to_keep` with asynchronous saves, and loading under `nnx.eval_shape`."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from t5x_lite import checkpoint, config, models


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two different t5-tiny models (dropout 0.1) saved as steps 0 and 5 of one directory."""
    directory = tmp_path_factory.mktemp("ckpt")
    cfg = config.get_preset("t5-tiny", dropout_rate=0.1)
    first, second = models.build(cfg, seed=0), models.build(cfg, seed=1)
    checkpoint.save_model(directory, first, step=0)
    checkpoint.save_model(directory, second, step=5)
    return directory, first, second


def _params(model) -> dict:
    return jax.tree.map(np.asarray, checkpoint.params_of(model))


def _assert_params_equal(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_steps_latest_and_config(saved):
    directory, first, second = saved
    assert checkpoint.latest_step(directory) == 5
    _assert_params_equal(_params(checkpoint.load_model(directory)), _params(second))
    _assert_params_equal(_params(checkpoint.load_model(directory, step=0)), _params(first))
    assert checkpoint.load_model_config(directory) == second.config
    assert checkpoint.load_model_config(directory).dropout_rate == 0.1


def test_overrides_and_eval_mode(saved):
    directory, _, second = saved
    model = checkpoint.load_model(directory, dtype="bfloat16", dropout_rate=0.0)
    assert model.config.dtype == "bfloat16" and model.config.dropout_rate == 0.0
    assert {np.asarray(x).dtype for x in jax.tree.leaves(checkpoint.params_of(model))} == {
        np.dtype("float32")
    }  # parameters stay float32; dtype is the compute dtype
    _assert_params_equal(_params(model), _params(second))
    dropouts = [m for _, m in nnx.iter_graph(checkpoint.load_model(directory))]
    dropouts = [m for m in dropouts if isinstance(m, nnx.Dropout)]
    assert dropouts and all(d.deterministic for d in dropouts)  # loaded in eval mode


def test_load_under_eval_shape(saved):
    """`train.make_program` builds a model from `model.init_from` under `nnx.eval_shape`."""
    directory, _, second = saved
    abstract = nnx.eval_shape(lambda: checkpoint.load_model(directory))
    shapes = lambda m: jax.tree.map(lambda x: (x.shape, x.dtype), checkpoint.params_of(m))
    assert shapes(abstract) == shapes(second)


def test_latest_step_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: expected an Orbax checkpoint"):
        checkpoint.latest_step(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint steps in"):
        checkpoint.latest_step(tmp_path / "empty")


def test_async_manager_keeps_the_newest(tmp_path):
    with checkpoint.manager(tmp_path, max_to_keep=2, async_save=True) as mngr:
        for step in range(1, 6):
            tree = {"w": jnp.full((3,), float(step))}
            mngr.save(step, args=ocp.args.Composite(x=ocp.args.StandardSave(tree)))
        mngr.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]
    assert checkpoint.latest_step(tmp_path) == 5
    with checkpoint.manager(tmp_path) as mngr:
        restored = mngr.restore(4, args=ocp.args.Composite(x=ocp.args.StandardRestore()))
    np.testing.assert_array_equal(restored["x"]["w"], [4.0, 4.0, 4.0])
