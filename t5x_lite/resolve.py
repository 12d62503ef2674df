"""What a run config resolves to, before anything is built: the tokenizer, the ModelConfig, the
parameter-efficient method, the data to read, the objective's options and the loss's.

    tok = resolve.load_tokenizer(config)
    cfg = resolve.model_config(config, tok.vocab_size)
    method = resolve.adapter_method(config)          # None: full training
    spec = resolve.data_spec(config, train=False)    # None: eval is off

Each function reads the ConfigDict and returns plain values, checked, with errors that name the
config key; `train.py` builds and runs the program from them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import jax
import ml_collections

from t5x_lite import config as config_lib
from t5x_lite import conversion, data, lora, optim, prompt_tuning, prompts
from t5x_lite import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)


def load_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer: `tokenizer.path`, else the one `model.init_from` travels with
    (`conversion.tokenizer_dir`), else the shipped one. Given both, they must be the same."""
    source = config.model.init_from
    own = conversion.tokenizer_dir(source) if source else None
    if not config.tokenizer.path:
        return tokenizer_lib.load(own or conversion.default_tokenizer_dir())
    tok = tokenizer_lib.load(config.tokenizer.path)
    if own is not None and tokenizer_lib.load(own).checksum != tok.checksum:
        raise ValueError(
            f"tokenizer.path={config.tokenizer.path!r} is not the tokenizer model.init_from="
            f"{source!r} was trained with ({own}); leave tokenizer.path empty to use that one"
        )
    return tok


def keep_tokenizer(workdir: Path, tok: tokenizer_lib.Tokenizer) -> None:
    """Save the run's tokenizer as `workdir/tokenizer`, so the workdir is a whole model
    directory wherever it is read from; a resumed run must use the same tokenizer."""
    saved = workdir / "tokenizer"
    if saved.is_dir():
        if tokenizer_lib.load(saved).checksum != tok.checksum:
            raise ValueError(
                f"{workdir} was trained with the tokenizer in {saved}, not {tok.source} "
                "(tokenizer.path); resume with that one or start a new workdir"
            )
    elif jax.process_index() == 0:
        tmp = workdir / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save(tmp)
        os.replace(tmp, saved)  # whole or absent, never half written


# ModelConfig fields that a checkpoint's weights do not fix, so they may change on top of it
# (`scan_layers` changes only the parameters' layout: they are converted on reading).
RUNTIME_FIELDS = ("dtype", "param_dtype", "dropout_rate", "remat", "scan_layers")


VOCAB_MULTIPLE = 128  # T5 pads its 32,100 ids to 32,128


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    """The ModelConfig fields `config.model` sets (a None keeps the preset's), type-checked."""
    fields = {f.name: f for f in dataclasses.fields(config_lib.ModelConfig)}
    overrides = {}
    for key, value in config.model.to_dict().items():
        if key in ("preset", "init_from") or value is None:
            continue
        if key not in fields:
            raise ValueError(
                f"model.{key} is not a ModelConfig field; the model block takes preset, "
                f"init_from and {', '.join(fields)}"
            )
        default = fields[key].default
        want = int if default is None else type(default)  # num_decoder_layers: int | None
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ValueError(f"model.{key}={value!r}: expected a {want.__name__}")
        overrides[key] = value
    return overrides


def runtime_overrides(config: ml_collections.ConfigDict) -> dict:
    """The `model.*` fields set that may change on top of a checkpoint (`RUNTIME_FIELDS`)."""
    return {k: v for k, v in model_overrides(config).items() if k in RUNTIME_FIELDS}


def optimizer(config: ml_collections.ConfigDict):
    """(gradient transformation, learning-rate schedule) from the `optim` block, over
    `train.steps` steps."""
    o = config.optim
    return optim.make_optimizer(
        o.name,
        learning_rate=o.learning_rate,
        schedule=o.schedule,
        warmup_steps=o.warmup_steps,
        total_steps=config.train.steps,
        end_learning_rate_fraction=o.end_learning_rate_fraction,
        weight_decay=o.weight_decay,
        b1=o.b1,
        b2=o.b2,
        grad_clip=o.grad_clip,
        adafactor_parameter_scale=o.adafactor_parameter_scale,
    )


def padded_vocab_size(num_ids: int) -> int:
    """`num_ids` rounded up to a multiple of `VOCAB_MULTIPLE` (32,100 -> 32,128)."""
    return -(-num_ids // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> config_lib.ModelConfig:
    """The ModelConfig a run trains: `model.preset` with the `model.*` fields set on top, or
    `model.init_from`'s (a workdir, native checkpoint or HF directory) with its runtime fields.
    `vocab_size` is the tokenizer's number of ids; it must fit in the model's vocabulary."""
    overrides = model_overrides(config)
    source = config.model.init_from
    if source:
        fixed = [k for k in overrides if k not in RUNTIME_FIELDS]
        if fixed:
            raise ValueError(
                f"model.{fixed[0]} cannot be set with model.init_from={source!r}, whose weights "
                f"fix it; on top of a checkpoint only model.{', model.'.join(RUNTIME_FIELDS)} apply"
            )
        cfg = conversion.model_config(source, flag="model.init_from", **overrides)
    else:
        if "vocab_size" not in overrides and config.tokenizer.path:
            overrides["vocab_size"] = padded_vocab_size(vocab_size)
        cfg = config_lib.get_preset(config.model.preset, **overrides)
    if vocab_size > cfg.vocab_size:
        origin = f"init_from={source!r}" if source else f"preset={config.model.preset!r}"
        raise ValueError(
            f"the tokenizer (tokenizer.path={config.tokenizer.path or '(shipped)'!r}) has "
            f"{vocab_size} ids but the model (model.{origin}) has model.vocab_size="
            f"{cfg.vocab_size}; set model.vocab_size >= {vocab_size} or use a tokenizer that fits"
        )
    return cfg


def loss_options(config: ml_collections.ConfigDict, objective) -> tuple[dict, dict]:
    """(the objective's validated options, loss keyword arguments) from `config.objective`; a
    key the objective does not have is a ValueError naming it."""
    block = config.objective.to_dict()
    loss_kwargs = dict(z_loss=block.pop("z_loss"), label_smoothing=block.pop("label_smoothing"))
    block.pop("name")
    return dataclasses.asdict(objective.options(**block)), loss_kwargs


def adapter_method(config: ml_collections.ConfigDict) -> dict | None:
    """The parameter-efficient method the run trains (an `adapters.spec`), validated: LoRA
    (`lora.rank` > 0), prompt tuning (`prompt.num_tokens` > 0), or None (full training)."""
    method = {}
    if config.lora.rank != 0:
        block = config.lora.to_dict()
        method["lora"] = lora.to_json(lora.LoraConfig(**block))
    if config.prompt.num_tokens != 0:
        block = config.prompt.to_dict()
        method["prompt"] = prompt_tuning.to_json(prompt_tuning.PromptConfig(**block))
    if len(method) > 1:
        raise ValueError("lora.rank and prompt.num_tokens are both set: train one method at a time")
    if "prompt" in method and config.objective.get("pack", False):
        raise ValueError("prompt tuning needs objective.pack=false (rows would share a prompt)")
    return method or None


def data_spec(config: ml_collections.ConfigDict, *, train: bool) -> data.DataSpec | None:
    """What to read for training, or for eval (None: eval is off, and the log says why).
    Eval reads `data.eval_path` if set, else `data.eval_split` of the training source; a
    single-file `data.path` has no eval split, so there it needs `data.eval_path`."""
    d = config.data
    common = dict(
        input_field=d.input_field,
        target_field=d.target_field,
        skip_bad_records=d.skip_bad_records,
        shuffle_buffer=d.get("shuffle_buffer", 10_000),  # (configs saved before it have none)
    )
    if train:
        return data.DataSpec(d.source, d.path, d.split, **common)
    if d.eval_path:
        if d.source in ("hf", "tfds"):
            raise ValueError(
                f"data.eval_path is for file sources; data.source={d.source!r} evaluates on "
                "data.eval_split"
            )
        split = d.eval_split or "validation"
        return data.DataSpec(
            "array_record" if d.source == "array_record" else "jsonl",
            d.eval_path,
            split,
            **common,
            path_key="data.eval_path",
            split_key="data.eval_split",
        )
    if not d.eval_split:
        log.info("eval is off: data.eval_split and data.eval_path are empty")
        return None
    if d.source in ("jsonl", "array_record") and data.is_single_file(d.path):
        log.warning(
            "eval is off: data.path=%s is one file, with no %r split; set data.eval_path to a "
            "held-out file (or to data.path to evaluate on the training file)",
            d.path,
            d.eval_split,
        )
        return None
    return data.DataSpec(d.source, d.path, d.eval_split, **common, split_key="data.eval_split")


def input_fields(config, objective) -> dict:
    """The objective's {feature: record field}; with `data.template`, the feature that reads
    `data.input_field` gets the template's prompt around that field's text instead."""
    d = config.data
    fields = objective.fields(d.input_field, d.target_field)
    if not d.get("template"):  # (configs saved before data.template have none)
        return fields
    template = prompts.get_template(d.template)

    def render(record: dict) -> str:
        text = data.field(record, d.input_field)
        return template.render({template.truncate_field: text}, with_answer=False)

    return {k: render if f == d.input_field else f for k, f in fields.items()}


def generation_scores(config: ml_collections.ConfigDict, model, tok, records: list[dict]) -> dict:
    """`icl.score_generation` of `model` on `records` as the run generates at eval: greedy, in
    `data.template`, inputs cut to `objective.inputs_length`, `objective.targets_length` new
    tokens."""
    from t5x_lite import icl

    d, options = config.data, config.objective
    return icl.score_generation(
        model,
        tok,
        records,
        template=d.template or "bare",
        input_field=d.input_field,
        target_field=d.target_field,
        max_length=options.get("inputs_length", 512),
        max_new_tokens=options.get("targets_length") or 64,
    )
