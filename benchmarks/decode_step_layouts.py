"""What the decoding-step layouts buy: our generator with and without them, in one process.

    python benchmarks/decode_step_layouts.py            # t5-small, inputs 512, 64 new tokens
    python benchmarks/decode_step_layouts.py --quick    # t5-tiny, inputs 64, 8 new tokens

Inside the decoding loop on CPU, `layers.project` multiplies few rows by a weight matrix in
the layouts XLA:CPU reads fastest (`layers.decoding_step`; see the README's Generation
section). This script compiles `decoding.generate` twice on the same weights: once as it is,
once with `layers.step_layouts` answering False while the programs are traced (plain products
everywhere). The baseline model carries a marker attribute, so that its programs are cached
apart from the other's. Then it times the two alternately, `--repeats` rounds, greedy, per
batch, and prints each one's median ms per generated step (seconds per call / new tokens) and
the median over rounds of the per-round ratio, with layouts over without. Both must give the
same tokens (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode_throughput as bench  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite import config, hf, hostmem, layers  # noqa: E402

FULL = dict(preset="t5-small", inputs_length=512, new_tokens=64, repeats=9)
QUICK = dict(preset="t5-tiny", inputs_length=64, new_tokens=8, repeats=2)


def compiled_pair(path, ids, new_tokens):
    """Calls of our generator with and without the step layouts (compiled here)."""
    plain = hf.from_pretrained(path)
    plain._benchmark_variant = "no step layouts"  # static: its own compiled programs
    with_layouts = hf.from_pretrained(path)
    mask = np.ones_like(ids)
    greedy = dict(temperature=0.0)
    traced = layers.step_layouts
    layers.step_layouts = lambda rows: False
    try:
        without = bench.ours_call(plain, ids, mask, greedy, new_tokens, seed=0)
    finally:
        layers.step_layouts = traced
    return bench.ours_call(with_layouts, ids, mask, greedy, new_tokens, seed=0), without


def main(argv=None):
    hostmem.retain_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else FULL
    repeats = args.repeats or shapes["repeats"]
    cfg = config.get_preset(shapes["preset"], dropout_rate=0.0)
    rows = []
    with tempfile.TemporaryDirectory() as path:
        bench.save_random_hf(cfg, path)
        for batch in [int(b) for b in args.batches.split(",")]:
            rng = np.random.default_rng(batch)
            ids = rng.integers(2, cfg.vocab_size, (batch, shapes["inputs_length"]), np.int32)
            calls = compiled_pair(path, ids, shapes["new_tokens"])
            outs = [call() for call in calls]
            if not np.array_equal(*outs):
                raise SystemExit(f"batch {batch}: the two variants gave different tokens")
            times = [[], []]
            for _ in range(repeats):
                for i, call in enumerate(calls):
                    start = time.perf_counter()
                    call()
                    times[i].append(time.perf_counter() - start)
            ms = [1e3 * statistics.median(t) / shapes["new_tokens"] for t in times]
            ratio = statistics.median(b / a for a, b in zip(*times, strict=True))
            rows.append((batch, *ms, ratio))
            print(f"  batch {batch}: with {ms[0]:.2f} ms/step, without {ms[1]:.2f}", flush=True)
    print(
        f"\n{shapes['preset']}, inputs {shapes['inputs_length']}, {shapes['new_tokens']} new "
        f"tokens, greedy, float32, {repeats} alternating rounds; same tokens both ways\n"
    )
    print("| batch | with step layouts ms/step | without ms/step | speed-up (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for batch, with_ms, without_ms, ratio in rows:
        print(f"| {batch} | {with_ms:.2f} | {without_ms:.2f} | {ratio:.3f}x |")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # as decode_throughput.py; the layouts are CPU's
    main()
