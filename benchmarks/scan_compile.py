"""Compile time of the train step with the block stack unrolled and scanned (`model.scan_layers`).

    python benchmarks/scan_compile.py                          # t5-v1_1-large, 512 -> 114
    python benchmarks/scan_compile.py --presets t5-tiny --batch 2 --inputs-length 32

The step is `steps.make_train_step` (seq2seq loss, AdamW), lowered and compiled from abstract
state (`nnx.eval_shape`: nothing is initialised or run), batch `--batch`, in `--dtype`. Lowering
(tracing to StableHLO) and XLA's compilation are timed apart. Unrolled, both grow with depth:
every block is traced and compiled again; scanned, one block is. XLA's temp memory of each
compiled step is printed beside. There is no PyTorch peer: eager PyTorch compiles nothing.
Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from objectives import seq2seq  # noqa: E402
from t5x_lite import config, models, steps  # noqa: E402


def compile_seconds(cfg, batch: int, inputs: int, targets: int) -> dict:
    """(lower seconds, compile seconds, XLA temp bytes) of the train step of `cfg`."""

    def create():
        model = models.build(cfg, seed=0)
        model.train()
        return model, nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)

    graphdef, state = nnx.split(nnx.eval_shape(create))
    step = jax.jit(
        steps.make_train_step(graphdef, seq2seq.loss_fn, schedule=optax.constant_schedule(1e-4)),
        donate_argnums=0,
    )
    int32 = jax.numpy.int32
    shapes = dict(inputs=(batch, inputs), targets=(batch, targets), decoder_inputs=(batch, targets))
    abstract_batch = {k: jax.ShapeDtypeStruct(v, int32) for k, v in shapes.items()}
    start = time.perf_counter()
    lowered = step.lower(state, abstract_batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return dict(
        lower_s=lowered_at - start,
        compile_s=done - lowered_at,
        temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="t5-v1_1-large")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs-length", type=int, default=512)
    parser.add_argument("--targets-length", type=int, default=114)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}; {args.dtype}, batch {args.batch}, ", end="")
    print(f"inputs {args.inputs_length} -> targets {args.targets_length}\n")
    print("| preset | layers | scan_layers | lower (s) | compile (s) | total (s) ", end="")
    print("| XLA temp (GiB) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    ratios = {}
    for name in args.presets.split(","):
        cfg = config.get_preset(name, dtype=args.dtype, dropout_rate=0.0)
        totals = {}
        for scan in (False, True):
            r = compile_seconds(
                cfg.replace(scan_layers=scan), args.batch, args.inputs_length, args.targets_length
            )
            totals[scan] = r["lower_s"] + r["compile_s"]
            print(
                f"| {name} | {cfg.num_layers}+{cfg.decoder_layers} | {str(scan).lower()} | "
                f"{r['lower_s']:.1f} | {r['compile_s']:.1f} | {totals[scan]:.1f} | "
                f"{r['temp_bytes'] / 2**30:.2f} |",
                flush=True,
            )
        ratios[name] = totals[False] / totals[True]
    for name, ratio in ratios.items():
        print(f"{name}: the scanned step compiles {ratio:.1f}x faster than the unrolled one")


if __name__ == "__main__":
    main()
