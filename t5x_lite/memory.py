"""How much memory and compute a training config needs, before running it.

    t5x-lite memory --config configs/t5_span_corruption.py:size=base --config.mesh.fsdp=-1

Nothing is allocated: the model and optimizer are built as abstract shapes, the exact train
step that `t5x-lite train` runs is compiled for the configured mesh, and the report puts the
analytic footprint per device next to XLA's own numbers (`memory_analysis()` of the compiled
step) and FLOPs per step (`cost_analysis()`), so a user can size flan-t5-xl on a laptop.

Analytic, per device (B_d = batch per data-parallel shard):
    parameters       sum of parameter shards (float32: 4 bytes per parameter)
    gradients        the same again (float32, sharded like the parameters)
    optimizer state  AdamW: 2 x 4 bytes per parameter (mu, nu); Adafactor: factored row and
                     column second moments (exact shapes from optax, not an approximation)
    activations      what the backward pass keeps, per layer and example:
                     a stack over T tokens     T*(6D + 4NH + 3F) + 3*N*T*T  (F twice if gated)
                     its cross-attention to S  T*(2D + 2NH) + 2S*NH + 3*N*T*S
                     LM head  3*T*V  (logits, softmax, gradient), times B_d and 4 bytes
The familiar "4 bytes per parameter to hold, ~16 to train with AdamW" is the first three rows;
the report also puts the rule of thumb "about 6 x the float32 weights to train with Adam"
beside the exact figure. The activations row assumes `model.remat=none`; XLA's numbers are for
the configured policy.

    t5x-lite memory --choices ...        # XLA's numbers per remat policy and layer layout
    t5x-lite memory --fit 16e9 ...       # the cheapest settings whose step fits 16 GB a device

`fit` tries, cheapest first: the configured mesh, then more of it on `fsdp`; for each, remat
policies by the compute they add (none, dots_with_no_batch_dims_saveable, dots_saveable,
full); for each, the configured `model.scan_layers`, then the other layout; for each, 1, 2,
4, ... micro-batches (`optim.grad_accum_steps`). The first whose compiled step fits is the
answer; if none does, the smallest footprint found, said so.
"""

from __future__ import annotations

import itertools
import math

import jax
import ml_collections
import numpy as np
from flax import nnx

from t5x_lite import data, flops, models, resolve, train
from t5x_lite.config import REMAT_POLICIES, ModelConfig

RULE_OF_THUMB = 6  # training with Adam takes about 6 x the float32 weights (the seed's rule)
REMAT_ORDER = ("none", "dots_with_no_batch_dims_saveable", "dots_saveable", "full")


def _per_device_bytes(abstract: nnx.State, shardings: nnx.State) -> tuple[int, int, int]:
    """(parameter bytes, optimizer-state bytes, parameter count) on one device."""
    params = opt = count = 0
    flat_s = dict(nnx.to_flat_state(shardings))
    for path, var in nnx.to_flat_state(abstract):
        value = var.get_value()
        is_param = path[0] == 0 and isinstance(var, nnx.Param)
        if not hasattr(value, "shape") or not (is_param or path[0] == 1):
            continue  # rng keys and counters of the model
        shard = flat_s[path].shard_shape(value.shape)
        size = math.prod(shard) * np.dtype(value.dtype).itemsize
        if is_param:
            params += size
            count += math.prod(value.shape)
        elif path[0] == 1:
            opt += size
    return params, opt, count


def activation_bytes(
    cfg: ModelConfig,
    batch: int,
    inputs_length: int,
    targets_length: int = 0,
    bytes_per_value: int = 4,
) -> int:
    """The module docstring's estimate of what the backward pass keeps, for `batch` examples."""
    d, nh, n, v = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.num_heads, cfg.vocab_size
    f = cfg.d_ff * (2 if cfg.is_gated else 1)
    runs, head_tokens = models.assembly(cfg).stack_runs(cfg, inputs_length, targets_length)
    per_example = 3 * head_tokens * v
    for run in runs:
        t, s = run.tokens, run.cross_tokens
        per_layer = t * (6 * d + 4 * nh + 3 * f) + 3 * n * t * t
        if s:
            per_layer += t * (2 * d + 2 * nh) + 2 * s * nh + 3 * n * t * s
        per_example += run.layers * per_layer
    return per_example * batch * bytes_per_value


def _abstract_with_shardings(abstract: nnx.State, shardings: nnx.State) -> nnx.State:
    flat_s = dict(nnx.to_flat_state(shardings))
    out = []
    for path, var in nnx.to_flat_state(abstract):
        value = var.get_value()
        if hasattr(value, "shape"):
            value = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=flat_s[path])
        out.append((path, var.replace(value)))
    return nnx.from_flat_state(out)


def analyze(config: ml_collections.ConfigDict, objective) -> dict:
    """Analytic and XLA numbers for one step of `config` (see the module docstring)."""
    tok = resolve.load_tokenizer(config)
    program = train.make_program(config, objective, tok.vocab_size)
    cfg, mesh = program.model_config, program.mesh
    spec = resolve.data_spec(config, train=True)
    ds, _ = train.make_pipeline(config, objective, tok, spec, train=True, stats=data.ReadStats())
    local = next(iter(ds))
    batch = {
        k: jax.ShapeDtypeStruct(
            (config.train.batch_size, *v.shape[1:]), v.dtype, sharding=program.batch_sharding
        )
        for k, v in local.items()
    }
    lengths = models.lengths(cfg, local)

    params, opt, count = _per_device_bytes(program.abstract_state, program.shardings)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    acts = activation_bytes(cfg, config.train.batch_size // data_parallel, **lengths)
    if cfg.dtype == "bfloat16":
        acts //= 2
    compiled = program.train_step.lower(
        _abstract_with_shardings(program.abstract_state, program.shardings), batch
    ).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    per_example = flops.train_flops_per_example(cfg, **lengths)
    return {
        "preset": config.model.preset
        + "".join(
            f" {k}={v}"
            for k, v in resolve.model_overrides(config).items()
            if k not in resolve.RUNTIME_FIELDS
        ),
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "parameters": count,
        # transformers >= 5 ties T5's LM head to the embedding in a fresh model, so its
        # num_parameters() for an untied (v1.1 / Flan) config is this:
        "parameters_tied_head": count
        - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.d_model),
        "parameter_bytes": params,
        "gradient_bytes": params,
        "optimizer_bytes": opt,
        "activation_bytes": acts,
        "analytic_total_bytes": 2 * params + opt + acts,
        "xla_argument_bytes": mem.argument_size_in_bytes,
        "xla_output_bytes": mem.output_size_in_bytes,
        "xla_alias_bytes": mem.alias_size_in_bytes,
        "xla_temp_bytes": mem.temp_size_in_bytes,
        "xla_total_bytes": xla_total,
        "analytic_flops_per_step": per_example * config.train.batch_size,
        "xla_flops_per_step": float(cost.get("flops", 0.0)) * mesh.size,
        "inputs_length": lengths["inputs_length"],
        "targets_length": lengths.get("targets_length", 0),
        "backend": mesh.devices.flat[0].platform,
        "dtype": cfg.dtype,
        "remat": cfg.remat,
        "scan_layers": cfg.scan_layers,
        "rule_of_thumb_bytes": RULE_OF_THUMB * 4 * count // mesh.size,
    }


def with_settings(config: ml_collections.ConfigDict, **settings) -> ml_collections.ConfigDict:
    """A copy of `config` with `remat`, `scan_layers`, `micro_batches` and `fsdp` (mesh.fsdp;
    `mesh.data` takes the rest of the devices) as given."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "remat" in settings:
        config.model.remat = settings["remat"]
    if "scan_layers" in settings:
        config.model.scan_layers = settings["scan_layers"]
    if "micro_batches" in settings:
        config.optim.grad_accum_steps = settings["micro_batches"]
    if "fsdp" in settings:
        config.mesh.fsdp, config.mesh.data = settings["fsdp"], -1
    return config


def choices(config: ml_collections.ConfigDict, objective) -> list[dict]:
    """`analyze` under each remat policy, unrolled and scanned (the config's mesh and
    micro-batches)."""
    return [
        analyze(with_settings(config, remat=r, scan_layers=scan), objective)
        for scan in (False, True)
        for r in REMAT_POLICIES
    ]


def fit(config: ml_collections.ConfigDict, objective, budget: float) -> dict:
    """The cheapest settings (module docstring) whose compiled step needs at most `budget`
    bytes a device: {"fits", "settings", "report", "tried"}; if none fits, the smallest."""
    devices = jax.device_count()
    fsdp_options = [config.mesh.fsdp] + [
        f for f in (2**i for i in range(1, 20)) if f > config.mesh.fsdp and devices % f == 0
    ]
    data_parallel = devices // max(config.mesh.tensor, 1)  # the batch splits over data x fsdp
    micro = [
        m for m in (2**i for i in range(12)) if config.train.batch_size % (m * data_parallel) == 0
    ]
    scan = bool(config.model.scan_layers)
    tried, best = [], None
    for fsdp, remat, scan_layers, m in itertools.product(
        fsdp_options, REMAT_ORDER, (scan, not scan), micro
    ):
        settings = dict(fsdp=fsdp, remat=remat, scan_layers=scan_layers, micro_batches=m)
        report = analyze(with_settings(config, **settings), objective)
        tried.append((settings, report["xla_total_bytes"]))
        if best is None or report["xla_total_bytes"] < best[1]["xla_total_bytes"]:
            best = (settings, report)
        if report["xla_total_bytes"] <= budget:
            return dict(fits=True, settings=settings, report=report, tried=tried)
    return dict(fits=False, settings=best[0], report=best[1], tried=tried)


def format_choices(reports: list[dict]) -> str:
    gib = lambda b: f"{b / 2**30:.3f}"
    lines = [
        "| model.remat | model.scan_layers | XLA temporaries (GiB) | XLA total (GiB) | vs none |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    base = reports[0]["xla_temp_bytes"]
    for r in reports:
        lines.append(
            f"| {r['remat']} | {str(r['scan_layers']).lower()} | {gib(r['xla_temp_bytes'])} | "
            f"{gib(r['xla_total_bytes'])} | "
            f"{r['xla_temp_bytes'] / base - 1:+.0%} |"
        )
    return "\n".join(lines)


def format_fit(result: dict, budget: float) -> str:
    s, r = result["settings"], result["report"]
    flags = (
        f"--config.mesh.fsdp={s['fsdp']} --config.mesh.data=-1 --config.model.remat={s['remat']} "
        f"--config.model.scan_layers={str(s['scan_layers']).lower()} "
        f"--config.optim.grad_accum_steps={s['micro_batches']}"
    )
    total = f"{r['xla_total_bytes'] / 2**30:.3f} GiB a device"
    head = (
        f"fits {budget / 2**30:.3f} GiB a device: {flags} ({total})"
        if result["fits"]
        else f"nothing tried fits {budget / 2**30:.3f} GiB a device ({len(result['tried'])} "
        f"settings); the smallest footprint found: {flags} ({total})"
    )
    return head + "\n\n" + format_report(r)


def format_report(r: dict) -> str:
    gib = lambda b: f"{b / 2**30:8.3f} GiB"
    lines = [
        f"{r['preset']}: {r['parameters']:,} parameters "
        f"({r['parameters_tied_head']:,} with the LM head tied to the embedding); mesh {r['mesh']} "
        f"({r['devices']} devices); inputs {r['inputs_length']}, targets {r['targets_length']}",
        "",
        "per device                 analytic",
        f"  parameters (float32)   {gib(r['parameter_bytes'])}",
        f"  gradients (float32)    {gib(r['gradient_bytes'])}",
        f"  optimizer state        {gib(r['optimizer_bytes'])}",
        f"  activations (est.)     {gib(r['activation_bytes'])}",
        f"  total                  {gib(r['analytic_total_bytes'])}",
        f"  rule of thumb          {gib(r['rule_of_thumb_bytes'])}  (6 x float32 weights)",
        "",
        f"per device                 XLA on {r['backend']} (compiled train step), "
        f"model.remat={r['remat']}, model.scan_layers={str(r['scan_layers']).lower()}",
        f"  arguments              {gib(r['xla_argument_bytes'])}",
        f"  temporaries            {gib(r['xla_temp_bytes'])}",
        f"  outputs not aliased    {gib(r['xla_output_bytes'] - r['xla_alias_bytes'])}",
        f"  total                  {gib(r['xla_total_bytes'])}",
        "",
        f"FLOPs per step: analytic {r['analytic_flops_per_step']:.4g}, "
        f"XLA {r['xla_flops_per_step']:.4g}",
    ]
    if r["backend"] == "cpu" and r["dtype"] != "float32":
        lines.append(
            f"note: XLA:CPU computes {r['dtype']} products in float32 and keeps {r['dtype']} "
            "copies beside them, so its temporaries here overstate what a GPU or TPU needs"
        )
    return "\n".join(lines)
