"""Fine-tuning three ways from the project's own pre-trained tiny model, then `t5x-lite
compare`: full fine-tuning and LoRA beat the starting model's zero-shot ROUGE-L, and the report
carries every column, recomputed here from the runs' own files and libraries."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer

REPO = Path(__file__).resolve().parent.parent
COMMON = {
    "train.progress_bar": False,
    "train.log_every": 10,
    "checkpoint.async_save": False,
    "train.batch_size": 16,
}


def _train(cwd, *args, **overrides):
    flags = [f"--config.{k}={v}" for k, v in {**COMMON, **overrides}.items()]
    cmd = [sys.executable, "-m", "t5x_lite", "train", *args, *flags]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """./runs/default pre-trained briefly, then the recipe's three methods on top of it."""
    cwd = tmp_path_factory.mktemp("journey")
    _train(cwd, **{"train.steps": 150, "train.eval_every": 0})
    short = {
        "train.steps": 60,
        "train.eval_every": 30,
        "train.generate_examples": 32,
        "checkpoint.every": 30,
    }
    for method, lr in (("full", 1e-2), ("lora", 5e-3), ("prompt", 0.3)):
        recipe = f"configs/finetune.py:method={method}"
        _train(cwd, "--config", recipe, **short, **{"optim.learning_rate": lr})
    return cwd


def _last_eval(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if "eval_rougeL" in x][-1]


@pytest.mark.slow
def test_fine_tuning_beats_zero_shot_and_compare_reports_it(runs):
    out = runs / "compare"
    workdirs = [runs / "runs" / f"finetune_{m}_tiny" for m in ("full", "lora", "prompt")]
    cmd = [sys.executable, "-m", "t5x_lite", "compare", "--out", str(out), "--batches", "2"]
    result = subprocess.run(
        [*cmd, "--workdirs", *map(str, workdirs)], cwd=runs, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + 3  # header, rule, the starting model, three runs
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    zero_shot = float(cells[0][4])
    for row, workdir in zip(cells[1:], workdirs, strict=True):
        last = _last_eval(workdir)
        assert float(row[4]) == pytest.approx(last["eval_rougeL"], abs=0.005)
        facts = json.loads((workdir / "run_facts.json").read_text())
        assert row[7] == f"{facts['trainable_params']:,}"
    full, lora = (float(cells[i][4]) for i in (1, 2))
    assert full > zero_shot + 3 and lora > zero_shot + 3, (zero_shot, full, lora)
    assert int(cells[2][7].replace(",", "")) < int(cells[1][7].replace(",", "")) / 10
    assert (out / "rouge_over_steps.png").stat().st_size > 0
    assert (out / "quality_vs_params.png").stat().st_size > 0


@pytest.mark.slow
def test_eval_command_scores_the_lora_run_as_rouge_score_does(runs):
    """`t5x-lite eval` on a LoRA workdir: the same ROUGE-L as rouge-score on its predictions."""
    workdir = runs / "runs" / "finetune_lora_tiny"
    cmd = [sys.executable, "-m", "t5x_lite", "eval", "--model", str(workdir)]
    cmd += ["--num-examples", "8", "--max-new-tokens", "32"]
    result = subprocess.run(cmd, cwd=runs, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    row = [line for line in result.stdout.splitlines() if line.startswith("|")][-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-1] == "8"

    from t5x_lite import completion, conversion, corpus, prompts

    model, tok = conversion.load_for_inference(workdir)
    records = corpus.splits()["test"][:8]
    template = prompts.get_template("summarize")
    texts = [template.render({"dialogue": r["dialogue"]}, with_answer=False) for r in records]
    ids, _ = completion.encode_prompts(model, tok, texts, max_input_length=512)
    done = completion.complete(model, tok, ids, max_new_tokens=32)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = np.mean(
        [
            100 * scorer.score(r["summary"], c.text)["rougeL"].fmeasure
            for r, c in zip(records, done, strict=True)
        ]
    )
    assert float(cells[4]) == pytest.approx(expected, abs=0.005)
