"""LoRA against Hugging Face PEFT: parameter counts, PEFT's own forward pass on adapters we
export, adapters PEFT saves imported here, merge / unmerge, frozen base weights under training,
sharded training, exact resume, and the errors for bad adapters and options."""

import json
from pathlib import Path

import chex
import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import save_random_t5
from test_sharding import train_on_devices

import objectives
from t5x_lite import config, conversion, hf, lora, models, train

HF = dict(vocab_size=101, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
IDS = np.array([[5, 6, 7, 8, 9, 1], [11, 12, 1, 0, 0, 0]], np.int32)
DEC = np.array([[0, 9, 10, 11], [0, 4, 3, 2]], np.int32)


def _ours(model):
    return np.asarray(model(IDS, DEC, attention_mask=(IDS != 0).astype(np.int32)))


def _peft_logits(peft_model):
    with torch.no_grad():
        return peft_model(
            input_ids=torch.tensor(IDS).long(),
            attention_mask=torch.tensor(IDS != 0).long(),
            decoder_input_ids=torch.tensor(DEC).long(),
        ).logits.numpy()


def _randomise_b(model, seed=1):
    """B starts at zero; give it values so the adapters change the outputs."""
    for i, (_, _, adapter) in enumerate(lora.adapters(model).values()):
        key = jax.random.fold_in(jax.random.key(seed), i)
        adapter.b[...] = 0.2 * jax.random.normal(key, adapter.b.shape)


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny", "encoder-tiny"])
def test_a_new_adapter_leaves_the_logits_exactly_unchanged(preset):
    model = models.build(config.get_preset(preset), seed=0)
    model.eval()
    ids = np.arange(2, 14, dtype=np.int32).reshape(2, 6)
    run = (lambda m: m(ids, ids)) if preset == "t5-tiny" else (lambda m: m(ids))
    before = np.asarray(run(model))
    lora.apply(model, lora.LoraConfig(rank=4, targets=r".*/(q|k|v|o|wi.*|wo)"))
    chex.assert_trees_all_equal(np.asarray(run(model)), before)
    _randomise_b(model)
    assert not np.allclose(np.asarray(run(model)), before)


def test_flan_t5_base_counts_what_peft_counts():
    """r=32 on q and v of Flan-T5-base's shapes: the numbers PEFT prints for the same setup."""
    cfg = config.get_preset("flan-t5-base")
    model = nnx.eval_shape(
        lambda: lora.apply(models.build(cfg), lora.LoraConfig(rank=32, alpha=32.0))
    )
    hf_config = transformers.T5Config(**hf.config_to_hf(cfg))
    with torch.device("meta"):
        hf_model = transformers.T5ForConditionalGeneration(hf_config)
        # Flan-T5's head is its own weight (transformers 5 would tie it to the embedding).
        hf_model.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf_model.lm_head.weight))
        reference = peft.get_peft_model(
            hf_model, peft.LoraConfig(r=32, lora_alpha=32, target_modules=["q", "v"])
        )
    trainable, total = reference.get_nb_trainable_parameters()
    assert lora.count(model) == (trainable, total) == (3_538_944, 251_116_800)
    assert lora.describe(model) == (
        "trainable params: 3,538,944 || all params: 251,116,800 || trainable%: 1.4093"
    )


@pytest.mark.parametrize(
    "options",
    [
        dict(rank=4, alpha=8.0),
        dict(rank=2, alpha=3.0, rslora=True, targets=r".*/(q|k|v|o|wi_0|wi_1|wo)"),
    ],
)
def test_peft_runs_our_exported_adapter(tmp_path, options):
    save_random_t5(tmp_path / "hf", **HF)
    model = lora.apply(hf.from_pretrained(tmp_path / "hf"), lora.LoraConfig(**options))
    _randomise_b(model)
    lora.to_peft(model, tmp_path / "adapter")
    base = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    reference = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    chex.assert_trees_all_close(_ours(model), _peft_logits(reference), atol=1e-4, rtol=1e-4)


def test_an_adapter_peft_saved_imports_here(tmp_path):
    torch.manual_seed(0)
    base = save_random_t5(tmp_path / "hf", **HF)
    trained = peft.get_peft_model(
        base,
        peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=["q", "v", "wo"], init_lora_weights=False
        ),
    ).eval()
    trained.save_pretrained(tmp_path / "adapter")
    model = lora.from_peft(hf.from_pretrained(tmp_path / "hf"), tmp_path / "adapter")
    assert {p.rsplit("/", 1)[1] for p in lora.adapters(model)} == {"q", "v", "wo"}
    chex.assert_trees_all_close(_ours(model), _peft_logits(trained), atol=1e-4, rtol=1e-4)


def test_merge_equals_the_unmerged_adapter_and_unmerge_restores_the_base(tmp_path):
    save_random_t5(tmp_path / "hf", **HF)
    model = hf.from_pretrained(tmp_path / "hf")
    base_logits = _ours(model)
    lora.apply(model, lora.LoraConfig(rank=4, targets=r".*/(q|v|o|wo)"))
    _randomise_b(model)
    unmerged = _ours(model)
    lora.merge(model)
    chex.assert_trees_all_close(_ours(model), unmerged, atol=1e-5, rtol=1e-5)
    merged_q = np.asarray(model.encoder.layers[0].self_attn.q[...])
    lora.merge(model)  # merging twice adds nothing
    chex.assert_trees_all_equal(np.asarray(model.encoder.layers[0].self_attn.q[...]), merged_q)
    lora.unmerge(model)
    chex.assert_trees_all_close(_ours(model), unmerged, atol=1e-5, rtol=1e-5)
    model.encoder.layers[0].self_attn.q_lora.b[...] *= 0  # one adapter off: its layer is base
    assert not np.allclose(_ours(model), base_logits)


def test_dropout_acts_in_train_mode_only():
    model = models.build(config.get_preset("t5-tiny"), seed=0)
    model.eval()
    lora.apply(model, lora.LoraConfig(rank=4, dropout=0.5))
    _randomise_b(model)
    ids = np.arange(2, 14, dtype=np.int32).reshape(2, 6)
    no_dropout = models.build(config.get_preset("t5-tiny"), seed=0)
    no_dropout.eval()
    lora.apply(no_dropout, lora.LoraConfig(rank=4, dropout=0.0))
    nnx.update(no_dropout, nnx.state(model, nnx.Param))  # the same weights and adapters
    chex.assert_trees_all_equal(np.asarray(model(ids, ids)), np.asarray(no_dropout(ids, ids)))
    model.train()
    assert not np.allclose(np.asarray(model(ids, ids)), np.asarray(no_dropout(ids, ids)))


def test_adapter_checkpoint_round_trips_with_its_config(tmp_path):
    model = models.build(config.get_preset("t5-tiny"), seed=0)
    model.eval()
    cfg = lora.LoraConfig(rank=3, alpha=5.0, targets=r"decoder/.*/(q|wo)", rslora=True)
    lora.apply(model, cfg)
    _randomise_b(model)
    lora.save(model, tmp_path / "adapter")
    fresh = models.build(config.get_preset("t5-tiny"), seed=0)
    fresh.eval()
    loaded = lora.load(fresh, tmp_path / "adapter")
    got = lora.config_of(loaded)
    assert (got.rank, got.alpha, got.rslora) == (3, 5.0, True)
    assert sorted(lora.adapters(loaded)) == sorted(lora.adapters(model))
    ids = np.arange(2, 14, dtype=np.int32).reshape(2, 6)
    chex.assert_trees_all_equal(np.asarray(loaded(ids, ids)), np.asarray(model(ids, ids)))


# ----------------------------------------------------------------------------- bad input


def test_a_target_that_matches_nothing_lists_the_paths():
    model = models.build(config.get_preset("t5-tiny"), seed=0)
    with pytest.raises(ValueError, match=r"matches no weight.*encoder/layers/\*/self_attn/q"):
        lora.apply(model, lora.LoraConfig(targets=r".*/query"))


def test_lora_on_scanned_layers_is_refused_by_name():
    model = models.build(config.get_preset("t5-tiny", scan_layers=True), seed=0)
    with pytest.raises(ValueError, match=r"set model.scan_layers=false to train adapters"):
        lora.apply(model, lora.LoraConfig())


@pytest.mark.parametrize(
    "options,key", [({"rank": 0}, "rank"), ({"rank": -2}, "rank"), ({"alpha": 0.0}, "alpha")]
)
def test_rank_and_alpha_must_be_positive(options, key):
    with pytest.raises(ValueError, match=f"lora.{key}="):
        lora.LoraConfig(**options)


def test_an_adapter_for_other_shapes_names_the_layer_and_both_shapes(tmp_path):
    save_random_t5(tmp_path / "small", **HF)
    save_random_t5(tmp_path / "wide", **{**HF, "d_ff": 64})
    small = lora.apply(hf.from_pretrained(tmp_path / "small"), lora.LoraConfig(targets=".*/wo"))
    lora.to_peft(small, tmp_path / "peft")
    lora.save(small, tmp_path / "orbax")
    with pytest.raises(ValueError, match=r"layers/0/mlp/wo.*\(8, 48\).*\(8, 64\)"):
        lora.from_peft(hf.from_pretrained(tmp_path / "wide"), tmp_path / "peft")
    with pytest.raises(ValueError, match=r"layers/0/mlp/wo.*\(48, 8\).*\(64, 8\)"):
        lora.load(hf.from_pretrained(tmp_path / "wide"), tmp_path / "orbax")


@pytest.mark.parametrize(
    "option,value", [("use_dora", True), ("bias", "all"), ("modules_to_save", ["lm_head"])]
)
def test_an_unsupported_peft_feature_is_refused_by_name(tmp_path, option, value):
    save_random_t5(tmp_path / "hf", **HF)
    model = lora.apply(hf.from_pretrained(tmp_path / "hf"), lora.LoraConfig())
    lora.to_peft(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), option: value}))
    with pytest.raises(ValueError, match=f"{option}=.* is not supported"):
        lora.from_peft(hf.from_pretrained(tmp_path / "hf"), tmp_path / "adapter")


# ----------------------------------------------------------------------------- training


def _lora_config(**extra):
    overrides = {
        "objective.name": "seq2seq",
        "objective.inputs_length": 32,
        "objective.targets_length": 16,
        "train.batch_size": 8,
        "train.progress_bar": False,
        "data.eval_split": "",  # no eval, nor the closing example (a generate compile)
        "checkpoint.async_save": False,
        "lora.rank": 4,
        "lora.targets": r".*/(q|v|wo)",
        **extra,
    }
    return objectives.load_config(None, [f"--config.{k}={v}" for k, v in overrides.items()])


def _flat(state) -> dict[str, np.ndarray]:
    """Parameter path -> a copy of its value (a donated step may reuse the buffers)."""
    flat = nnx.to_flat_state(nnx.filter_state(state, nnx.Param))
    return {"/".join(map(str, k)): np.array(v[...], copy=True) for k, v in flat}


def _losses(workdir) -> list[float]:
    return [
        json.loads(x)["loss"] for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_training_step_changes_only_the_adapters():
    run_config = _lora_config(**{"optim.schedule": "constant"})  # warmup's step 0 has lr 0
    program = train.make_program(run_config, objectives.get("seq2seq"), vocab_size=1024)
    state = train.init_state(program, run_config)
    before = _flat(state[0])
    rows = lambda start, n: np.tile(np.arange(start, start + n, dtype=np.int32), (8, 1))
    batch = {"inputs": rows(2, 32), "targets": rows(3, 16), "decoder_inputs": rows(2, 16)}
    state, _ = program.train_step(state, program.to_global(batch))
    after = _flat(state[0])
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed and all("_lora/" in k for k in changed), changed[:5]  # base bitwise equal
    assert any(k.endswith("_lora/b") for k in changed)
    model, optimizer = nnx.merge(program.graphdef, state)
    moments = [x for x in jax.tree.leaves(nnx.state(optimizer.opt_state)) if x.ndim > 0]
    lora_size = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    assert sum(x.size for x in moments) == 2 * lora_size  # AdamW's mu and nu, adapters only


def test_lora_training_lowers_the_loss_and_saves_the_adapter(tmp_path):
    run_config = _lora_config(**{"train.steps": 30, "optim.learning_rate": 1e-2})
    train.train_and_evaluate(run_config, str(tmp_path), objectives.get("seq2seq"))
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0]
    # The base stayed the random init it started from (made here eagerly, there under jit:
    # equal to float32 rounding), so that init plus the saved adapters is the trained model,
    # as the workdir's checkpoint gives it back.
    base = models.build(config.get_preset("t5-tiny"), seed=0)
    base.eval()
    adapted = lora.load(base, tmp_path / "adapter")
    trained = conversion.load_model(tmp_path)
    assert lora.config_of(trained).rank == 4
    ids = np.arange(2, 14, dtype=np.int32).reshape(2, 6)
    chex.assert_trees_all_close(
        np.asarray(trained(ids, ids)), np.asarray(adapted(ids, ids)), atol=1e-5, rtol=1e-5
    )
    # Exported to HF, the adapters are merged into the weights transformers reads.
    conversion.native_to_hf(tmp_path, tmp_path / "hf")
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(ids))
    chex.assert_trees_all_close(
        np.asarray(trained(ids, ids)), expected.logits.numpy(), atol=1e-4, rtol=1e-4
    )


def test_an_interrupted_lora_run_resumes_exactly(tmp_path):
    steps = {"optim.schedule": "constant", "checkpoint.every": 5, "train.log_every": 1}
    whole = _lora_config(**steps, **{"train.steps": 10})
    train.train_and_evaluate(whole, str(tmp_path / "a"), objectives.get("seq2seq"))
    half = _lora_config(**steps, **{"train.steps": 5})
    train.train_and_evaluate(half, str(tmp_path / "b"), objectives.get("seq2seq"))
    train.train_and_evaluate(whole, str(tmp_path / "b"), objectives.get("seq2seq"))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    loaded = [
        lora.load(models.build(config.get_preset("t5-tiny"), seed=0), tmp_path / w / "adapter")
        for w in ("a", "b")
    ]
    chex.assert_trees_all_equal(*(_flat(nnx.state(m, nnx.LoRAParam)) for m in loaded))


def test_lora_trains_the_same_on_a_2x2x2_mesh(tmp_path):
    lora_keys = {
        "lora.rank": 4,
        "lora.targets": r".*/(q|v|wi_0|wo)",
        "optim.warmup_steps": 1,  # the adapters move from the first step
        "optim.learning_rate": 1e-2,
    }
    one = train_on_devices(tmp_path / "one", 1, 4, **lora_keys)
    cube = train_on_devices(
        tmp_path / "cube",
        8,
        4,
        **lora_keys,
        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "mesh.rules": "fsdp_tp"},
    )
    assert one[0]["loss"] > one[-1]["loss"]  # the adapters learn
    np.testing.assert_allclose([r["loss"] for r in cube], [r["loss"] for r in one], rtol=1e-4)
