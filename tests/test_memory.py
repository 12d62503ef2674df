"""`t5x-lite memory`: parameter counts against transformers, analytic FLOPs and memory against
XLA's own analysis of the compiled train step (abstract shapes, nothing allocated)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import objectives
from t5x_lite import memory

REPO = Path(__file__).resolve().parent.parent


def analyze(recipe=None, **overrides):
    args = [f"--config.{k}={v}" for k, v in overrides.items()]
    config = objectives.load_config(recipe, args)
    return memory.analyze(config, objectives.get(config.objective.name))


def test_flan_t5_base_parameter_count_matches_transformers():
    report = analyze(
        **{
            "model.preset": "flan-t5-base",
            "optim.name": "adamw",
            "objective.inputs_length": 32,
            "train.batch_size": 8,
        }
    )
    cfg = transformers.T5Config(
        d_model=768,
        d_kv=64,
        d_ff=2048,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        vocab_size=32128,
    )
    with torch.device("meta"):
        reference = transformers.T5ForConditionalGeneration(cfg).num_parameters()
    assert report["parameters_tied_head"] == reference == 222_903_552
    # Flan-T5's checkpoints carry their own LM head: one more V x D matrix.
    assert report["parameters"] == 222_903_552 + 32128 * 768
    # AdamW: mu and nu, 4 bytes each, per parameter (plus a step counter).
    assert report["optimizer_bytes"] == pytest.approx(2 * report["parameter_bytes"], abs=64)
    assert report["parameter_bytes"] == 4 * report["parameters"]


def _analyze_on_one_device(recipe, overrides):
    """XLA's numbers for a one-device mesh: a fresh process without the fake devices."""
    code = (
        "import json, sys, objectives; from t5x_lite import memory, run_config; "
        "c = objectives.load_config(sys.argv[1] or None, sys.argv[2:]); "
        "print(json.dumps(memory.analyze(c, objectives.get(c.objective.name))))"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    args = [f"--config.{k}={v}" for k, v in overrides.items()]
    out = subprocess.run(
        [sys.executable, "-c", code, recipe or "", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "recipe,overrides",
    [
        (None, {}),  # tiny T5, span corruption, batch 32, inputs 128, AdamW
        ("configs/t5_span_corruption.py:size=small", {"train.batch_size": 8}),  # Adafactor
    ],
)
def test_flops_and_memory_agree_with_xla(recipe, overrides):
    r = _analyze_on_one_device(recipe, overrides)
    assert r["analytic_flops_per_step"] == pytest.approx(r["xla_flops_per_step"], rel=0.05)
    assert r["analytic_total_bytes"] == pytest.approx(r["xla_total_bytes"], rel=0.15)


def test_sharded_estimate_agrees_with_xla():
    r = analyze(**{"mesh.data": 1, "mesh.fsdp": 8, "optim.name": "adafactor"})
    assert r["analytic_total_bytes"] == pytest.approx(r["xla_total_bytes"], rel=0.15)


def test_fsdp_divides_the_state_per_device():
    one = analyze(**{"mesh.data": 8, "mesh.rules": "fsdp"})
    eight = analyze(**{"mesh.data": 1, "mesh.fsdp": 8, "mesh.rules": "fsdp"})
    # Everything but the small relative-position tables is split 8 ways.
    assert eight["parameter_bytes"] < one["parameter_bytes"] / 7
    assert eight["optimizer_bytes"] < one["optimizer_bytes"] / 7


def test_fit_takes_the_cheapest_setting_that_fits_and_says_when_none_does(monkeypatch):
    """`memory.fit` against a stand-in `analyze` whose footprint falls with fsdp, remat, scanned
    layers and micro-batches: it returns the first fit in cost order (configured mesh, then more
    fsdp; within, remat none -> full, each unrolled (as configured) then scanned, each with 1,
    2, 4, ... micro-batches), or the smallest footprint, said so."""
    remat_cost = {r: i for i, r in enumerate(memory.REMAT_ORDER)}
    seen = []

    def fake_analyze(config, objective):
        m = config.model
        settings = (config.mesh.fsdp, m.remat, m.scan_layers, config.optim.grad_accum_steps)
        seen.append(settings)
        micro = config.optim.grad_accum_steps
        total = 1000 / config.mesh.fsdp + 400 - 100 * remat_cost[m.remat] - 50 * m.scan_layers
        total -= micro
        return dict(xla_total_bytes=total, remat=m.remat, scan_layers=m.scan_layers)

    monkeypatch.setattr(memory, "analyze", fake_analyze)
    config = objectives.load_config(None, ["--config.train.batch_size=64"])  # 8 devices
    got = memory.fit(config, None, budget=1099)  # fsdp 1: none 1399, ..., full 1099
    want = dict(fsdp=1, remat="full", scan_layers=False, micro_batches=1)
    assert got["fits"] and got["settings"] == want
    assert seen[:5] == [(1, "none", False, m) for m in (1, 2, 4, 8)] + [(1, "none", True, 1)]
    seen.clear()
    got = memory.fit(config, None, budget=1)
    want = dict(fsdp=8, remat="full", scan_layers=True, micro_batches=8)
    assert not got["fits"] and got["settings"] == want
    assert len(seen) == len(set(seen)) == 4 * 4 * 2 * 4  # fsdp x remat x layout x micro 1-8
    text = memory.format_fit(dict(got, report=dict(got["report"], **_REPORT_KEYS)), 1)
    assert "nothing tried fits" in text and "--config.model.remat=full" in text
    assert "--config.model.scan_layers=true" in text


_REPORT_KEYS = {
    k: 1
    for k in (
        "parameters",
        "parameters_tied_head",
        "devices",
        "inputs_length",
        "targets_length",
        "parameter_bytes",
        "gradient_bytes",
        "optimizer_bytes",
        "activation_bytes",
        "analytic_total_bytes",
        "rule_of_thumb_bytes",
        "xla_argument_bytes",
        "xla_temp_bytes",
        "xla_output_bytes",
        "xla_alias_bytes",
        "analytic_flops_per_step",
        "xla_flops_per_step",
    )
} | dict(preset="t5-tiny", mesh={}, backend="cpu", dtype="float32")
