"""Native checkpoints with Orbax: a `CheckpointManager` directory of numbered steps.

Each step holds the items `params` (the model's parameters) and `model_config` (JSON); training
adds optimizer state, data-iterator state and the resolved run config to the same steps. A model
is restored into an abstract (unallocated) model, so a large model is read once, already laid out
with the target's sharding when the abstract state carries one.

    from t5x_lite import checkpoint
    checkpoint.save_model("ckpt/", model)            # step 0 unless given
    model = checkpoint.load_model("ckpt/")           # the latest step

Orbax writes each step into a temporary directory and renames it when complete, so a crash
never leaves a half-written step behind as the latest one.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from t5x_lite import config as config_lib
from t5x_lite import models

PARAMS = "params"
MODEL_CONFIG = "model_config"


def manager(
    directory: str | os.PathLike, *, max_to_keep: int | None = None, async_save: bool = False
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def params_of(model: models.Model) -> dict:
    """The model's parameters as a pure nested dict of arrays (what Orbax stores)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def save_model(directory: str | os.PathLike, model: models.Model, *, step: int = 0) -> Path:
    """Write `model` as step `step` of a checkpoint directory (params + model_config)."""
    with manager(directory) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                **{
                    PARAMS: ocp.args.StandardSave(params_of(model)),
                    MODEL_CONFIG: ocp.args.JsonSave(model.config.to_dict()),
                }
            ),
        )
        mngr.wait_until_finished()
    return Path(directory)


def latest_step(directory: str | os.PathLike) -> int:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist: expected an Orbax checkpoint directory with numbered "
            "steps (written by `t5x-lite train` or `t5x-lite convert --from-hf`)"
        )
    with manager(directory) as mngr:
        step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint steps in {directory}: expected numbered step directories "
            "(written by `t5x-lite train` or `t5x-lite convert --from-hf`)"
        )
    return step


def load_model_config(
    directory: str | os.PathLike, *, step: int | None = None
) -> config_lib.ModelConfig:
    step = latest_step(directory) if step is None else step
    with manager(directory) as mngr:
        restored = mngr.restore(
            step, args=ocp.args.Composite(**{MODEL_CONFIG: ocp.args.JsonRestore()})
        )
    return config_lib.ModelConfig.from_dict(restored[MODEL_CONFIG])


def restore_params(
    directory: str | os.PathLike, abstract_model: models.Model, *, step: int | None = None
) -> dict:
    """Parameters of `step` (default: latest) shaped and sharded like `abstract_model`'s; where
    it has no sharding, on this process's first device, whatever devices the saver had."""
    step = latest_step(directory) if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device
        ),
        params_of(abstract_model),
    )
    with manager(directory) as mngr:
        restored = mngr.restore(
            step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)})
        )
    return restored[PARAMS]


def load_model(
    directory: str | os.PathLike, *, step: int | None = None, **config_overrides
) -> models.Model:
    """Rebuild the model saved at `step` (default: latest), in eval mode.

    `config_overrides` change non-shape fields such as `dtype` or `dropout_rate`.
    """
    cfg = load_model_config(directory, step=step).replace(**config_overrides)
    graphdef, state, rest = models.build_abstract(cfg)
    with jax.ensure_compile_time_eval():  # real arrays even when traced (nnx.eval_shape)
        params = restore_params(directory, nnx.merge(graphdef, state, rest), step=step)
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state, rest)
    model.eval()
    return model
