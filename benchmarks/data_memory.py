"""Host memory and input speed of pre-training over a streamed corpus: multi-GB vs 20 MB.

    python benchmarks/data_memory.py                 # 2 GB vs 20 MB of JSONL shards
    python benchmarks/data_memory.py --quick         # 40 MB vs 4 MB, a few steps (smoke)

Method:

- Two corpora of JSONL shards are written to a temp dir: the embedded corpus's dialogues
  repeated (each record with its own id) to `--big-gb` GB in 16 shards, and to `--small-mb` MB
  in 4 shards.
- For each, `t5x-lite train` pre-trains t5-tiny with span corruption (`data.source=jsonl`,
  `data.path=DIR/*.jsonl`, batch 32) for `--steps` steps in a child process; its peak resident
  memory is the child's own `ru_maxrss` (`os.wait4`). Memory that does not grow with the corpus
  means the two peaks differ by little (goal: < 300 MB).
- The train step's consumption is batch_size / step_seconds at the last logged step.
- The pipeline's own rate: the same training pipeline (`train.make_pipeline`) over the big
  corpus, batches pulled as fast as it gives them, in this process (`data.worker_count=0`) and
  with 2 grain worker processes; examples/s over `--pipeline-batches` batches after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 32


def write_corpus(root: Path, total_bytes: int, shards: int) -> int:
    """JSONL shards `root/part-i.jsonl` of about `total_bytes`; returns the record count."""
    from t5x_lite import corpus

    base = [json.dumps(r) for r in corpus.splits()["train"]]
    root.mkdir(parents=True)
    files = [open(root / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(shards)]
    written, n = 0, 0
    while written < total_bytes:
        chunk = "".join(f'{{"id": {n + i}, {line[1:]}\n' for i, line in enumerate(base))
        files[(n // len(base)) % shards].write(chunk)
        written, n = written + len(chunk), n + len(base)
    for f in files:
        f.close()
    return n


def train_run(data_dir: Path, workdir: Path, steps: int) -> dict:
    """`t5x-lite train` over `data_dir/*.jsonl` in a child; its peak RSS and last step time."""
    argv = [
        sys.executable,
        "-m",
        "t5x_lite",
        "train",
        f"--workdir={workdir}",
        "--config.data.source=jsonl",
        f"--config.data.path={data_dir}/*.jsonl",
        "--config.data.eval_split=",
        f"--config.train.steps={steps}",
        f"--config.train.batch_size={BATCH}",
        f"--config.train.log_every={max(steps // 2, 1)}",
        "--config.train.progress_bar=false",
        f"--config.checkpoint.every={steps}",
    ]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise RuntimeError(f"train over {data_dir} failed:\n{child.stderr.read()[-3000:]}")
    last = [json.loads(line) for line in open(workdir / "metrics.jsonl")][-1]
    return dict(
        peak_rss_mb=usage.ru_maxrss / 1024, step_examples_per_s=BATCH / last["step_seconds"]
    )


def pipeline_rate(data_dir: Path, workers: int, batches: int) -> float:
    """Examples/s the training pipeline gives over `data_dir`, with `workers` processes."""
    import objectives
    from configs import base
    from t5x_lite import data, resolve, train

    config = base.get_config()
    config.data.source, config.data.path = "jsonl", f"{data_dir}/*.jsonl"
    config.data.worker_count, config.train.batch_size = workers, BATCH
    objective = objectives.get(config.objective.name)
    tok = resolve.load_tokenizer(config)
    spec = resolve.data_spec(config, train=True)
    ds, _ = train.make_pipeline(config, objective, tok, spec, train=True, stats=data.ReadStats())
    it = iter(ds)
    for _ in range(max(batches // 10, 2)):  # warm-up: workers started, windows filled
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--small-mb", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pipeline-batches", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="40 MB vs 4 MB, 6 steps")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.big_gb, args.small_mb, args.steps, args.pipeline_batches = 0.04, 4, 6, 20

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {}
        for name, size, shards in (
            ("big", args.big_gb * 2**30, 16),
            ("small", args.small_mb * 2**20, 4),
        ):
            start = time.perf_counter()
            n = write_corpus(tmp / name, int(size), shards)
            wrote = time.perf_counter() - start
            runs[name] = dict(
                bytes=sum(f.stat().st_size for f in (tmp / name).iterdir()),
                records=n,
                **train_run(tmp / name, tmp / f"run_{name}", args.steps),
            )
            print(
                f"{name}: {runs[name]['bytes'] / 2**20:,.0f} MB, {n:,} records "
                f"(written in {wrote:.0f} s)",
                flush=True,
            )
        rates = {w: pipeline_rate(tmp / "big", w, args.pipeline_batches) for w in (0, 2)}

    big, small = runs["big"], runs["small"]
    diff = big["peak_rss_mb"] - small["peak_rss_mb"]
    step = big["step_examples_per_s"]
    print()
    print("| corpus | size | records | peak host RSS (MB) | train step consumes (examples/s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        print(
            f"| {name} | {r['bytes'] / 2**20:,.0f} MB | {r['records']:,} | "
            f"{r['peak_rss_mb']:,.0f} | {r['step_examples_per_s']:,.1f} |"
        )
    print()
    print(f"peak RSS, big - small: {diff:+,.0f} MB (goal: < 300 MB)")
    print("| pipeline | examples/s | / train step's consumption |")
    print("| --- | ---: | ---: |")
    for w, rate in rates.items():
        print(f"| {w} worker processes | {rate:,.0f} | {rate / step:,.1f}x |")
    if args.json:
        result = dict(runs=runs, rss_diff_mb=diff, pipeline_examples_per_s=rates)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
