"""Side-by-side report of fine-tuning runs (`t5x-lite compare --workdirs A B C --out DIR`).

    path = report.compare(["runs/finetune_full_tiny", "runs/finetune_lora_tiny"], "runs/compare",
                          objective_of=objectives.get)

Writes `report.md` and two PNG plots. The table has one row per workdir, plus the model they
started from (`model.init_from`, zero-shot on the same records): the last generation eval
(ROUGE-1/2/L/Lsum and BLEU, `train.generate_examples`), trainable parameters (count and % of
all) and optimizer-state bytes (`run_facts.json`), the median step time (`metrics.jsonl`), the
latest checkpoint's and the adapter's size on disk, and a forgetting check: the pre-training
objective's eval loss on held-out pre-training data, before (the init_from model) and after
fine-tuning. The plots: eval ROUGE-L over steps per run, and final ROUGE-L against trainable
parameters.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from t5x_lite import conversion, data, icl, resolve, run_config, steps, train

SCORES = (*icl.ROUGE_TYPES, "bleu")


def _config(workdir: Path) -> ml_collections.ConfigDict:
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a `t5x-lite train` workdir")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def collect(workdir: str | Path) -> dict:
    """What one fine-tuning workdir reports: its config, facts, eval history and sizes."""
    workdir = Path(workdir)
    config = _config(workdir)
    facts_path = workdir / train.FACTS
    if not facts_path.is_file():
        raise FileNotFoundError(f"{facts_path} does not exist: the run has not started")
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    evals = [m for m in metrics if "eval_rougeL" in m]
    if not evals:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no eval_rougeL: train it with "
            "train.generate_examples > 0 (configs/finetune.py sets it)"
        )
    checkpoints = workdir / "checkpoints"
    latest = max((p for p in checkpoints.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    facts = json.loads(facts_path.read_text())
    method = facts["method"] or {}
    return dict(
        name=workdir.name,
        workdir=workdir,
        config=config,
        method="lora" if "lora" in method else "prompt" if "prompt" in method else "full",
        **{k: evals[-1][f"eval_{k}"] for k in SCORES},
        history=[(m["step"], m["eval_rougeL"]) for m in evals],
        trainable_params=facts["trainable_params"],
        all_params=facts["all_params"],
        optimizer_state_bytes=facts["optimizer_state_bytes"],
        step_seconds=statistics.median(m["step_seconds"] for m in metrics if "step_seconds" in m),
        checkpoint_bytes=_disk_bytes(latest),
        adapter_bytes=_disk_bytes(workdir / "adapter"),
    )


def _eval_records(config) -> list[dict]:
    spec = resolve.data_spec(config, train=False)
    if spec is None:
        raise ValueError(f"{config.workdir}: eval is off in its config, so no held-out records")
    return data.read_records(spec, limit=config.train.generate_examples or 64)


def zero_shot(config, model, tok) -> dict:
    """Generation scores of `model` on the run's held-out records, in its template."""
    return resolve.generation_scores(config, model, tok, _eval_records(config))


def pretraining_loss(model, tok, config, objective, num_batches: int = 4) -> float:
    """Mean eval loss of `model` under the pre-training `config` on its held-out data."""
    spec = resolve.data_spec(config, train=False) or resolve.data_spec(config, train=True)
    ds, _ = train.make_pipeline(config, objective, tok, spec, train=False, stats=data.ReadStats())
    _, loss_kwargs = resolve.loss_options(config, objective)
    model.eval()
    graphdef, state = nnx.split(model)
    step = jax.jit(steps.make_eval_step(graphdef, objective.loss_fn, **loss_kwargs))
    batches = iter(ds)
    return float(np.mean([step(state, next(batches))["loss"] for _ in range(num_batches)]))


def _pretraining_config(init_from: str) -> ml_collections.ConfigDict:
    """The config `init_from` was pre-trained with (a workdir's), else the default recipe."""
    workdir = conversion.workdir_of(init_from)
    return _config(workdir) if workdir is not None else run_config.load()


def compare(
    workdirs: Sequence[str | Path],
    out: str | Path,
    *,
    objective_of: Callable,
    num_batches: int = 4,
) -> Path:
    """Write `out/report.md`, `out/rouge_over_steps.png` and `out/quality_vs_params.png`."""
    rows = [collect(w) for w in workdirs]
    first = rows[0]["config"]
    init_from = first.model.init_from
    if not init_from:
        raise ValueError(f"{rows[0]['workdir']} has no model.init_from to compare against")
    base, tok = conversion.load_for_inference(init_from)
    pre_config = _pretraining_config(init_from)
    pre_objective = objective_of(pre_config.objective.name)
    before = pretraining_loss(base, tok, pre_config, pre_objective, num_batches)
    base_row = dict(
        name=f"{Path(init_from).name} (zero-shot)", method="-", **zero_shot(first, base, tok)
    )
    for row in rows:
        model, _ = conversion.load_for_inference(row["workdir"])
        row["forgetting"] = (
            before,
            pretraining_loss(model, tok, pre_config, pre_objective, num_batches),
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _plots(rows, base_row, out)
    text = _markdown(rows, base_row, init_from, pre_config, base_row["num_examples"])
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


def _mib(n: int) -> str:
    """Bytes in the unit that keeps two significant decimals readable (KiB, MiB, GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def _markdown(rows, base_row, init_from, pre_config, num_examples) -> str:
    header = (
        "| run | method | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | BLEU | trainable params "
        "| trainable % | optimizer state | step time | checkpoint on disk | adapter on disk "
        "| pre-training loss before -> after |"
    )
    lines = [header, "|---|---|" + "---:|" * 12]
    scores = lambda r: " | ".join(f"{r[k]:.2f}" for k in SCORES)
    lines.append(f"| {base_row['name']} | - | {scores(base_row)} |" + " - |" * 7)
    for r in rows:
        pct = 100 * r["trainable_params"] / r["all_params"]
        before, after = r["forgetting"]
        lines.append(
            f"| {r['name']} | {r['method']} | {scores(r)} | {r['trainable_params']:,} "
            f"| {pct:.4f} | {_mib(r['optimizer_state_bytes'])} | {r['step_seconds']:.3f} s "
            f"| {_mib(r['checkpoint_bytes'])} | "
            f"{_mib(r['adapter_bytes']) if r['adapter_bytes'] else '-'} "
            f"| {before:.3f} -> {after:.3f} |"
        )
    return "\n".join(
        [
            "# Fine-tuning comparison",
            "",
            f"Every run starts from `{init_from}`. Scores: greedy generation on {num_examples} "
            "held-out records in each run's template, ROUGE F x 100 (rouge-score, stemming) and "
            "corpus BLEU (sacrebleu), at each run's last eval step; the first row is the "
            "starting model, zero-shot, on the same records. Step time: median over logged "
            "windows. Pre-training loss: the "
            f"`{pre_config.objective.name}` objective on its held-out data, the starting model "
            "(before) and each run (after).",
            "",
            *lines,
            "",
            "![eval ROUGE-L over steps](rouge_over_steps.png)",
            "![ROUGE-L against trainable parameters](quality_vs_params.png)",
            "",
        ]
    )


def _plots(rows, base_row, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        steps_, values = zip(*r["history"], strict=True)
        ax.plot(steps_, values, marker="o", label=f"{r['name']} ({r['method']})")
    ax.axhline(base_row["rougeL"], color="grey", linestyle="--", label=base_row["name"])
    ax.set(xlabel="step", ylabel="eval ROUGE-L", title="Eval ROUGE-L over training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rouge_over_steps.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["trainable_params"], r["rougeL"], s=40)
        ax.annotate(r["method"], (r["trainable_params"], r["rougeL"]))
    ax.axhline(base_row["rougeL"], color="grey", linestyle="--", label=base_row["name"])
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel="ROUGE-L", title="Quality against cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quality_vs_params.png", dpi=120)
    plt.close(fig)
