"""`benchmarks/accelerator.py --quick` runs on this CPU, so the one-command accelerator
benchmark cannot rot: every number it reports is there and positive."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_accelerator_benchmark_quick_runs_on_cpu(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device, as on a GPU
    result = subprocess.run(
        [sys.executable, "benchmarks/accelerator.py", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| t5-tiny |" in result.stdout
    report = json.loads(out.read_text())
    tiny = report["presets"]["t5-tiny"]
    assert {(r["remat"], r["scan"]) for r in tiny["sweep"]} == {("none", False), ("full", True)}
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in tiny["sweep"])
    assert tiny["best"]["tokens_per_s"] == max(r["tokens_per_s"] for r in tiny["sweep"])
    assert set(tiny["decode_tokens_per_s"]) == {"1", "4"}
    assert all(v > 0 for v in tiny["decode_tokens_per_s"].values())
