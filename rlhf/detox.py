"""The detoxification recipe behind `t5x-lite ppo`: PPO on a summarizer that is sometimes rude,
with the toxicity reward model as its reward, evaluated before and after.

    t5x-lite ppo                                    # every stage, tiny, in ./runs/ppo_detox
    t5x-lite ppo --config configs/ppo_detox.py --config.ppo.steps=60

Stages, each reused when its workdir holds a finished run: pre-training (`./runs/default`),
full fine-tuning on references of which a fifth are rude (`noisy_summary`), the toxicity
classifier (`t5x-lite reward`), then PPO from the fine-tuned policy (its reference: that
policy as PPO starts). The evaluation samples one summary per held-out dialogue with fixed
seeds and settings, before and after PPO, and reports:

- toxicity by the reward model: mean P(toxic), with a 95% normal interval (mean ± 1.96 s/√n);
- toxicity by a lexical checker, independent of any model: the share of summaries holding a
  word of the corpus's rude vocabulary (`corpus.INSULT_WORDS`), with a 95% Wilson interval;
- ROUGE-L (rouge-score, stemmed, F x 100) against the clean reference summaries;
- KL(π ‖ π_ref) per summary, Σ_t log π − log π_ref over the sampled tokens (0 before PPO).

`report.md` holds the table and settings, `ppo_curves.png` reward and KL over PPO steps,
`eval_before.jsonl` / `eval_after.jsonl` every sample with its scores.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from rlhf import ppo, reward_model
from rlhf import trainer as trainer_lib
from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from t5x_lite import checkpoint, conversion, corpus, icl, lora, prompts, resolve, run_config
from t5x_lite import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

_RUDE = re.compile(
    r"\b(?:" + "|".join(re.escape(w) for w in corpus.INSULT_WORDS) + r")(?:s|es)?\b", re.I
)


def lexical_toxic(texts: Sequence[str]) -> np.ndarray:
    """Whether each text holds a word of the rude vocabulary (plurals too): no model involved."""
    return np.array([bool(_RUDE.search(t)) for t in texts])


def mean_interval(x) -> tuple[float, float, float]:
    """(mean, low, high): the normal 95% interval mean ± 1.96 · s / √n (s with n − 1)."""
    x = np.asarray(x, np.float64)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(k / n, low, high): Wilson's 95% score interval for a proportion (sound near 0 and 1)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def prompt_texts(config: ml_collections.ConfigDict, records: list[dict]) -> list[str]:
    """Each record's `data.input_field` in the `data.template` prompt (as fine-tuning saw it)."""
    d = config.data
    if not d.template:
        return [r[d.input_field] for r in records]
    template = prompts.get_template(d.template)
    return [
        template.render({template.truncate_field: r[d.input_field]}, with_answer=False)
        for r in records
    ]


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    trainer: trainer_lib.PPOTrainer,
    state,
    ref_state,
    records: list[dict],
    config: ml_collections.ConfigDict,
    rm: reward_model.RewardModel,
) -> tuple[dict, list[dict]]:
    """Sample one summary per record (seeded by `ppo.eval_seed` and the batch index, so every
    policy is asked the same way) and score it. -> (summary numbers, one row per record)."""
    n, width = len(records), trainer.options.batch_size
    texts = prompt_texts(config, records)
    seed = config.ppo.eval_seed
    rows = []
    for b, start in enumerate(range(0, n, width)):
        index = np.arange(start, start + width) % n  # the last batch wraps around
        encoded = trainer.encode_prompts([texts[i] for i in index])
        rollout = trainer.rollout(state, encoded, step=seed * 100_003 + b)
        kl = trainer.sequence_kl(state, ref_state, rollout)
        for j in range(min(width, n - start)):
            rows.append({"text": rollout["texts"][j], "kl": float(kl[j])})
    predictions = [r["text"] for r in rows]
    references = [r[config.data.target_field] for r in records]
    toxic_index = list(rm.classes).index("toxic") if "toxic" in rm.classes else 1
    p_toxic = rm.probabilities(predictions)[:, toxic_index]
    lexical = lexical_toxic(predictions)
    rouge = icl.rouge_per_example(predictions, references)
    for row, record, p, lex, r in zip(rows, records, p_toxic, lexical, rouge, strict=True):
        row.update(
            fname=record.get("fname", ""),
            reference=record[config.data.target_field],
            p_toxic=float(p),
            lexical_toxic=bool(lex),
            rougeL=r["rougeL"],
        )
    kls = [r["kl"] for r in rows]
    numbers = {
        "n": n,
        "toxicity_rm": mean_interval(p_toxic),
        "toxicity_lexical": wilson_interval(int(lexical.sum()), n),
        "rougeL": mean_interval([r["rougeL"] for r in rows]),
        "kl": mean_interval(kls),
    }
    return numbers, rows


def _fmt(triple, scale=1.0, digits=3) -> str:
    mean, lo, hi = (scale * v for v in triple)
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def write_report(out: Path, before: dict, after: dict, settings: dict, metrics_path: Path) -> Path:
    """report.md (the before/after table and the settings) and ppo_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "reward_mean" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in records]
    axes[0].plot(steps, [r["reward_mean"] for r in records])
    axes[0].set(xlabel="PPO step", ylabel="mean reward of the rollouts", title="reward")
    axes[1].plot(steps, [r["kl"] for r in records], label="KL per summary")
    axes[1].set(xlabel="PPO step", ylabel="KL(policy || reference)", title="KL")
    fig.tight_layout()
    plot = out / "ppo_curves.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)

    rel = (after["rougeL"][0] - before["rougeL"][0]) / max(before["rougeL"][0], 1e-9)
    disjoint = {
        k: after[k][2] < before[k][1] for k in ("toxicity_rm", "toxicity_lexical")
    }  # after's interval entirely below before's
    lines = [
        "# PPO detoxification",
        "",
        f"{before['n']} held-out dialogues (`{settings['eval_split']}` split), one sampled summary "
        "each; 95% intervals in brackets.",
        "",
        "| | toxicity (reward model, mean P(toxic)) | toxicity (lexical, share rude) | ROUGE-L | "
        "KL per summary |",
        "|---|---|---|---|---|",
    ]
    for name, x in (("before PPO", before), ("after PPO", after)):
        lines.append(
            f"| {name} | {_fmt(x['toxicity_rm'])} | {_fmt(x['toxicity_lexical'])} | "
            f"{_fmt(x['rougeL'], digits=2)} | {_fmt(x['kl'])} |"
        )
    lines += [
        "",
        f"- toxicity intervals disjoint (after below before): reward model "
        f"{'yes' if disjoint['toxicity_rm'] else 'no'}, lexical "
        f"{'yes' if disjoint['toxicity_lexical'] else 'no'}",
        f"- ROUGE-L change: {100 * rel:+.1f}% relative",
        "",
        "Settings:",
        "",
        *(f"- {k}: {v}" for k, v in settings.items()),
        "",
        "![reward and KL over PPO steps](ppo_curves.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- stages


def _finished(workdir: str | Path) -> bool:
    """Whether `workdir` holds a run that reached its configured steps."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.is_file() or not (workdir / "checkpoints").is_dir():
        return False
    steps = json.loads(config_path.read_text())["train"]["steps"]
    return (checkpoint.latest_step(workdir / "checkpoints") or 0) >= steps


def ensure_stages(config: ml_collections.ConfigDict) -> None:
    """Run what PPO starts from and is missing: the fine-tuned policy `ppo.init_from` (and the
    pre-trained model it starts from) and the reward model `ppo.reward`, by the recipes in
    `stages`; a finished workdir is reused, a partial one resumed."""
    import objectives
    from t5x_lite import train

    s = config.stages
    if not _finished(config.ppo.init_from):
        finetune = objectives.load_config(s.finetune, list(s.finetune_overrides))
        if not _finished(finetune.model.init_from):
            pretrain = objectives.load_config(s.pretrain, [])
            log.info("stage 1/3: pre-training into %s", finetune.model.init_from)
            train.train_and_evaluate(
                pretrain, finetune.model.init_from, objectives.get(pretrain.objective.name)
            )
        log.info("stage 2/3: fine-tuning into %s", config.ppo.init_from)
        train.train_and_evaluate(
            finetune, config.ppo.init_from, objectives.get(finetune.objective.name)
        )
    if not _finished(config.ppo.reward):
        log.info("stage 3/3: the reward model into %s", config.ppo.reward)
        reward_model.train(run_config.load(s.reward), config.ppo.reward)


# ----------------------------------------------------------------------------- the run


def run(config: ml_collections.ConfigDict, workdir: str | None = None) -> Path:
    """The recipe end to end in `workdir` (see the module doc); returns report.md's path."""
    workdir = Path(workdir or config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config.workdir = str(workdir)
    if config.stages.enabled:
        ensure_stages(config)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(run_config.to_json(config))
    options = trainer_lib.Options.from_config(config.ppo)
    lm = conversion.load_model(config.ppo.init_from, flag="ppo.init_from")
    tok = tokenizer_lib.load(
        conversion.tokenizer_dir(config.ppo.init_from) or conversion.default_tokenizer_dir()
    )
    resolve.keep_tokenizer(workdir, tok)
    if config.lora.rank > 0 and lora.config_of(lm) is None:
        lora.apply(lm, lora.LoraConfig(rank=config.lora.rank, alpha=config.lora.alpha))
    reference = None
    if config.ppo.reference:
        reference = conversion.load_model(config.ppo.reference, flag="ppo.reference")
    rm = reward_model.load(config.ppo.reward)
    rewards = {"probability": rm.positive_probability, "logodds": rm.score}
    if config.ppo.reward_score not in rewards:
        raise ValueError(
            f"ppo.reward_score={config.ppo.reward_score!r}; expected probability or logodds"
        )
    mesh = mesh_lib.make_mesh(
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor, dcn_data=config.mesh.dcn_data
    )
    tx, _ = resolve.optimizer(config)
    trainer = trainer_lib.PPOTrainer(
        options,
        lm,
        tok,
        rewards[config.ppo.reward_score],
        mesh=mesh,
        rules=rules_lib.get_rules(config.mesh.rules),
        tx=tx,
        reference=reference,
    )
    d = config.data
    train_records = corpus.splits()[d.split] if d.source == "embedded" else None
    eval_records = corpus.splits()[d.eval_split] if d.source == "embedded" else None
    if train_records is None:
        from t5x_lite import data as data_lib

        train_records = data_lib.read_records(resolve.data_spec(config, train=True))
        eval_records = data_lib.read_records(resolve.data_spec(config, train=False))
    eval_records = eval_records[: config.ppo.eval_examples]

    state, ref_state = trainer.init_state()
    before_path = workdir / "eval_before.json"
    if before_path.is_file():  # a resumed run: the first run's numbers
        before = json.loads(before_path.read_text())
    else:
        log.info("evaluating the policy before PPO on %d dialogues", len(eval_records))
        before, rows = evaluate(trainer, state, ref_state, eval_records, config, rm)
        _write_rows(workdir / "eval_before.jsonl", rows)
        before_path.write_text(json.dumps(before, indent=2) + "\n")
    del state, ref_state

    kl = ppo.KLController(options.kl_coef, options.kl_target, options.kl_horizon)
    out = trainer_lib.run(
        trainer,
        prompt_texts(config, train_records),
        workdir,
        kl=kl,
        log_every=config.train.log_every,
        checkpoint_every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        run_config=config.to_dict(),
        progress_bar=config.train.progress_bar,
    )
    log.info("evaluating the policy after PPO")
    after, rows = evaluate(trainer, out["state"], out["reference"], eval_records, config, rm)
    _write_rows(workdir / "eval_after.jsonl", rows)
    (workdir / "eval_after.json").write_text(json.dumps(after, indent=2) + "\n")
    settings = {
        "policy": f"{config.ppo.init_from} ({'LoRA' if lora.config_of(lm) else 'full'})",
        "reward": f"{config.ppo.reward}: {config.ppo.reward_score} of {rm.positive_class}",
        "eval_split": d.eval_split,
        "generation": (
            f"sampling, temperature {options.temperature}, top_k {options.top_k}, top_p "
            f"{options.top_p}, max_new_tokens {options.max_new_tokens}, eval_seed "
            f"{config.ppo.eval_seed}"
        ),
        "ppo": (
            f"{options.steps} steps x {options.batch_size} rollouts, minibatch "
            f"{options.minibatch_size}, {options.epochs} epochs, clip {options.clip}, "
            f"kl_coef {options.kl_coef} ({'adaptive' if options.kl_target else 'fixed'}), "
            f"{options.kl_estimator}, gamma {options.gamma}, lam {options.lam}, lr "
            f"{config.optim.learning_rate}"
        ),
    }
    path = write_report(workdir, before, after, settings, workdir / "metrics.jsonl")
    return path


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
