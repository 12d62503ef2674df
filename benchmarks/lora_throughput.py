"""LoRA train-step throughput: t5x_lite's LoRA step vs Hugging Face PEFT's, in one process run.

    python benchmarks/lora_throughput.py [--preset t5-small] [--rank 8] [--steps 10]

Same shapes (t5-small, batch 8, inputs 512, targets 114), same base weights (ours exported to
HF), same adapters (rank 8, alpha 16 on q and v, no dropout), AdamW, float32. Prints tokens/s
for both and the ratio ours / PEFT (goal >= 1.0x), and the optimizer state's bytes: our LoRA
run's, PEFT's, and full fine-tuning's (AdamW over every parameter).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from train_throughput import batch_for, time_ours, time_torch  # noqa: E402

from t5x_lite import config, hf, hostmem, lora, models  # noqa: E402

GOAL_RATIO = 1.0


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def time_peft(path, batch, n_steps, rank, alpha):
    import peft
    import transformers

    base = transformers.T5ForConditionalGeneration.from_pretrained(path)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q", "v"])
    model = peft.get_peft_model(base, config)
    seconds, loss, _, state_bytes = time_torch(
        model, [p for p in model.parameters() if p.requires_grad], batch, n_steps
    )
    return seconds, loss, state_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="t5-small")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--inputs-length", type=int, default=512)
    parser.add_argument("--targets-length", type=int, default=114)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    hostmem.retain_freed_memory()  # first, as the CLI does: before any threads
    cfg = config.get_preset(args.preset, dropout_rate=0.0)
    model = models.build(cfg, seed=0)
    batch = batch_for(cfg, args.batch, args.inputs_length, args.targets_length)
    full = nnx.eval_shape(
        lambda: nnx.Optimizer(models.build(cfg), optax.adamw(1e-4), wrt=nnx.Param)
    )
    full_bytes = nbytes(nnx.state(full.opt_state))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(model, tmp)
        peft_time, peft_loss, peft_bytes = time_peft(tmp, batch, args.steps, args.rank, args.alpha)
    lora.apply(model, lora.LoraConfig(rank=args.rank, alpha=args.alpha))
    print(lora.describe(model))
    ours_bytes = nbytes(
        nnx.state(nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.LoRAParam).opt_state)
    )
    ours_time, ours_loss, _ = time_ours(model, batch, args.steps, wrt=nnx.LoRAParam)
    tokens = args.batch * (args.inputs_length + args.targets_length)

    print(
        f"\n{args.preset}, LoRA r={args.rank} alpha={args.alpha:g} on q and v; batch {args.batch}, "
        f"inputs {args.inputs_length}, targets {args.targets_length}, float32, AdamW; median of "
        f"{args.steps} steps; devices {jax.devices()}\n"
    )
    print(
        "| ours tokens/s | PEFT tokens/s | ours / PEFT | goal | optimizer state, ours LoRA "
        "| optimizer state, PEFT LoRA | optimizer state, full fine-tuning |"
    )
    print("| --- " * 7 + "|")
    print(
        f"| {tokens / ours_time:,.0f} | {tokens / peft_time:,.0f} | {peft_time / ours_time:.2f}x "
        f"| {GOAL_RATIO:g}x | {ours_bytes / 2**20:.2f} MiB | {peft_bytes / 2**20:.2f} MiB "
        f"| {full_bytes / 2**20:.1f} MiB |"
    )
    print(f"\n(losses after the last step, ours / PEFT: {ours_loss:.3f} / {peft_loss:.3f})")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
