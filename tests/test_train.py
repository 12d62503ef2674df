"""The training loop end to end on tiny configs: loss falls, exact resume after a kill, SIGTERM,
asynchronous checkpoints (resume, pruning), eval metrics, non-finite loss, bfloat16, starting from
a HF directory, and the errors users see for bad config and data."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from flax import nnx

import objectives
from t5x_lite import checkpoint, data, hf, models, resolve, run_config, train
from t5x_lite import config as config_lib

REPO = Path(__file__).resolve().parent.parent


def tiny_overrides(**extra) -> list[str]:
    base = {
        "objective.inputs_length": 32,
        "train.batch_size": 8,
        "train.log_every": 5,
        "train.eval_every": 0,  # no eval (0: never; any other value also evaluates at the end)
        "train.progress_bar": False,
        "checkpoint.async_save": False,
        "optim.warmup_steps": 5,
    }
    base.update(extra)
    return [f"--config.{k}={v}" for k, v in base.items()]


def run_inprocess(workdir, recipe=None, **overrides):
    config = objectives.load_config(recipe, tiny_overrides(**overrides))
    return train.train_and_evaluate(config, str(workdir), objectives.get(config.objective.name))


def logged(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def cli(workdir, *args, **overrides) -> list[str]:
    return [
        sys.executable,
        "-m",
        "t5x_lite",
        "train",
        *args,
        "--workdir",
        str(workdir),
        *tiny_overrides(**overrides),
    ]


ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


@pytest.mark.parametrize(
    "objective,recipe,overrides",
    [
        ("span_corruption", "configs/t5_span_corruption.py", {"train.steps": 40}),
        ("causal_lm", "configs/decoder_clm.py", {"train.steps": 40}),
        # ~15% of tokens carry the loss: a larger batch for a steady signal
        ("masked_lm", "configs/encoder_mlm.py", {"train.steps": 80, "train.batch_size": 32}),
        # dialogue -> summary on the embedded corpus
        (
            "seq2seq",
            "configs/t5_span_corruption.py",
            {"train.steps": 40, "objective.name": "seq2seq", "objective.targets_length": 32},
        ),
    ],
)
def test_loss_falls(tmp_path, objective, recipe, overrides):
    run_inprocess(tmp_path, str(REPO / recipe), **{"checkpoint.every": 1000, **overrides})
    assert json.loads((tmp_path / "config.json").read_text())["objective"]["name"] == objective
    losses = [r["loss"] for r in logged(tmp_path)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.75 * losses[0], losses
    assert (tmp_path / "config.json").exists()
    assert {"step", "loss", "learning_rate", "tokens_per_second"} <= set(logged(tmp_path)[0])


def _params(workdir):
    model = checkpoint.load_model(Path(workdir) / "checkpoints")
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_exact_resume_after_kill(tmp_path):
    """2N steps in one run == N steps, SIGKILL, rerun to 2N: same parameters, same losses."""
    steps = {"train.steps": 80, "checkpoint.every": 10, "model.dropout_rate": 0.1}
    subprocess.run(cli(tmp_path / "a", **steps), check=True, env=ENV, capture_output=True)

    proc = subprocess.Popen(
        cli(tmp_path / "b", **steps), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = tmp_path / "b" / "checkpoints" / "20"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.latest_step(tmp_path / "b" / "checkpoints")
    assert 20 <= killed_at < 80, "the run was not interrupted mid-way"
    subprocess.run(cli(tmp_path / "b", **steps), check=True, env=ENV, capture_output=True)

    chex.assert_trees_all_equal(_params(tmp_path / "a"), _params(tmp_path / "b"))
    a, b = logged(tmp_path / "a"), logged(tmp_path / "b")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert [r["loss"] for r in b] == [r["loss"] for r in a]


def test_sigterm_saves_and_exits_zero(tmp_path):
    proc = subprocess.Popen(
        cli(tmp_path, **{"train.steps": 100000, "checkpoint.every": 100000, "train.log_every": 1}),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    step = checkpoint.latest_step(tmp_path / "checkpoints")
    assert step >= 3
    assert f"saving a checkpoint at step {step}" in err
    assert logged(tmp_path)[-1]["step"] == step


def _eval_metrics(model, batches, z_loss):
    """Teacher-forced cross-entropy (+ z-loss) and accuracy over non-pad targets, in numpy
    float64, averaged over `batches`: what the eval step should log."""
    forward = nnx.jit(
        lambda model, b: model(
            b["inputs"],
            b["decoder_inputs"],
            attention_mask=b["inputs"] != 0,
            decoder_attention_mask=b["targets"] != 0,
        )
    )
    losses, accuracies = [], []
    for b in batches:
        logits = np.asarray(forward(model, b), np.float64)
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        label_logit = np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
        valid = b["targets"] != 0
        per_token = log_z - label_logit + z_loss * log_z**2
        losses.append(per_token[valid].mean())
        accuracies.append((logits.argmax(-1) == b["targets"])[valid].mean())
    return np.mean(losses), np.mean(accuracies)


@pytest.fixture
def compilation_cache(tmp_path):
    """A persistent compilation cache for one test: runs that compile the same train and eval
    steps compile them once."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update(names[0], str(tmp_path / "xla_cache"))
    jax.config.update(names[1], 0.5)
    cc.reset_cache()
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    cc.reset_cache()


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache")
def test_async_checkpoints_sigterm_resume_keep_and_eval(tmp_path, monkeypatch):
    """With the default asynchronous saves: SIGTERM at step 3 saves step 3 and returns; the rerun
    resumes there and ends with the parameters and logged losses of an uninterrupted run;
    `checkpoint.keep=2` leaves the two newest steps; eval steps log the eval split's loss and
    accuracy under the model in eval mode (dropout is on in training)."""
    objective = objectives.get("span_corruption")

    def patch(**functions):  # the registered objective with some of its functions replaced
        patched = dataclasses.replace(objective, **functions)
        monkeypatch.setitem(objectives._REGISTRY, "span_corruption", patched)

    patch(describe_example=lambda *args, **kwargs: "")
    # Starting from a saved random model skips compiling the random init in each of the 3 runs.
    init = checkpoint.save_model(
        tmp_path / "init", models.build(config_lib.get_preset("t5-tiny"), seed=0)
    )
    common = {
        "model.init_from": str(init),
        "model.dropout_rate": 0.1,
        "checkpoint.async_save": True,
        "checkpoint.every": 2,
        "checkpoint.keep": 2,
        "train.steps": 6,
        "train.log_every": 1,
        "train.eval_every": 3,
        "train.eval_steps": 2,
    }
    run_inprocess(tmp_path / "a", **common)

    num_tokens, calls = objective.num_tokens, []

    def sigterm_at_step_3(batch):  # called once per step, after the step ran
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return num_tokens(batch)

    patch(describe_example=lambda *args, **kwargs: "", num_tokens=sigterm_at_step_3)
    run_inprocess(tmp_path / "b", **common)
    assert checkpoint.latest_step(tmp_path / "b" / "checkpoints") == 3
    assert logged(tmp_path / "b")[-1]["step"] == 3
    patch(describe_example=lambda *args, **kwargs: "")
    run_inprocess(tmp_path / "b", **common)

    chex.assert_trees_all_equal(_params(tmp_path / "a"), _params(tmp_path / "b"))
    a, b = logged(tmp_path / "a"), logged(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for run in ("a", "b"):
        assert sorted(os.listdir(tmp_path / run / "checkpoints")) == ["4", "6"], run

    assert [r["step"] for r in a if "eval_loss" in r] == [3, 6]
    assert [r["eval_loss"] for r in a if "eval_loss" in r] == [
        r["eval_loss"] for r in b if "eval_loss" in r
    ]
    config = objectives.load_config(None, tiny_overrides(**common))
    tok = resolve.load_tokenizer(config)
    spec = resolve.data_spec(config, train=False)
    eval_ds, _ = train.make_pipeline(
        config, objective, tok, spec, train=False, stats=data.ReadStats()
    )
    it = iter(eval_ds)
    batches = [next(it) for _ in range(2)]
    model = checkpoint.load_model(tmp_path / "a" / "checkpoints")  # step 6, eval mode
    loss, accuracy = _eval_metrics(model, batches, z_loss=config.objective.z_loss)
    np.testing.assert_allclose(a[-1]["eval_loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(a[-1]["eval_accuracy"], accuracy, rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss .* at step"):
        run_inprocess(
            tmp_path,
            **{
                "train.steps": 50,
                "checkpoint.every": 1,
                "optim.learning_rate": 1e12,
                "optim.schedule": "constant",
                "optim.grad_clip": 0.0,
            },
        )
    last = checkpoint.latest_step(tmp_path / "checkpoints")
    model = checkpoint.load_model(tmp_path / "checkpoints")
    assert last >= 1
    chex.assert_tree_all_finite(nnx.state(model, nnx.Param))


def test_bfloat16_compute_trains_finite(tmp_path):
    run_inprocess(
        tmp_path, **{"train.steps": 10, "checkpoint.every": 1000, "model.dtype": "bfloat16"}
    )
    losses = [r["loss"] for r in logged(tmp_path)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_gradient_accumulation_matches_full_batch(tmp_path):
    common = {
        "train.steps": 3,
        "checkpoint.every": 1000,
        "train.log_every": 1,
        "model.dropout_rate": 0.0,
    }
    run_inprocess(tmp_path / "full", **common)
    run_inprocess(tmp_path / "accum", **common, **{"optim.grad_accum_steps": 2})
    full, accum = logged(tmp_path / "full"), logged(tmp_path / "accum")
    # Span-corruption targets differ in length, so the mean of micro-batch means is not the
    # token mean; equal token counts per micro-batch are not guaranteed. Compare loosely.
    np.testing.assert_allclose([r["loss"] for r in accum], [r["loss"] for r in full], rtol=2e-2)


# ----------------------------------------------------------------------------- bad input


def test_unknown_config_key_lists_near_keys():
    with pytest.raises(KeyError, match="train.stpes.*train.steps"):
        run_config.from_command_line(None, ["--config.train.stpes=3"])
    with pytest.raises(ValueError, match="expected a int"):
        run_config.from_command_line(None, ["--config.train.steps=abc"])


def test_cli_unknown_key_is_one_line_error(tmp_path):
    result = subprocess.run(
        cli(tmp_path, **{"optim.lerning_rate": 1}), env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "optim.learning_rate" in result.stderr and "Traceback" not in result.stderr


def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = json.dumps({"dialogue": "hello there", "summary": "hi"})
    data = _jsonl(tmp_path / "d.jsonl", [good, good, "{not json", good])
    with pytest.raises(ValueError, match=r"d\.jsonl:3: malformed record"):
        run_inprocess(
            tmp_path / "w",
            **{
                "data.source": "jsonl",
                "data.path": str(data),
                "data.eval_split": "",
                "train.steps": 1,
            },
        )


def test_skip_bad_records_counts_them(tmp_path):
    good = json.dumps({"dialogue": "#Person1#: hello there, how are you doing today?"})
    data = _jsonl(tmp_path / "d.jsonl", [good] * 20 + ["{oops", "[1, 2]"])
    run_inprocess(
        tmp_path / "w",
        **{
            "data.source": "jsonl",
            "data.path": str(data),
            "data.eval_split": "",
            "data.skip_bad_records": True,
            "train.steps": 5,
            "checkpoint.every": 1000,
        },
    )
    assert logged(tmp_path / "w")[-1]["skipped_records"] == 2


def test_missing_field_names_field_position_and_fields(tmp_path):
    data = _jsonl(
        tmp_path / "d.jsonl",
        [json.dumps({"dialogue": "a b c"}), json.dumps({"text": "d e f", "id": 3})],
    )
    with pytest.raises(
        KeyError,
        match=r"record at .*d\.jsonl:2 has no field 'dialogue'.*"
        r"\['id', 'text'\]",
    ):
        run_inprocess(
            tmp_path / "w",
            **{
                "data.source": "jsonl",
                "data.path": str(data),
                "data.eval_split": "",
                "train.steps": 1,
            },
        )


def test_empty_source_is_an_error(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [""])
    with pytest.raises(ValueError, match="has no records"):
        run_inprocess(
            tmp_path / "w",
            **{
                "data.source": "jsonl",
                "data.path": str(data),
                "data.eval_split": "",
                "train.steps": 1,
            },
        )


def test_long_texts_are_truncated_and_counted(tmp_path):
    long = " ".join(["word"] * 400)
    data = _jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"dialogue": long if i % 2 else "short one", "summary": "ok"})
            for i in range(20)
        ],
    )
    run_inprocess(
        tmp_path / "w",
        **{
            "data.source": "jsonl",
            "data.path": str(data),
            "data.eval_split": "",
            "objective.name": "seq2seq",
            "objective.targets_length": 8,
            "train.steps": 5,
            "checkpoint.every": 1000,
        },
    )
    assert logged(tmp_path / "w")[-1]["truncated_examples"] > 0


def test_fine_tune_from_a_hugging_face_directory(tmp_path):
    import torch
    from hf_reference import save_random_t5

    ref = save_random_t5(
        tmp_path / "hf", vocab_size=1024, feed_forward_proj="gated-gelu", tie_word_embeddings=False
    )
    overrides = {
        "model.init_from": str(tmp_path / "hf"),
        "objective.name": "seq2seq",
        "objective.targets_length": 16,
        "train.steps": 10,
        "checkpoint.every": 1000,
    }
    # Before any step, the state the loop starts from is the HF model itself, not merely a model
    # of its shapes: its logits are transformers' on the same input.
    config = objectives.load_config(None, tiny_overrides(**overrides))
    program = train.make_program(config, objectives.get("seq2seq"), vocab_size=1024)
    model, _ = nnx.merge(program.graphdef, train.init_state(program, config))
    model.eval()
    ids = np.random.default_rng(0).integers(2, 1024, (2, 9))
    dec = np.random.default_rng(1).integers(2, 1024, (2, 5))
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits
    chex.assert_trees_all_close(np.asarray(model(ids, dec)), expected.numpy(), atol=1e-4, rtol=1e-4)

    run_inprocess(tmp_path / "w", **overrides)
    losses = [r["loss"] for r in logged(tmp_path / "w")]
    assert losses[-1] < losses[0]
    model = checkpoint.load_model(tmp_path / "w" / "checkpoints")
    assert model.config.d_model == 32  # the HF model's shapes, not the preset's


def test_every_model_config_field_is_a_config_key():
    """A ModelConfig field the base config lacks could not be set from a file or the CLI."""
    block = run_config.load(None).model
    assert {f.name for f in dataclasses.fields(config_lib.ModelConfig)} <= set(block)


def test_model_fields_on_top_of_the_preset_shape_it_as_transformers_does():
    import transformers

    fields = {
        "model.vocab_size": 512,
        "model.d_model": 96,
        "model.num_heads": 3,
        "model.d_ff": 200,
        "model.num_layers": 3,
        "model.num_decoder_layers": 2,
        "model.feed_forward_proj": "relu",
        "model.tie_word_embeddings": "true",
        "model.layer_norm_epsilon": 1,  # an int where a float is expected is fine
    }
    config = objectives.load_config(None, tiny_overrides(**fields))
    model = models.build(resolve.model_config(config, vocab_size=300))
    preset = config_lib.get_preset("t5-tiny")
    reference = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=512,
            d_model=96,
            d_kv=preset.d_kv,
            d_ff=200,
            num_layers=3,
            num_decoder_layers=2,
            num_heads=3,
            relative_attention_num_buckets=preset.relative_attention_num_buckets,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
        )
    )
    ours = {k: v.shape for k, v in hf.to_hf_tensors(model).items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours.items() <= theirs.items()
    assert sum(np.prod(s) for s in ours.values()) == reference.num_parameters()
    assert model.config.layer_norm_epsilon == 1.0


def test_vocabulary_is_sized_from_the_tokenizer(tmp_path):
    from t5x_lite import corpus, tokenizer

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(r["dialogue"] for r in corpus.generate(200)), encoding="utf-8")
    tok = tokenizer.train(text, tmp_path / "tok", vocab_size=300)  # 400 ids with sentinels
    config = objectives.load_config(None, tiny_overrides(**{"tokenizer.path": tmp_path / "tok"}))
    # T5 pads its 32,100 ids (32,000 pieces + 100 sentinels) to 32,128.
    assert resolve.padded_vocab_size(32_100) == 32_128
    assert resolve.model_config(config, tok.vocab_size).vocab_size == 512
    config.model.vocab_size = 384  # set: smaller than the tokenizer is an error naming both
    with pytest.raises(ValueError, match=r"tokenizer.path=.*400 ids.*model.vocab_size=384"):
        resolve.model_config(config, tok.vocab_size)
    config.model.vocab_size = 640  # larger is fine
    assert resolve.model_config(config, tok.vocab_size).vocab_size == 640


def test_model_field_errors_name_the_key(tmp_path):
    config = objectives.load_config(None, tiny_overrides(**{"model.d_model": "wide"}))
    with pytest.raises(ValueError, match=r"model.d_model='wide': expected a int"):
        resolve.model_config(config, vocab_size=1024)
    with pytest.raises(KeyError, match="model.num_layers"):
        objectives.load_config(None, tiny_overrides(**{"model.num_layer": 3}))
    checkpoint.save_model(tmp_path / "ckpt", models.build(config_lib.get_preset("t5-tiny")))
    overrides = {"model.init_from": tmp_path / "ckpt", "model.num_layers": 3}
    config = objectives.load_config(None, tiny_overrides(**overrides))
    with pytest.raises(ValueError, match=r"model.num_layers cannot be set with model.init_from"):
        resolve.model_config(config, vocab_size=1024)


def test_eval_data_is_never_the_training_file_by_accident(tmp_path, caplog):
    rows = [json.dumps({"dialogue": f"d {i}", "summary": "s"}) for i in range(4)]
    one = _jsonl(tmp_path / "all.jsonl", rows)

    def spec(**overrides):
        config = objectives.load_config(None, tiny_overrides(**overrides))
        return resolve.data_spec(config, train=False)

    with caplog.at_level("INFO", logger="t5x_lite.train"):
        assert spec(**{"data.source": "jsonl", "data.path": one}) is None
    assert "eval is off: data.path=" in caplog.text and "set data.eval_path" in caplog.text
    held_out = spec(**{"data.source": "jsonl", "data.path": one, "data.eval_path": one})
    assert held_out.path == str(one)  # evaluating on the training file, said explicitly
    assert spec(**{"data.eval_split": ""}) is None
    assert spec().split == "validation"  # the embedded corpus has its own
    (tmp_path / "dir").mkdir()
    _jsonl(tmp_path / "dir" / "train.jsonl", rows)
    missing = spec(**{"data.source": "jsonl", "data.path": tmp_path / "dir"})
    with pytest.raises(FileNotFoundError, match=r"without validation.jsonl .*data.eval_split="):
        data.read_records(missing)


def test_a_scanned_run_from_an_unrolled_checkpoint_trains_as_the_unrolled_run(tmp_path):
    """model.scan_layers on top of model.init_from converts the parameters' layout on reading;
    the scanned run's losses and parameters are the unrolled run's. Resuming it unrolled (its
    optimizer state is stacked too) is an error naming both ways forward."""
    init = checkpoint.save_model(
        tmp_path / "init", models.build(config_lib.get_preset("t5-tiny"), seed=0)
    )
    common = {"model.init_from": str(init), "train.steps": 3, "train.log_every": 1}
    run_inprocess(tmp_path / "unrolled", **common)
    run_inprocess(tmp_path / "scanned", **common, **{"model.scan_layers": True})
    scanned = checkpoint.load_model(tmp_path / "scanned" / "checkpoints")
    assert scanned.config.scan_layers and scanned.encoder.layers.mlp.wo.kernel.ndim == 3
    losses = lambda run: [r["loss"] for r in logged(tmp_path / run)]
    chex.assert_trees_all_close(losses("scanned"), losses("unrolled"), rtol=1e-5)
    unrolled = models.with_layout(scanned, scan_layers=False)
    chex.assert_trees_all_close(
        jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))),
        _params(tmp_path / "unrolled"),
        atol=1e-5,  # Adam divides gradient rounding differences by small second moments
    )
    with pytest.raises(ValueError, match=r"trained with model.scan_layers=True: resume with"):
        run_inprocess(tmp_path / "scanned", **common, **{"model.scan_layers": False})
