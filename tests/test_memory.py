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
