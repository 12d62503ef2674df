"""The training loop: `train_and_evaluate(config, workdir, objective)`.

    from t5x_lite import run_config, train
    import objectives
    config = run_config.load("configs/t5_span_corruption.py:size=tiny")
    train.train_and_evaluate(config, "runs/demo", objectives.get(config.objective.name))

Builds the tokenizer, the grain pipelines, the model and an `nnx.Optimizer`, restores the latest
checkpoint in `workdir/checkpoints` if there is one (model, optimizer, step, data iterator), and
runs the jitted step. Writes `workdir/config.json`, `workdir/metrics.jsonl` (one JSON object per
logged step), TensorBoard events and Orbax checkpoints. SIGTERM saves at the current step and
returns; a non-finite loss stops the run with the last good checkpoint kept. The ConfigDict ends
here: everything below receives plain values.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from t5x_lite import (
    adapters,
    checkpoint,
    conversion,
    data,
    flops,
    loop,
    lora,
    models,
    optim,
    prompt_tuning,
    prompts,
    run_config,
    steps,
)
from t5x_lite import config as config_lib
from t5x_lite import metrics as metrics_lib
from t5x_lite import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

NonFiniteLossError = loop.NonFiniteLossError  # raised by the loop; here for callers' imports


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


# ModelConfig fields that a checkpoint's weights do not fix, so they may change on top of it.
RUNTIME_FIELDS = ("dtype", "param_dtype", "dropout_rate")
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


@dataclasses.dataclass
class Program:
    """Everything compiled for a run: mesh, shardings, the jitted steps, state structure."""

    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef  # (model, optimizer), train mode
    eval_graphdef: nnx.GraphDef  # the model alone, eval mode
    abstract_state: nnx.State  # shapes and dtypes of nnx.state((model, optimizer))
    shardings: nnx.State
    batch_sharding: jax.sharding.NamedSharding
    train_step: Callable
    eval_step: Callable
    model_config: config_lib.ModelConfig
    create: Callable  # () -> (model, optimizer): builds or loads, run under jit or eval_shape
    trainable: nnx.filterlib.Filter  # what the optimizer updates: nnx.Param, or nnx.LoRAParam

    def to_global(self, batch: dict) -> dict:
        """This process's rows -> one global array per feature, split over the mesh."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in batch.items()
        }


def loss_options(config: ml_collections.ConfigDict, objective) -> tuple[dict, dict]:
    """(the objective's validated options, loss keyword arguments) from `config.objective`; a
    key the objective does not have is a ValueError naming it."""
    block = config.objective.to_dict()
    loss_kwargs = dict(z_loss=block.pop("z_loss"), label_smoothing=block.pop("label_smoothing"))
    block.pop("name")
    return dataclasses.asdict(objective.options(**block)), loss_kwargs


def make_program(config: ml_collections.ConfigDict, objective, vocab_size: int) -> Program:
    """Mesh, optimizer, abstract state and its shardings, and the jitted train / eval steps."""
    mesh = mesh_lib.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data
    )
    rules = rules_lib.get_rules(config.mesh.rules)
    rules_lib.check_batch(config.train.batch_size, mesh)
    tx, schedule = optim.make_optimizer(
        config.optim.name,
        learning_rate=config.optim.learning_rate,
        schedule=config.optim.schedule,
        warmup_steps=config.optim.warmup_steps,
        total_steps=config.train.steps,
        end_learning_rate_fraction=config.optim.end_learning_rate_fraction,
        weight_decay=config.optim.weight_decay,
        b1=config.optim.b1,
        b2=config.optim.b2,
        grad_clip=config.optim.grad_clip,
    )

    cfg = model_config(config, vocab_size)
    method = adapter_method(config)
    trainable = adapters.trainable(method)

    def create():  # random init; `init_state` then reads `model.init_from`'s weights over it
        model = adapters.apply(models.build(cfg, seed=config.train.seed), method)
        model.train()
        return model, nnx.Optimizer(model, tx, wrt=trainable)

    if cfg.architecture != objective.architecture:
        source = config.model.init_from
        origin = f"init_from={source!r}" if source else f"preset={config.model.preset!r}"
        raise ValueError(
            f"objective.name={config.objective.name!r} trains a {objective.architecture} model, "
            f"but model.{origin} is {cfg.architecture}"
        )
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
    shardings = rules_lib.state_shardings(abstract, mesh, rules)
    abstract_model = nnx.merge(graphdef, abstract)[0]
    abstract_model.eval()
    eval_graphdef = nnx.graphdef(abstract_model)
    batch_sharding = rules_lib.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    _, loss_kwargs = loss_options(config, objective)
    train_step = jax.jit(
        _under(
            mesh,
            rules,
            steps.make_train_step(
                graphdef,
                objective.loss_fn,
                schedule=schedule,
                grad_accum_steps=config.optim.grad_accum_steps,
                seed=config.train.seed,
                wrt=trainable,
                **loss_kwargs,
            ),
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        _under(mesh, rules, steps.make_eval_step(eval_graphdef, objective.loss_fn, **loss_kwargs)),
        in_shardings=(shardings[0], batch_sharding),
        out_shardings=replicated,
    )
    return Program(
        mesh,
        graphdef,
        eval_graphdef,
        abstract,
        shardings,
        batch_sharding,
        train_step,
        eval_step,
        cfg,
        create,
        trainable,
    )


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


def init_state(program: Program, config: ml_collections.ConfigDict) -> nnx.State:
    """The (model, optimizer) state laid out over the mesh, computed shard by shard on the
    devices; with `model.init_from`, its parameters then replaced by the source's, read
    outside any trace into the same shardings."""
    state = jax.jit(lambda: nnx.split(program.create())[1], out_shardings=program.shardings)()
    if config.model.init_from:  # the base model's parameters, not the new adapters
        params = nnx.filter_state(state[0], adapters.BASE)
        target = nnx.to_pure_dict(params)  # the sharded arrays: shapes, dtypes, shardings
        source = config.model.init_from
        kind, where = conversion.locate(source, flag="model.init_from")
        if kind == "native" and not checkpoint.load_json_item(where, checkpoint.ADAPTERS):
            loaded = checkpoint.restore_params(where, target)  # each shard where it belongs
        else:  # safetensors, or an adapted run's base (LoRA merged): read on the host, laid out
            runtime = {k: v for k, v in model_overrides(config).items() if k in RUNTIME_FIELDS}
            model = conversion.load_model(source, flag="model.init_from", **runtime)
            if lora.config_of(model) is not None:
                lora.merge(model)
            base = nnx.state(model, adapters.BASE)
            loaded = jax.device_put(
                nnx.to_pure_dict(base), jax.tree.map(lambda x: x.sharding, target)
            )
        nnx.replace_by_pure_dict(params, loaded)
        nnx.update(state[0], params)
    return state


def data_spec(config: ml_collections.ConfigDict, *, train: bool) -> data.DataSpec | None:
    """What to read for training, or for eval (None: eval is off, and the log says why).
    Eval reads `data.eval_path` if set, else `data.eval_split` of the training source; a
    single-file `data.path` has no eval split, so there it needs `data.eval_path`."""
    d = config.data
    common = dict(
        input_field=d.input_field, target_field=d.target_field, skip_bad_records=d.skip_bad_records
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
            "jsonl",
            d.eval_path,
            split,
            **common,
            path_key="data.eval_path",
            split_key="data.eval_split",
        )
    if not d.eval_split:
        log.info("eval is off: data.eval_split and data.eval_path are empty")
        return None
    if d.source == "jsonl" and data.is_single_file(d.path):
        log.warning(
            "eval is off: data.path=%s is one file, with no %r split; set data.eval_path to a "
            "held-out file (or to data.path to evaluate on the training file)",
            d.path,
            d.eval_split,
        )
        return None
    return data.DataSpec(d.source, d.path, d.eval_split, **common, split_key="data.eval_split")


def make_pipeline(
    config, objective, tok, spec: data.DataSpec, *, train: bool, stats: data.ReadStats
):
    """The grain dataset `spec` names, for this process, and its truncation counter."""
    if config.train.batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={config.train.batch_size} is not divisible by the "
            f"number of processes ({jax.process_count()})"
        )
    options, _ = loss_options(config, objective)
    records = data.read_records(spec, stats)
    _, max_tokens = objective.make_stages(tok, seed=config.train.seed, **options)
    counter = data.TruncationCounter(max_tokens)
    ds = data.make_dataset(
        records,
        tokenizer=tok,
        fields=input_fields(config, objective, records),
        stages=lambda shard: objective.make_stages(
            tok, seed=config.train.seed + 7919 * shard, **options
        )[0],
        batch_size=config.train.batch_size,
        num_shards=config.data.num_shards,
        seed=config.train.seed,
        shuffle=train and config.data.shuffle,
        repeat=True,
        truncation=counter,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return ds, counter


def input_fields(config, objective, records: list[dict]) -> dict:
    """The objective's {feature: record field}; with `data.template`, the feature that reads
    `data.input_field` gets the template's prompt around that field's text instead."""
    d = config.data
    fields = objective.fields(d.input_field, d.target_field)
    if not d.template:
        return fields
    template = prompts.get_template(d.template)
    data.check_fields(records, [d.input_field])

    def render(record: dict) -> str:
        return template.render({template.truncate_field: record[d.input_field]}, with_answer=False)

    return {k: render if f == d.input_field else f for k, f in fields.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None, objective) -> dict:
    """Train `config` in `workdir` (resuming if it holds checkpoints); returns last metrics."""
    workdir = Path(workdir or config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config.workdir = str(workdir)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(run_config.to_json(config))

    tok = load_tokenizer(config)
    keep_tokenizer(workdir, tok)
    program = make_program(config, objective, tok.vocab_size)
    mesh, shardings = program.mesh, program.shardings
    stats = data.ReadStats()
    train_ds, truncation = make_pipeline(
        config, objective, tok, data_spec(config, train=True), train=True, stats=stats
    )
    train_iter = iter(train_ds)
    eval_ds, eval_spec = None, data_spec(config, train=False)
    if eval_spec is not None:
        eval_ds = make_pipeline(config, objective, tok, eval_spec, train=False, stats=stats)[0]
    state = init_state(program, config)
    model, _ = nnx.merge(program.graphdef, state)
    method = adapters.spec(model)
    if method is not None:
        log.info("%s: %s", method, lora.describe(model, trainable=program.trainable))
    log.info("optimizer state: %d bytes", sum(x.nbytes for x in jax.tree.leaves(state[1])))
    if mesh.size > 1:
        fraction = rules_lib.fraction_sharded(state[0], shardings[0])
        log.info(
            "%.1f%% of parameter elements are sharded (mesh %s, rules %s)",
            100 * fraction,
            dict(mesh.shape),
            config.mesh.rules,
        )
        if config.mesh.fsdp > 1 and fraction < 0.98:  # MaxText's check, as a warning
            log.warning(
                "only %.1f%% of parameter elements are sharded under mesh.fsdp=%d",
                100 * fraction,
                config.mesh.fsdp,
            )
    train_step, eval_step, to_global = program.train_step, program.eval_step, program.to_global
    process_count = jax.process_count()

    # ---- checkpoints: restore the latest step if any
    ckpts = checkpoint.TrainCheckpoints(
        workdir / "checkpoints",
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    start = ckpts.latest_step or 0
    if ckpts.latest_step is not None:
        state[0], state[1] = ckpts.restore(start, state[0], state[1], train_iter)
        log.info("resumed from %s at step %d", ckpts.directory, start)

    def save(step: int, state) -> None:
        ckpts.save(
            step,
            state[0],
            state[1],
            model_config=program.model_config,
            data_iterator=train_iter,
            run_config=config.to_dict(),
            adapters=method,
        )

    # ---- loop
    window = {"tokens": 0.0, "steps": 0, "start": time.perf_counter()}
    peak = flops.peak_flops_per_device(config.train.peak_flops_per_device) * program.mesh.size
    step_flops = []  # model FLOPs of one step, from the first batch's (fixed) shapes

    def step_fn(state):
        batch = next(train_iter)
        state, metrics = train_step(state, to_global(batch))
        window["tokens"] += objective.num_tokens(batch)
        window["steps"] += 1
        if not step_flops:
            cfg = program.model_config
            per_example = flops.train_flops_per_example(cfg, **models.lengths(cfg, batch))
            step_flops.append(config.train.batch_size * per_example)
        return state, metrics

    def throughput(step: int) -> dict:
        elapsed = time.perf_counter() - window["start"]
        out = dict(
            tokens_per_second=window["tokens"] * process_count / elapsed,
            mfu=step_flops[0] * window["steps"] / elapsed / peak,
            truncated_examples=truncation.truncated,
            skipped_records=stats.skipped_records,
        )
        window.update(tokens=0.0, steps=0, start=time.perf_counter())
        return out

    evaluate = None
    if eval_ds is not None:
        generated = generation_eval(config, objective, program, tok, eval_spec)

        def evaluate(state) -> dict:
            out = _evaluate(eval_step, to_global, state[0], eval_ds, config.train.eval_steps)
            return out if generated is None else {**out, **generated(state[0])}

    cadence = loop.Cadence(
        total_steps=config.train.steps,
        log_every=config.train.log_every,
        checkpoint_every=config.checkpoint.every,
        eval_every=config.train.eval_every,
    )
    writer = metrics_lib.MetricsWriter(
        workdir,
        resume_step=start,
        total_steps=config.train.steps,
        progress_bar=config.train.progress_bar,
    )
    with ckpts, writer:
        result = loop.run(
            state,
            step_fn,
            start=start,
            cadence=cadence,
            writer=writer,
            save=save,
            last_saved=lambda: ckpts.latest_step,
            extra_metrics=throughput,
            evaluate=evaluate,
            where=str(ckpts.directory),
        )

    nnx.update(model, result.state[0])
    model.eval()
    adapter = workdir / "adapter"  # the adapter alone, for adapters.load / to_peft
    if method is not None and not result.preempted:
        if not adapter.is_dir() or checkpoint.latest_step(adapter) != result.step:
            adapters.save(model, adapter, step=result.step)
    # The example runs outside the mesh on host inputs: single-process runs only.
    if not result.preempted and eval_ds is not None and jax.process_count() == 1:
        print(objective.describe_example(model, tok, next(iter(eval_ds))))
    return result.metrics


def generation_eval(config, objective, program: Program, tok, spec: data.DataSpec):
    """`model_state -> {eval_rouge1, ..., eval_bleu}` from greedy generation on the first
    `train.generate_examples` records of `spec` (`icl.score_generation`), or None when off."""
    n = config.train.generate_examples
    if not n:
        return None
    if not models.assembly(program.model_config).generates:
        raise ValueError(
            f"train.generate_examples={n}: a {program.model_config.architecture} model does "
            "not generate; set it to 0"
        )
    if jax.process_count() > 1:
        log.warning("train.generate_examples is single-process only; off in this run")
        return None
    from t5x_lite import icl

    records = data.read_records(spec)[:n]
    options, _ = loss_options(config, objective)
    d = config.data

    def generated(model_state) -> dict:
        scores = icl.score_generation(
            nnx.merge(program.eval_graphdef, model_state),
            tok,
            records,
            template=d.template or "bare",
            input_field=d.input_field,
            target_field=d.target_field,
            max_length=options.get("inputs_length", 512),
            max_new_tokens=options.get("targets_length") or 64,
        )
        return {f"eval_{k}": v for k, v in scores.items() if k != "num_examples"}

    return generated


def _under(mesh, rules, fn):
    """`fn` traced with activation sharding constraints for `mesh` and `rules`."""

    def traced(*args):
        with rules_lib.activation_sharding(mesh, rules):
            return fn(*args)

    return traced


def _evaluate(eval_step, to_global, model_state, eval_ds, num_batches: int) -> dict:
    totals: dict[str, float] = {}
    it = iter(eval_ds)
    for _ in range(num_batches):
        m = eval_step(model_state, to_global(next(it)))
        for k in ("loss", "accuracy"):
            totals[k] = totals.get(k, 0.0) + float(m[k]) / num_batches
    return {f"eval_{k}": v for k, v in totals.items()}
