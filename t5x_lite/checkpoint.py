"""Native checkpoints with Orbax: a `CheckpointManager` directory of numbered steps.

Each step holds the items `params` (the model's parameters) and `model_config` (JSON); a training
run (`TrainCheckpoints`) adds the optimizer state, the data iterator's state and the resolved run
config to the same steps, so `load_model` reads a training run's checkpoints too. State is
restored into an abstract (or existing) target, so a large model is read once, already laid out
with the target's sharding, whatever mesh wrote it.

    from t5x_lite import checkpoint
    checkpoint.save_model("ckpt/", model)            # step 0 unless given
    model = checkpoint.load_model("ckpt/")           # the latest step

    with checkpoint.TrainCheckpoints("run/checkpoints", keep=3, async_save=True) as ckpts:
        ckpts.save(step, model_state, opt_state, model_config=cfg, data_iterator=it)
        model_state, opt_state = ckpts.restore(ckpts.latest_step, model_state, opt_state, it)

Orbax writes each step into a temporary directory and renames it when complete, so a crash
never leaves a half-written step behind as the latest one.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from t5x_lite import config as config_lib
from t5x_lite import data, models

PARAMS = "params"
MODEL_CONFIG = "model_config"
OPT_STATE, DATA_ITER, RUN_CONFIG = "opt_state", "data_iter", "config"
ADAPTERS = "adapters"  # a parameter-efficient run's methods (t5x_lite.adapters), beside params
ADAPTER, ADAPTER_CONFIG = "adapter", "adapter_config"  # an adapter saved on its own


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


def _model_items(params: dict, model_config: config_lib.ModelConfig) -> dict:
    return {
        PARAMS: ocp.args.StandardSave(params),
        MODEL_CONFIG: ocp.args.JsonSave(model_config.to_dict()),
    }


def save_model(directory: str | os.PathLike, model: models.Model, *, step: int = 0) -> Path:
    """Write `model` as step `step` of a checkpoint directory (params + model_config)."""
    with manager(directory) as mngr:
        mngr.save(step, args=ocp.args.Composite(**_model_items(params_of(model), model.config)))
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


def restore_params(directory: str | os.PathLike, target: dict, *, step: int | None = None) -> dict:
    """Parameters of `step` (default: latest) read straight into `target`'s layout: a pure dict
    like `params_of`'s whose leaves give shape, dtype and (optionally) sharding; a leaf without
    a sharding lands on this process's first device, whatever devices the saver had."""
    step = latest_step(directory) if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device
        ),
        target,
    )
    with manager(directory) as mngr:
        restored = mngr.restore(
            step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)})
        )
    return restored[PARAMS]


def load_json_item(
    directory: str | os.PathLike, name: str, *, step: int | None = None
) -> dict | None:
    """The JSON item `name` of `step` (default: latest), or None if that step has none."""
    step = latest_step(directory) if step is None else step
    if not (Path(directory) / str(step) / name).exists():
        return None
    with manager(directory) as mngr:
        restored = mngr.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
    return dict(restored[name])


def load_model(
    directory: str | os.PathLike, *, step: int | None = None, adapt=None, **config_overrides
) -> models.Model:
    """Rebuild the model saved at `step` (default: latest), in eval mode.

    `config_overrides` change non-shape fields such as `dtype` or `dropout_rate`; a
    `scan_layers` other than the checkpoint's converts the parameters' layout after reading.
    `adapt` (model -> model) adds parameters the checkpoint also holds, such as LoRA adapters,
    before the parameters are read.
    """
    saved = load_model_config(directory, step=step)
    cfg = saved.replace(**config_overrides)
    graphdef, state, rest = models.build_abstract(cfg.replace(scan_layers=saved.scan_layers))
    if adapt is not None:
        graphdef, state, rest = nnx.split(adapt(nnx.merge(graphdef, state, rest)), nnx.Param, ...)
    with jax.ensure_compile_time_eval():  # real arrays even when traced (nnx.eval_shape)
        target = nnx.to_pure_dict(state)
        params = restore_params(directory, target, step=step)
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state, rest)
    model.eval()
    return models.with_layout(model, scan_layers=cfg.scan_layers)


def save_adapter(directory: str | os.PathLike, step: int, arrays, config: dict) -> Path:
    """An adapter alone (a LoRA or soft-prompt pytree of arrays, and its JSON config) as step
    `step` of a checkpoint directory that keeps only its latest step."""
    items = {ADAPTER: ocp.args.StandardSave(arrays), ADAPTER_CONFIG: ocp.args.JsonSave(config)}
    with manager(directory, max_to_keep=1) as mngr:
        if step in mngr.all_steps():
            raise FileExistsError(f"{directory} holds step {step} already; save a later step")
        mngr.save(step, args=ocp.args.Composite(**items))
        mngr.wait_until_finished()
    return Path(directory)


def load_adapter(directory: str | os.PathLike) -> tuple[object, dict]:
    """(arrays as numpy, config) of the latest step `save_adapter` wrote in `directory`."""
    step = latest_step(directory)
    with manager(directory) as mngr:
        restored = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{ADAPTER: ocp.args.StandardRestore(), ADAPTER_CONFIG: ocp.args.JsonRestore()}
            ),
        )
    return jax.tree.map(np.asarray, restored[ADAPTER]), dict(restored[ADAPTER_CONFIG])


def _abstract(tree) -> dict:
    """A state's pure dict as shapes, dtypes and shardings: the target Orbax restores into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        nnx.to_pure_dict(tree),
    )


def keep_state(directory: str | os.PathLike, state: nnx.State) -> nnx.State:
    """`state` saved once in `directory`; once it is there, read back instead (into the arrays
    of `state`, each laid out as before). A PPO run keeps its reference so, resumed or not."""
    with manager(directory) as mngr:
        if mngr.latest_step() is None:
            mngr.save(0, args=ocp.args.StandardSave(nnx.to_pure_dict(state)))
            mngr.wait_until_finished()
            return state
        restored = mngr.restore(0, args=ocp.args.StandardRestore(_abstract(state)))
    nnx.replace_by_pure_dict(state, restored)
    return state


class TrainCheckpoints:
    """A training run's checkpoint directory (an Orbax `CheckpointManager`): per step the
    model's parameters and config (what `load_model` reads), the optimizer state, the data
    iterator's state and the run config. Saves may be asynchronous; `keep` bounds the steps
    kept (None: all). Orbax renames a step into place only once it is complete."""

    def __init__(
        self, directory: str | os.PathLike, *, keep: int | None = None, async_save: bool = False
    ):
        self.directory = Path(directory)
        self.mngr = manager(directory, max_to_keep=keep, async_save=async_save)

    @property
    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(
        self,
        step: int,
        model_state: nnx.State,
        opt_state: nnx.State | None,
        *,
        model_config: config_lib.ModelConfig,
        data_iterator=None,
        run_config: dict | None = None,
        adapters: dict | None = None,
        json_items: dict[str, dict] | None = None,
    ) -> None:
        """Save step `step`: the parameters in `model_state` (a model's `nnx.state`), and
        `opt_state`, the grain `data_iterator`'s state, `run_config`, the `adapters` spec
        (LoRA, soft prompt) of the parameters, and more `json_items` by name, where given
        (a PPO run's KL controller; `load_json_item` reads one back)."""
        params = nnx.to_pure_dict(nnx.filter_state(model_state, nnx.Param))
        items = _model_items(params, model_config)
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardSave(nnx.to_pure_dict(opt_state))
        if data_iterator is not None:
            items[DATA_ITER] = ocp.args.JsonSave(data.iterator_state_json(data_iterator))
        if run_config is not None:
            items[RUN_CONFIG] = ocp.args.JsonSave(run_config)
        if adapters is not None:
            items[ADAPTERS] = ocp.args.JsonSave(adapters)
        for name, value in (json_items or {}).items():
            items[name] = ocp.args.JsonSave(value)
        self.mngr.save(step, args=ocp.args.Composite(**items))

    def restore(
        self, step: int, model_state: nnx.State, opt_state: nnx.State | None, data_iterator=None
    ) -> tuple[nnx.State, nnx.State | None]:
        """Step `step` read into `model_state` and `opt_state` (in place; also returned), each
        array laid out like the one it replaces, so a run resumes on a different mesh; the
        grain `data_iterator`, if given, is set to where the saved run was."""
        params = nnx.filter_state(model_state, nnx.Param)
        items = {PARAMS: ocp.args.StandardRestore(_abstract(params))}
        if opt_state is not None:
            items[OPT_STATE] = ocp.args.StandardRestore(_abstract(opt_state))
        if data_iterator is not None:
            items[DATA_ITER] = ocp.args.JsonRestore()
        restored = self.mngr.restore(step, args=ocp.args.Composite(**items))
        nnx.replace_by_pure_dict(params, restored[PARAMS])
        nnx.update(model_state, params)
        if opt_state is not None:
            nnx.replace_by_pure_dict(opt_state, restored[OPT_STATE])
        if data_iterator is not None:
            data_iterator.set_state(restored[DATA_ITER])
        return model_state, opt_state

    def wait(self) -> None:
        """Block until every asynchronous save has been written."""
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
