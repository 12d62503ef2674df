"""Prompt tuning against Hugging Face PEFT: PEFT's forward pass and `generate` on a prompt we
export, a prompt PEFT saves imported here, the frozen model under training, and bad input."""

import json

import chex
import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import save_random_t5

import objectives
from t5x_lite import (
    adapters,
    config,
    conversion,
    decoding,
    hf,
    models,
    prompt_tuning,
    resolve,
    train,
)

HF = dict(vocab_size=101, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
IDS = np.array([[5, 6, 7, 8, 9, 1], [11, 12, 1, 0, 0, 0]], np.int32)
MASK = (IDS != 0).astype(np.int32)
DEC = np.array([[0, 9, 10, 11], [0, 4, 3, 2]], np.int32)


def _torch(x):
    return torch.tensor(x).long()


def _prompted(tmp_path, num_tokens=5):
    save_random_t5(tmp_path / "hf", **HF)
    model = hf.from_pretrained(tmp_path / "hf")
    prompt_tuning.apply(model, prompt_tuning.PromptConfig(num_tokens=num_tokens), seed=3)
    return model


def test_peft_runs_our_exported_prompt_forward_and_generate(tmp_path):
    model = _prompted(tmp_path)
    ours = np.asarray(model(IDS, DEC, attention_mask=MASK))
    prompt_tuning.to_peft(model, tmp_path / "prompt")
    base = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    reference = peft.PeftModel.from_pretrained(base, str(tmp_path / "prompt")).eval()
    with torch.no_grad():
        expected = reference(
            input_ids=_torch(IDS), attention_mask=_torch(MASK), decoder_input_ids=_torch(DEC)
        ).logits.numpy()
        generated = reference.generate(
            input_ids=_torch(IDS), attention_mask=_torch(MASK), max_new_tokens=6, do_sample=False
        ).numpy()
    chex.assert_trees_all_close(ours, expected, atol=1e-4, rtol=1e-4)
    tokens, _ = decoding.generate(model, IDS, attention_mask=MASK, max_new_tokens=6, eos_id=1)
    tokens = np.asarray(tokens)
    for row, ref in zip(tokens, generated[:, 1:], strict=True):  # HF's start token first
        n = min(len(ref), len(row))
        assert list(row[:n]) == list(ref[:n])


def test_a_prompt_peft_saved_imports_here(tmp_path):
    torch.manual_seed(0)
    base = save_random_t5(tmp_path / "hf", **HF)
    tuned = peft.get_peft_model(
        base, peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
    ).eval()
    tuned.save_pretrained(tmp_path / "prompt")
    model = adapters.load(hf.from_pretrained(tmp_path / "hf"), tmp_path / "prompt")
    assert model.prompt.num_tokens == 4
    with torch.no_grad():
        expected = tuned(
            input_ids=_torch(IDS), attention_mask=_torch(MASK), decoder_input_ids=_torch(DEC)
        ).logits.numpy()
    chex.assert_trees_all_close(
        np.asarray(model(IDS, DEC, attention_mask=MASK)), expected, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_a_soft_prompt_of_token_embeddings_is_that_hard_prompt(preset):
    """The relative position bias sees distances only, so a soft prompt set to the embeddings
    of ids P is the model fed P before its input: the same logits, the same greedy tokens."""
    hard = np.array([7, 8, 9], np.int32)
    plain = models.build(config.get_preset(preset), seed=0)
    soft = prompt_tuning.apply(
        models.build(config.get_preset(preset), seed=0), prompt_tuning.PromptConfig(3)
    )
    soft.prompt.embedding[...] = soft.shared.embedding[...][hard]
    plain.eval(), soft.eval()
    ids = np.array([[5, 6, 7, 1, 0, 0], [11, 12, 13, 14, 15, 1]], np.int32)
    mask = (ids != 0).astype(np.int32)
    hard_ids = np.concatenate([np.tile(hard, (2, 1)), ids], axis=1)
    hard_mask = np.concatenate([np.ones((2, 3), np.int32), mask], axis=1)
    if preset == "t5-tiny":
        got = soft(ids, DEC, attention_mask=mask)
        want = plain(hard_ids, DEC, attention_mask=hard_mask)
    else:
        got, want = soft(ids, mask), plain(hard_ids, hard_mask)[:, 3:]
    chex.assert_trees_all_close(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    generate = lambda m, x, k: np.asarray(
        decoding.generate(m, x, attention_mask=k, max_new_tokens=5, eos_id=1)[0]
    )
    np.testing.assert_array_equal(generate(soft, ids, mask), generate(plain, hard_ids, hard_mask))


def test_decoder_only_prompt_training_moves_only_the_prompt():
    overrides = [
        "--config.objective.pack=false",
        "--config.objective.inputs_length=32",
        "--config.train.batch_size=8",
        "--config.optim.schedule=constant",
        "--config.prompt.num_tokens=4",
    ]
    run_config = objectives.load_config("configs/decoder_clm.py", overrides)
    program = train.make_program(run_config, objectives.get("causal_lm"), vocab_size=1024)
    state = train.init_state(program, run_config)
    flat = lambda s: {
        "/".join(map(str, k)): np.array(v[...], copy=True)
        for k, v in nnx.to_flat_state(nnx.filter_state(s, nnx.Param))
    }
    before = flat(state[0])
    ids = np.tile(np.arange(2, 34, dtype=np.int32), (8, 1))
    ids[:, 20:] = 0  # padded rows: the prompt must handle masks
    batch = {"inputs": np.roll(ids, 1, axis=1), "targets": ids, "segment_ids": (ids != 0) * 1}
    state, metrics = program.train_step(state, program.to_global(batch))
    after = flat(state[0])
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == ["prompt/embedding"], changed[:5]
    assert np.isfinite(float(metrics["loss"]))


def test_the_prompt_starts_as_sampled_vocabulary_embeddings(tmp_path):
    model = _prompted(tmp_path, num_tokens=7)
    table = np.asarray(model.prompt.embedding[...])
    vocab = np.asarray(model.shared.embedding[...])
    rows = [int(np.flatnonzero((vocab == r).all(1))[0]) for r in table]
    assert len(set(rows)) == 7 and min(rows) >= 3


def test_the_prompt_round_trips_on_its_own(tmp_path):
    model = _prompted(tmp_path)
    adapters.save(model, tmp_path / "saved")
    loaded = adapters.load(hf.from_pretrained(tmp_path / "hf"), tmp_path / "saved")
    chex.assert_trees_all_equal(
        np.asarray(loaded(IDS, DEC, attention_mask=MASK)),
        np.asarray(model(IDS, DEC, attention_mask=MASK)),
    )


def test_prompt_training_changes_only_the_prompt_and_the_workdir_keeps_it(tmp_path):
    overrides = {
        "objective.name": "seq2seq",
        "objective.inputs_length": 32,
        "objective.targets_length": 16,
        "objective.pack": False,
        "train.batch_size": 8,
        "train.steps": 6,
        "train.progress_bar": False,
        "data.eval_split": "",  # no eval, nor the closing example (a generate compile)
        "checkpoint.async_save": False,
        "optim.schedule": "constant",
        "optim.learning_rate": 0.3,
        "prompt.num_tokens": 4,
    }
    run_config = objectives.load_config(None, [f"--config.{k}={v}" for k, v in overrides.items()])
    train.train_and_evaluate(run_config, str(tmp_path), objectives.get("seq2seq"))
    trained = conversion.load_model(tmp_path)
    start = models.build(config.get_preset("t5-tiny"), seed=0)
    # The base is the init it started from (made there under jit: equal to float32 rounding);
    # only the prompt moved.
    base = lambda m: jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(m, adapters.BASE)))
    chex.assert_trees_all_close(base(trained), base(start), atol=1e-6, rtol=0)
    fresh = prompt_tuning.apply(
        models.build(config.get_preset("t5-tiny"), seed=0), prompt_tuning.PromptConfig(4)
    )
    assert not np.array_equal(trained.prompt.embedding[...], fresh.prompt.embedding[...])
    saved = adapters.load(models.build(config.get_preset("t5-tiny"), seed=0), tmp_path / "adapter")
    chex.assert_trees_all_equal(
        np.asarray(saved.prompt.embedding[...]), np.asarray(trained.prompt.embedding[...])
    )


# ----------------------------------------------------------------------------- bad input


def test_a_prompt_needs_a_generating_model():
    model = models.build(config.get_preset("encoder-tiny"), seed=0)
    with pytest.raises(ValueError, match="EncoderDecoder or DecoderOnly model; this one is enc"):
        prompt_tuning.apply(model, prompt_tuning.PromptConfig())
    decoder = prompt_tuning.apply(
        models.build(config.get_preset("decoder-tiny"), seed=0), prompt_tuning.PromptConfig()
    )
    with pytest.raises(ValueError, match="goes on a EncoderDecoder model; this one is decoder"):
        prompt_tuning.to_peft(decoder, "unused")


def test_prompt_tuning_refuses_packed_rows():
    overrides = ["--config.objective.name=seq2seq", "--config.prompt.num_tokens=4"]
    run_config = objectives.load_config(None, overrides)
    with pytest.raises(ValueError, match="objective.pack=false"):
        resolve.adapter_method(run_config)


def test_a_prompt_for_another_width_names_both_shapes(tmp_path):
    model = _prompted(tmp_path)
    prompt_tuning.to_peft(model, tmp_path / "prompt")
    save_random_t5(tmp_path / "wide", **{**HF, "d_model": 48})
    with pytest.raises(ValueError, match=r"\(5, 32\).*\(num_tokens, 48\)"):
        adapters.load(hf.from_pretrained(tmp_path / "wide"), tmp_path / "prompt")
    config_path = tmp_path / "prompt" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="peft_type='IA3'"):
        prompt_tuning.from_peft(hf.from_pretrained(tmp_path / "hf"), tmp_path / "prompt")
