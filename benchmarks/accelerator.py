"""One command on whatever device JAX finds: train tokens/s and MFU, decode tokens/s, peak memory.

    python benchmarks/accelerator.py                  # t5-v1_1-base and -large, bfloat16
    python benchmarks/accelerator.py --quick          # t5-tiny, short: runs on CPU in the tests

Method:

- Train: the `t5x-lite train` step (`steps.make_train_step`, seq2seq loss, AdamW) on random
  tokens, inputs 512 -> targets 114, in `--dtype` (bfloat16), for each preset and each setting
  of a short sweep: `model.remat` in (none, dots_saveable, full) x `model.scan_layers` (unrolled,
  scanned) x global batch in `--batches`.
  A setting that does not fit the device is skipped. Tokens/s counts inputs + targets; MFU is
  the analytic model FLOPs (`t5x_lite.flops`, 6 x parameters x tokens plus attention) per second
  over the device's dense bf16 peak (`flops.PEAK_FLOPS` by device kind; on a CPU, a measured
  float32 matmul). The best setting per preset is reported.
- Decode: `decoding.generate`, greedy, `--new-tokens` new tokens exactly, batch 1 and 64.
- Peak device memory: the device's `peak_bytes_in_use` after the runs (GPU and TPU; a CPU
  does not report it).

Prints a table and writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite import config, decoding, flops, models  # noqa: E402

# (model.remat, model.scan_layers) settings of the sweep; --quick tries the first and last.
SWEEP = [(r, s) for r in ("none", "dots_saveable", "full") for s in (False, True)]


def train_rate(cfg, batch: int, inputs: int, targets: int, steps: int) -> dict:
    """Tokens/s and MFU of the train step for `cfg` at `batch`, or None if it does not fit."""
    from train_throughput import batch_for, time_ours

    model = models.build(cfg, seed=0)
    try:
        seconds, loss, _ = time_ours(model, batch_for(cfg, batch, inputs, targets), steps)
    except Exception as e:  # noqa: BLE001 - XLA's out-of-memory error, by message
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
            return None
        raise
    model_flops = batch * flops.train_flops_per_example(
        cfg, inputs_length=inputs, targets_length=targets
    )
    return dict(
        tokens_per_s=batch * (inputs + targets) / seconds,
        step_seconds=seconds,
        flops_per_s=model_flops / seconds,
        loss=loss,
    )


def decode_rate(cfg, batch: int, inputs: int, new_tokens: int, repeats: int = 3) -> float:
    """New tokens/s of greedy `decoding.generate` at `batch`."""
    model = models.build(cfg, seed=0)
    model.eval()
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size - 100, (batch, inputs))
    mask = np.ones_like(ids)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, attention_mask=mask)
    call = lambda: jax.block_until_ready(decoding.generate(model, ids, **kwargs))
    call()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return batch * new_tokens / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="t5-v1_1-base,t5-v1_1-large")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batches", default="32,64,128", help="global batches to sweep")
    parser.add_argument("--inputs-length", type=int, default=512)
    parser.add_argument("--targets-length", type=int, default=114)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--decode-batches", default="1,64")
    parser.add_argument("--quick", action="store_true", help="t5-tiny, short lengths (CPU)")
    parser.add_argument("--out", default="accelerator.json")
    args = parser.parse_args()
    settings = SWEEP
    if args.quick:
        args.presets, args.batches, args.steps = "t5-tiny", "4", 2
        settings = [SWEEP[0], SWEEP[-1]]
        args.inputs_length, args.targets_length, args.new_tokens = 32, 8, 4
        args.decode_batches = "1,4"

    device = jax.devices()[0]
    peak = flops.peak_flops_per_device()
    print(f"device: {device.device_kind} x {jax.device_count()}; peak {peak / 1e12:.1f} TFLOP/s")
    results = dict(device=device.device_kind, devices=jax.device_count(), peak_flops=peak)
    results["presets"] = {}
    for name in args.presets.split(","):
        cfg = config.get_preset(name, dtype=args.dtype, dropout_rate=0.0)
        sweep = []
        for remat, scan in settings:
            for batch in map(int, args.batches.split(",")):
                run = train_rate(
                    cfg.replace(remat=remat, scan_layers=scan),
                    batch,
                    args.inputs_length,
                    args.targets_length,
                    args.steps,
                )
                if run is not None:
                    run.update(remat=remat, scan=scan, batch=batch, mfu=run["flops_per_s"] / peak)
                    sweep.append(run)
                    print(
                        f"{name} remat={remat} scan_layers={scan} batch={batch}: "
                        f"{run['tokens_per_s']:,.0f} tokens/s, MFU {run['mfu']:.1%}",
                        flush=True,
                    )
        decode = {
            b: decode_rate(cfg, b, args.inputs_length, args.new_tokens)
            for b in map(int, args.decode_batches.split(","))
        }
        best = max(sweep, key=lambda r: r["tokens_per_s"]) if sweep else None
        results["presets"][name] = dict(best=best, sweep=sweep, decode_tokens_per_s=decode)
    stats = device.memory_stats() or {}
    results["peak_device_bytes"] = stats.get("peak_bytes_in_use")

    print(f"\n{args.dtype}, inputs {args.inputs_length} -> targets {args.targets_length}")
    print(
        "| preset | best remat | scan_layers | batch | train tokens/s | MFU | "
        "decode tokens/s (batch) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for name, r in results["presets"].items():
        b = r["best"] or dict(remat="-", scan="-", batch=0, tokens_per_s=0.0, mfu=0.0)
        dec = ", ".join(f"{v:,.0f} ({k})" for k, v in r["decode_tokens_per_s"].items())
        print(
            f"| {name} | {b['remat']} | {b['scan']} | {b['batch']} | {b['tokens_per_s']:,.0f} | "
            f"{b['mfu']:.1%} | {dec} |"
        )
    peak_bytes = results["peak_device_bytes"]
    print(f"peak device memory: {'n/a' if peak_bytes is None else f'{peak_bytes / 2**30:.2f} GiB'}")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
