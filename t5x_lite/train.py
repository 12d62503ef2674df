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
import json
import logging
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
    resolve,
    run_config,
    steps,
)
from t5x_lite import config as config_lib

log = logging.getLogger(__name__)

NonFiniteLossError = loop.NonFiniteLossError  # raised by the loop; here for callers' imports
FACTS = "run_facts.json"  # what the run trains: method, parameter counts, optimizer-state bytes


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


def make_program(config: ml_collections.ConfigDict, objective, vocab_size: int) -> Program:
    """Mesh, optimizer, abstract state and its shardings, and the jitted train / eval steps."""
    mesh = mesh_lib.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data
    )
    rules = rules_lib.get_rules(config.mesh.rules)
    rules_lib.check_batch(config.train.batch_size, mesh)
    tx, schedule = resolve.optimizer(config)

    cfg = resolve.model_config(config, vocab_size)
    method = resolve.adapter_method(config)
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
    _, loss_kwargs = resolve.loss_options(config, objective)
    train_step = jax.jit(
        rules_lib.under(
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
        rules_lib.under(
            mesh, rules, steps.make_eval_step(eval_graphdef, objective.loss_fn, **loss_kwargs)
        ),
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
        if (
            kind == "native"
            and not checkpoint.load_json_item(where, checkpoint.ADAPTERS)
            and checkpoint.load_model_config(where).scan_layers == program.model_config.scan_layers
        ):
            loaded = checkpoint.restore_params(where, target)  # each shard where it belongs
        else:  # safetensors, an adapted run's base (LoRA merged), or the other layer layout:
            # read on the host, converted, laid out
            runtime = resolve.runtime_overrides(config)
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


def make_pipeline(
    config, objective, tok, spec: data.DataSpec, *, train: bool, stats: data.ReadStats
):
    """The grain dataset `spec` names, for this process, and its truncation counter."""
    if config.train.batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={config.train.batch_size} is not divisible by the "
            f"number of processes ({jax.process_count()})"
        )
    options, _ = resolve.loss_options(config, objective)
    source = data.open_source(spec, stats)
    _, max_tokens = objective.make_stages(tok, seed=config.train.seed, **options)
    counter = data.TruncationCounter(max_tokens)
    ds = data.make_dataset(
        source,
        tokenizer=tok,
        fields=resolve.input_fields(config, objective),
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
        worker_count=config.data.get("worker_count", 0) if train else 0,
    )
    return ds, counter


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None, objective) -> dict:
    """Train `config` in `workdir` (resuming if it holds checkpoints); returns last metrics."""
    workdir = Path(workdir or config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config.workdir = str(workdir)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(run_config.to_json(config))

    tok = resolve.load_tokenizer(config)
    resolve.keep_tokenizer(workdir, tok)
    program = make_program(config, objective, tok.vocab_size)
    mesh, shardings = program.mesh, program.shardings
    stats = data.ReadStats()
    train_ds, truncation = make_pipeline(
        config, objective, tok, resolve.data_spec(config, train=True), train=True, stats=stats
    )
    train_iter = iter(train_ds)
    eval_ds, eval_spec = None, resolve.data_spec(config, train=False)
    if eval_spec is not None:
        eval_ds = make_pipeline(config, objective, tok, eval_spec, train=False, stats=stats)[0]
    state = init_state(program, config)
    model, _ = nnx.merge(program.graphdef, state)
    method = adapters.spec(model)
    trainable, total = lora.count(model, trainable=program.trainable)
    facts = dict(
        method=method,
        trainable_params=trainable,
        all_params=total,
        optimizer_state_bytes=sum(x.nbytes for x in jax.tree.leaves(state[1])),
    )
    log.info("%s", lora.describe(model, trainable=program.trainable))
    log.info("optimizer state: %d bytes", facts["optimizer_state_bytes"])
    if jax.process_index() == 0:
        (workdir / FACTS).write_text(json.dumps(facts, indent=2) + "\n")
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
        saved = checkpoint.load_model_config(ckpts.directory, step=start).scan_layers
        if saved != program.model_config.scan_layers:  # the optimizer state has that layout too
            raise ValueError(
                f"{ckpts.directory} was trained with model.scan_layers={saved}: resume with the "
                f"same, or start a new workdir with model.init_from={str(workdir)!r} (converted)"
            )
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
            step_seconds=elapsed / max(window["steps"], 1),
            mfu=step_flops[0] * window["steps"] / elapsed / peak,
            truncated_examples=truncation.truncated,
            skipped_records=stats.skipped_records,
        )
        window.update(tokens=0.0, steps=0, start=time.perf_counter())
        return out

    evaluate = None
    if eval_ds is not None:
        generated = generation_eval(config, program, tok, eval_spec)

        def evaluate(state) -> dict:
            out = _evaluate(eval_step, to_global, state[0], eval_ds, config.train.eval_steps)
            return out if generated is None else {**out, **generated(state[0])}

    cadence = loop.Cadence(
        total_steps=config.train.steps,
        log_every=config.train.log_every,
        checkpoint_every=config.checkpoint.every,
        eval_every=config.train.eval_every,
    )
    result = loop.run_in(
        workdir,
        ckpts,
        state,
        step_fn,
        start=start,
        cadence=cadence,
        save=save,
        progress_bar=config.train.progress_bar,
        extra_metrics=throughput,
        evaluate=evaluate,
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


def generation_eval(config, program: Program, tok, spec: data.DataSpec):
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

    records = data.read_records(spec, limit=n)
    max_length = config.objective.get("inputs_length", 512)

    def generated(model_state) -> dict:
        model = nnx.merge(program.eval_graphdef, model_state)
        scores = resolve.generation_scores(config, model, tok, records)
        if scores["num_truncated"]:
            log.info(
                "generation eval: %d of %d inputs cut to fit %d tokens",
                scores["num_truncated"],
                scores["num_examples"],
                max_length,
            )
        return {f"eval_{k}": scores[k] for k in (*icl.ROUGE_TYPES, "bleu")}

    return generated


def _evaluate(eval_step, to_global, model_state, eval_ds, num_batches: int) -> dict:
    totals: dict[str, float] = {}
    it = iter(eval_ds)
    for _ in range(num_batches):
        m = eval_step(model_state, to_global(next(it)))
        for k in ("loss", "accuracy"):
            totals[k] = totals.get(k, 0.0) + float(m[k]) / num_batches
    return {f"eval_{k}": v for k, v in totals.items()}
