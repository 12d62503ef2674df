"""Train-step throughput: t5x_lite's jitted step vs Hugging Face transformers' PyTorch T5.

    python benchmarks/train_throughput.py [--presets t5-tiny,t5-small] [--steps 10]

Same shapes (batch 8, inputs 512, targets 114 by default), same weights (ours are exported to
HF and loaded by transformers), same optimizer (AdamW, lr 1e-4, no dropout), float32, in one
process run. Prints tokens/s for both, the ratio ours/HF, and our achieved model FLOP/s
(analytic count, t5x_lite.flops) as a fraction of a measured float32 matmul peak; HF's the
same way (same model, same count), and so the fraction of peak our step would need to reach the
goal ratio (GOAL_RATIO x HF's fraction).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from objectives import seq2seq  # noqa: E402
from t5x_lite import config, flops, hf, hostmem, models, steps  # noqa: E402

# Goal (2 CPU cores): ours / HF tokens/s per preset. The model FLOPs are the same on both
# sides, so a ratio R needs R x HF's MFU of the peak.
GOAL_RATIO = {"t5-small": 1.0}


def batch_for(cfg, batch, s, t, seed=0):
    g = np.random.default_rng(seed)
    inputs = g.integers(3, cfg.vocab_size - 100, (batch, s)).astype(np.int32)
    targets = g.integers(3, cfg.vocab_size - 100, (batch, t)).astype(np.int32)
    decoder_inputs = np.asarray(models.shift_right(targets))
    return {"inputs": inputs, "targets": targets, "decoder_inputs": decoder_inputs}


def _minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped in and zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_ours(model, batch, n_steps, *, wrt=nnx.Param):
    """Median seconds of our jitted AdamW step over the variables `wrt` selects, the last
    loss, and minor page faults per step."""
    tx = optax.adamw(1e-4)
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    graphdef, state = nnx.split((model, optimizer))
    step = jax.jit(
        steps.make_train_step(
            graphdef, seq2seq.loss_fn, schedule=optax.constant_schedule(1e-4), wrt=wrt
        ),
        donate_argnums=0,
    )
    batch = jax.device_put(batch)
    state, m = step(state, batch)  # compile
    jax.block_until_ready(m)
    times, faults = [], _minor_faults()
    for _ in range(n_steps):
        start = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(m["loss"]), (_minor_faults() - faults) / n_steps


def time_torch(model, params, batch, n_steps):
    """The same for a PyTorch model training `params` with AdamW; also the optimizer state's
    bytes (its tensors after the steps)."""
    import torch

    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    inputs = torch.tensor(batch["inputs"], dtype=torch.long)
    labels = torch.tensor(batch["targets"], dtype=torch.long)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        opt.step()
        return loss

    step()
    times, faults = [], _minor_faults()
    for _ in range(n_steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    faults = (_minor_faults() - faults) / n_steps
    return float(np.median(times)), loss.item(), faults, state_bytes


def time_hf(path, batch, n_steps):
    import transformers

    model = transformers.T5ForConditionalGeneration.from_pretrained(path)
    return time_torch(model, model.parameters(), batch, n_steps)[:3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="t5-tiny,t5-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs-length", type=int, default=512)
    parser.add_argument("--targets-length", type=int, default=114)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    retained = hostmem.retain_freed_memory()  # first, as the CLI does: before any threads
    peak = flops.measure_matmul_peak()
    print(
        f"devices: {jax.devices()}  torch threads: {__import__('torch').get_num_threads()}  "
        f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s\n"
        f"glibc malloc keeps freed memory (t5x_lite.hostmem, both sides): {retained}"
    )
    rows = []
    for name in args.presets.split(","):
        cfg = config.get_preset(name, dropout_rate=0.0)
        model = models.build(cfg, seed=0)
        batch = batch_for(cfg, args.batch, args.inputs_length, args.targets_length)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(model, tmp)
            hf_time, hf_loss, hf_faults = time_hf(tmp, batch, args.steps)
        ours_time, ours_loss, ours_faults = time_ours(model, batch, args.steps)
        tokens = args.batch * (args.inputs_length + args.targets_length)
        model_flops = args.batch * flops.train_flops_per_example(
            cfg, inputs_length=args.inputs_length, targets_length=args.targets_length
        )
        rows.append(
            dict(
                name=name,
                ours=tokens / ours_time,
                hf=tokens / hf_time,
                ratio=hf_time / ours_time,
                mfu=model_flops / ours_time / peak,
                hf_mfu=model_flops / hf_time / peak,
                ours_faults=ours_faults,
                hf_faults=hf_faults,
                ours_loss=ours_loss,
                hf_loss=hf_loss,
            )
        )

    print(
        f"\nbatch {args.batch}, inputs {args.inputs_length}, targets {args.targets_length}, "
        f"float32, AdamW; median of {args.steps} steps\n"
    )
    print(
        "| preset | ours tokens/s | HF PyTorch tokens/s | ours / HF | ours MFU vs matmul peak "
        "| HF MFU vs matmul peak | goal ours / HF | MFU the goal needs "
        "| page faults / step, ours | page faults / step, HF |"
    )
    print("| --- " * 10 + "|")
    for r in rows:
        goal = GOAL_RATIO.get(r["name"])
        needs = " | " if goal is None else f"{goal:g}x | {goal * r['hf_mfu']:.0%}"
        print(
            f"| {r['name']} | {r['ours']:,.0f} | {r['hf']:,.0f} | {r['ratio']:.2f}x "
            f"| {r['mfu']:.0%} | {r['hf_mfu']:.0%} | {needs} "
            f"| {r['ours_faults']:,.0f} | {r['hf_faults']:,.0f} |"
        )
    print(
        "\n(first-step losses, ours vs HF, as a sanity check: "
        + ", ".join(f"{r['name']}: {r['ours_loss']:.3f} / {r['hf_loss']:.3f}" for r in rows)
        + ")"
    )


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
