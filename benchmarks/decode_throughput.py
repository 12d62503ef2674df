"""Generation speed: t5x_lite's jitted generator vs Hugging Face transformers' PyTorch `generate`.

    python benchmarks/decode_throughput.py            # t5-small, inputs 512, 64 new tokens
    python benchmarks/decode_throughput.py --quick    # t5-tiny, inputs 64, 8 new tokens (smoke)

Method, in one process run, float32 on both sides:

- Same weights: a random model of the preset's shapes is built here, exported with
  `t5x_lite.hf.save_pretrained`, and loaded by `transformers`.
- Cases: greedy, and sampling (temperature 1.0, top-k 50), at batch 1 and 8; random input ids
  of `--inputs-length` tokens; exactly `--new-tokens` new tokens on both sides
  (min_new_tokens = max_new_tokens, so EOS cannot end a call early).
- HF runs under `torch.inference_mode()` with its KV cache; ours is `decoding.generate` (the
  prompt pass, then the loop, each one jitted program). One warm-up call each (compiles ours),
  then `--repeats` rounds, each calling every case of a batch once, ours and HF's alternating,
  so both see the same load on a shared machine. Reported: the median call.
- Bound: the encoder pass's FLOPs over the measured float32 matmul peak, plus the bytes every
  step must read (`flops.decode_step_bytes`: decoder weights, LM head, the self-attention cache
  so far, the cross-attention keys and values) over a read bandwidth measured here (best of five
  sums over a 1 GiB float32 buffer). "% of bound" is bound / measured time. The bandwidth this
  probe reads moves between runs on a shared machine; the ratio to HF is the steadier figure.
- Greedy outputs are compared token by token with HF's, as a check of "same weights".

Goal (t5-small, 2 CPU cores): ours / HF >= 1.8 at batch 1 and >= 1.3 at batch 8.
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

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite import config, decoding, flops, hf, hostmem, models  # noqa: E402

FULL = dict(preset="t5-small", inputs_length=512, new_tokens=64, repeats=7, bandwidth_mib=1024)
QUICK = dict(preset="t5-tiny", inputs_length=64, new_tokens=8, repeats=2, bandwidth_mib=64)
CASES = (("greedy", dict(temperature=0.0)), ("sample", dict(temperature=1.0, top_k=50)))
GOAL = {1: 1.8, 8: 1.3}  # ours / HF, by batch


def read_bandwidth(mib: int, repeats: int = 5) -> float:
    """Bytes/s of the fastest of `repeats` numpy sums over a `mib` MiB float32 buffer."""
    buffer = np.random.default_rng(0).random(mib * 2**20 // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best


def ours_call(model, ids, mask, sampling, new_tokens, seed):
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, **sampling)
    kwargs.update(attention_mask=mask, rng=jax.random.key(seed))

    def call():
        return np.asarray(jax.block_until_ready(decoding.generate(model, ids, **kwargs))[0])

    call()  # compile
    return call


def hf_call(model, ids, mask, sampling, new_tokens, seed):
    import torch

    ids, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kwargs = dict(do_sample=False)
    if sampling["temperature"] > 0:
        kwargs = dict(do_sample=True, temperature=sampling["temperature"], top_p=1.0)
        kwargs["top_k"] = sampling.get("top_k", 0)

    def call():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                num_beams=1,
                use_cache=True,
                **kwargs,
            )
        return out.numpy()[:, 1:]  # without the decoder start token

    torch.manual_seed(seed)
    call()  # warm-up
    return call


def time_rounds(calls, repeats):
    """Each call's seconds in each of `repeats` rounds (every call once per round, in order),
    and each call's last output."""
    times, outs = [[] for _ in calls], [None] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            outs[i] = call()
            times[i].append(time.perf_counter() - start)
    return times, outs


def bound_s(cfg, *, batch, inputs_length, new_tokens, bandwidth, peak) -> float:
    """Seconds a call can take at least: encoder FLOPs / peak + per-step bytes / bandwidth."""
    encoder = batch * flops.forward_flops_per_example(cfg, inputs_length=inputs_length)
    read = sum(
        flops.decode_step_bytes(cfg, batch=batch, inputs_length=inputs_length, position=p)
        for p in range(1, new_tokens + 1)
    )
    return encoder / peak + read / bandwidth


def main(argv=None):
    retained = hostmem.retain_freed_memory()  # first, as the CLI does: before any threads
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to smoke-test")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = config.get_preset(shape["preset"], dropout_rate=0.0)
    ours = models.build(cfg, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(ours, tmp)
        theirs = transformers.T5ForConditionalGeneration.from_pretrained(tmp).eval()
    peak = flops.measure_matmul_peak(n=512 if args.quick else 2048)
    bandwidth = read_bandwidth(shape["bandwidth_mib"])
    print(
        f"devices {jax.devices()}, torch {torch.__version__} on {torch.get_num_threads()} "
        f"threads; float32 matmul peak {peak / 1e9:.1f} GFLOP/s; read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s; glibc keeps freed memory (both sides): {retained}"
    )
    new, rows = shape["new_tokens"], []
    for batch in [int(b) for b in args.batches.split(",")]:
        g = np.random.default_rng(args.seed + batch)
        ids = g.integers(3, cfg.vocab_size - 100, (batch, shape["inputs_length"])).astype(np.int32)
        mask = np.ones_like(ids)
        calls = []
        for _, sampling in CASES:
            setup = (ids, mask, sampling, new, args.seed)
            calls += [ours_call(ours, *setup), hf_call(theirs, *setup)]
        times, outs = time_rounds(calls, shape["repeats"])
        bound = bound_s(
            cfg,
            batch=batch,
            inputs_length=shape["inputs_length"],
            new_tokens=new,
            bandwidth=bandwidth,
            peak=peak,
        )
        for i, (case, _) in enumerate(CASES):
            ours_s, hf_s = statistics.median(times[2 * i]), statistics.median(times[2 * i + 1])
            same = float((outs[2 * i] == outs[2 * i + 1]).mean()) if case == "greedy" else None
            rows.append((case, batch, ours_s, hf_s, bound, same))

    print(
        f"\n{shape['preset']}, inputs {shape['inputs_length']}, {new} new tokens, float32, "
        f"median of {shape['repeats']} calls\n"
    )
    print(
        "| case | batch | ours tokens/s | HF tokens/s | ours / HF | goal | ours ms/step "
        "| HF ms/step | ours % of bound | HF % of bound |"
    )
    print("| --- " * 10 + "|")
    for case, batch, ours_s, hf_s, bound, _ in rows:
        goal = GOAL.get(batch)
        print(
            f"| {case} | {batch} | {batch * new / ours_s:,.1f} | {batch * new / hf_s:,.1f} "
            f"| {hf_s / ours_s:.2f}x | {'' if goal is None else f'{goal}x'} "
            f"| {1e3 * ours_s / new:.2f} | {1e3 * hf_s / new:.2f} "
            f"| {bound / ours_s:.0%} | {bound / hf_s:.0%} |"
        )
    print(
        "\n(ms/step: seconds per call / new tokens, the encoder included; greedy tokens equal to "
        "HF's: " + ", ".join(f"batch {r[1]} {r[5]:.0%}" for r in rows if r[5] is not None) + ")"
    )


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
