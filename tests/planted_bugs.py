"""Plant known bugs one at a time in a scratch copy of the repo and check that a test fails.

    python tests/planted_bugs.py            # every plant; exits 1 if any plant passes its tests
    python tests/planted_bugs.py --only 3   # one plant (numbers as in PLANTS)

Each plant is a one-line edit of the library and the tests that must catch it. The copy is
`git ls-files` of the working tree in a temp dir; its tests run with `python -m pytest` from the
copy, so they import the planted code, not the installed package. The README's "Testing" section
lists the same plants. The tests are first run without a plant, and must pass. Not part of
CI (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Plant:
    bug: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


PLANTS = (
    Plant(
        "gradient accumulation keeps only the last micro-batch's gradients",
        "t5x_lite/steps.py",
        "return (jax.tree.map(jnp.add, grad_sum, grads), nnx.state(m)), metrics",
        "return (grads, nnx.state(m)), metrics",
        ("tests/test_steps.py",),
    ),
    Plant(
        "model.init_from an HF directory builds random weights of the right shapes",
        "t5x_lite/train.py",
        "        nnx.update(state[0], params)",
        "        pass  # the source's parameters are read, then dropped",
        ("tests/test_train.py::test_fine_tune_from_a_hugging_face_directory",),
    ),
    Plant(
        "the prefix-LM mask makes the whole sequence bidirectional",
        "t5x_lite/attention.py",
        "causal = jnp.logical_or(causal, prefix_mask(prefix))",
        "causal = jnp.ones_like(causal)",
        (
            "tests/test_models.py::test_prefix_lm_attends_exactly_as_defined",
            "tests/test_attention.py::MaskPropertyTest",
        ),
    ),
    Plant(
        "classify mean-pools over padding too",
        "t5x_lite/models.py",
        "pooled = (hidden * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1), 1.0)[:, None]",
        "pooled = hidden.mean(1)",
        ("tests/test_models.py::test_classify_mean_pools_real_tokens_only",),
    ),
    Plant(
        "span corruption's grain stage drops EOS and the last token of every row",
        "objectives/span_corruption.py",
        '"inputs": seq2seq.pad_to(out["inputs"], inputs_length),',
        '"inputs": seq2seq.pad_to(out["inputs"][:-2], inputs_length),',
        (
            "tests/test_span_corruption.py::test_property_stages_rows_reconstruct_the_documents",
            "tests/test_span_corruption.py::test_stages_on_the_embedded_corpus_concatenate_back",
        ),
    ),
    Plant(
        "a parameter's logical axis mislabelled (mpl for mlp), so it stays replicated",
        "t5x_lite/layers.py",
        'self.wo = Dense(d_ff, d_model, ("mlp", "embed")',
        'self.wo = Dense(d_ff, d_model, ("mpl", "embed")',
        (
            "tests/test_sharding.py::test_every_parameter_axis_name_denotes_its_size",
            "tests/test_sharding.py::test_every_parameter_spec_follows_the_rules",
        ),
    ),
    Plant(
        "weight products cast their kernels with .astype, hiding them from qwix",
        "t5x_lite/layers.py",
        "x, w = dtypes.promote_dtype((x, getattr(module, name)[...]), dtype=module.dtype)",
        "x, w = x.astype(module.dtype), getattr(module, name)[...].astype(module.dtype)",
        ("tests/test_layers.py::test_qwix_int8_quantizes_every_weight_product",),
    ),
    Plant(
        "a LoRA run trains the base weights too",
        "t5x_lite/train.py",
        "    trainable = adapters.trainable(method)",
        "    trainable = nnx.Param",
        ("tests/test_lora.py::test_a_training_step_changes_only_the_adapters",),
    ),
    Plant(
        "LoRA's PEFT export lays lora_B out (r, fan_out) flattened the wrong way",
        "t5x_lite/lora.py",
        'tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.reshape(cfg.rank, -1).T)',
        'tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.reshape(-1, cfg.rank))',
        ("tests/test_lora.py::test_peft_runs_our_exported_adapter",),
    ),
    Plant(
        "the soft prompt's positions are masked out",
        "t5x_lite/layers.py",
        "ones = jnp.ones((attention_mask.shape[0], self.num_tokens), attention_mask.dtype)",
        "ones = jnp.zeros((attention_mask.shape[0], self.num_tokens), attention_mask.dtype)",
        ("tests/test_prompt_tuning.py::test_peft_runs_our_exported_prompt_forward_and_generate",),
    ),
    Plant(
        "Adafactor's weight decay ignores the learning rate (optax's weight_decay_rate)",
        "t5x_lite/optim.py",
        "        step = schedule(state.count) * rate",
        "        step = rate",
        ("tests/test_optim.py::test_weight_decay_is_the_learning_rate_times_the_rate",),
    ),
    Plant(
        "GAE lets rewards lying in the padding flow back into the response",
        "rlhf/ppo.py",
        "    rewards, values = rewards * mask, values * mask",
        "    rewards, values = rewards, values * mask",
        ("tests/test_ppo.py::test_gae_ignores_whatever_lies_in_padding",),
    ),
    Plant(
        "PPO's clipped surrogate keeps the optimistic term (min of the losses)",
        "rlhf/ppo.py",
        "    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)",
        "    loss = masked_mean(jnp.minimum(unclipped, clipped), mask)",
        ("tests/test_ppo.py::test_policy_loss_at_and_beyond_the_clip_bounds",),
    ),
    Plant(
        "the PPO reference is not the policy as it starts (its trained part zeroed)",
        "rlhf/policy.py",
        "    return jax.tree.map(jnp.copy, nnx.state(lm, train))",
        "    return jax.tree.map(jnp.zeros_like, nnx.state(lm, train))",
        ("tests/test_trainer.py::test_kl_is_zero_at_the_first_step",),
    ),
    Plant(
        "a resumed PPO run restarts its KL controller",
        "rlhf/trainer.py",
        '        kl = ppo.KLController(**saved.get("kl_controller", kl.state_dict()))',
        "        pass",
        ("tests/test_trainer.py::test_resume_continues_as_an_uninterrupted_run",),
    ),
    Plant(
        "a file stream keeps every record, not its shard's one in S",
        "t5x_lite/sources.py",
        '            mine = s["count"] % ds.stride == ds.offset',
        "            mine = True",
        ("tests/test_sources.py::test_processes_over_a_glob_of_shards_partition_the_corpus",),
    ),
    Plant(
        "a restored file stream starts its file again instead of at the saved offset",
        "t5x_lite/sources.py",
        '            s.update(count=s["count"] + 1, pos=pos)',
        '            s.update(count=s["count"] + 1)',
        ("tests/test_sources.py::test_resumed_processes_see_the_batches_of_an_uninterrupted_run",),
    ),
    Plant(
        "scanned layers are stacked in reverse order",
        "t5x_lite/transformer.py",
        "lambda *xs: jnp.stack(xs)",
        "lambda *xs: jnp.stack(xs[::-1])",
        (
            "tests/test_models.py::test_scanned_layers_equal_the_unrolled_stack",
            "tests/test_hf.py::test_scanned_layers_load_and_round_trip",
        ),
    ),
    Plant(
        "model.remat is silently ignored (no jax.checkpoint around the blocks)",
        "t5x_lite/transformer.py",
        'if self.remat == "none" or cached:',
        "if True:",
        ("tests/test_models.py::test_remat_full_under_scanned_layers_cuts_xla_temporaries",),
    ),
    Plant(
        "beam search leaves a scanned cache's rows where they were (each beam's parent ignored)",
        "t5x_lite/cache.py",
        "take = (lambda x: x[:, rows]) if self.scanned else (lambda x: x[rows])",
        "take = (lambda x: x) if self.scanned else (lambda x: x[rows])",
        ("tests/test_decoding.py::test_beam_search_matches_hugging_face",),
    ),
)


def copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def pytest(tests, copy: Path) -> int:
    """pytest's exit code for `tests` run from the copy (0 passed, 1 a test failed)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(cmd, cwd=copy, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"pytest could not run {tests}:\n{result.stdout[-3000:]}")
    return result.returncode


def check(plant: Plant, copy: Path) -> bool:
    """True when at least one of the plant's tests fails with the bug in place."""
    target = copy / plant.path
    original = target.read_text()
    if original.count(plant.old) != 1:
        raise ValueError(f"{plant.path}: the line to plant in is not there once: {plant.old!r}")
    target.write_text(original.replace(plant.old, plant.new))
    try:
        return pytest(plant.tests, copy) == 1
    finally:
        target.write_text(original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, action="append", help="plant number (1-based)")
    args = parser.parse_args()
    chosen = [(i, PLANTS[i - 1]) for i in args.only] if args.only else enumerate(PLANTS, 1)
    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        copy_repo(Path(tmp))
        chosen = list(chosen)
        if pytest([t for _, plant in chosen for t in plant.tests], Path(tmp)):
            print("the plants' tests fail without any plant: fix them first")
            return 2
        for i, plant in chosen:
            caught = check(plant, Path(tmp))
            print(
                f"{i}. {'caught' if caught else 'MISSED'}: {plant.bug} ({plant.path})", flush=True
            )
            if not caught:
                missed.append(i)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
