"""Parity with Hugging Face transformers' PyTorch T5, built here from random weights.

Each case saves a tiny random HF model to a temp dir, loads it with `t5x_lite.hf`, and compares
logits (float32, padded inputs) and the loss with labels against PyTorch.
"""

import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_reference import TINY, save_random_t5

from t5x_lite import hf, losses, models

BASE = dict(vocab_size=101)
CASES = {
    "v1_1_gated_gelu_untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "v1_0_relu_tied": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "decoder_layers_differ": dict(
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        num_layers=3,
        num_decoder_layers=1,
    ),
    "buckets_and_distance": dict(
        feed_forward_proj="relu",
        relative_attention_num_buckets=10,
        relative_attention_max_distance=12,
    ),
    "gated_silu": dict(feed_forward_proj="gated-silu", tie_word_embeddings=False),
}


def make_hf(tmp_path, seed=0, cls=transformers.T5ForConditionalGeneration, **overrides):
    return save_random_t5(tmp_path, cls=cls, seed=seed, **{**BASE, **overrides})


def padded_batch(seed=0, vocab=101, b=3, s=13, t=7):
    g = np.random.default_rng(seed)
    ids = g.integers(2, vocab, (b, s))
    mask = np.ones((b, s), np.int64)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    labels = g.integers(2, vocab, (b, t))
    labels[1, 5:] = -100
    return ids, mask, labels


def hf_logits(model, ids, mask, dec, dec_mask=None):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec),
            decoder_attention_mask=None if dec_mask is None else torch.tensor(dec_mask),
        ).logits.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_loss_match_hf(tmp_path, case):
    ref = make_hf(tmp_path, **CASES[case])
    ours = hf.from_pretrained(tmp_path)
    assert isinstance(ours, models.EncoderDecoder)
    ids, mask, labels = padded_batch()
    dec = np.asarray(models.shift_right(jnp.asarray(labels)))
    dec_mask = (labels != -100).astype(np.int64)
    dec_mask[:, 0] = 1

    logits = ours(ids, dec, mask, dec_mask)
    chex.assert_trees_all_close(
        np.asarray(logits), hf_logits(ref, ids, mask, dec, dec_mask), atol=1e-4, rtol=1e-4
    )

    with torch.no_grad():
        ref_loss = ref(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            labels=torch.tensor(labels),
        ).loss.item()
    loss, metrics = losses.cross_entropy(ours(ids, dec, mask), jnp.asarray(labels))
    chex.assert_trees_all_close(float(loss), ref_loss, atol=1e-5, rtol=1e-5)
    assert float(metrics["num_tokens"]) == (labels != -100).sum()


def test_t5_encoder_model_hidden_states(tmp_path):
    ref = make_hf(tmp_path, cls=transformers.T5EncoderModel, feed_forward_proj="gated-gelu")
    ours = hf.from_pretrained(tmp_path)
    assert isinstance(ours, models.EncoderOnly)
    ids, mask, _ = padded_batch(seed=1)
    with torch.no_grad():
        expected = ref(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    chex.assert_trees_all_close(np.asarray(ours.encode(ids, mask)), expected, atol=1e-4, rtol=1e-4)


def test_encoder_of_a_seq2seq_checkpoint(tmp_path):
    ref = make_hf(tmp_path, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ours = hf.from_pretrained(tmp_path, architecture="encoder_only", num_labels=2)
    ids, mask, _ = padded_batch(seed=2)
    with torch.no_grad():
        expected = ref.encoder(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    chex.assert_trees_all_close(np.asarray(ours.encode(ids, mask)), expected, atol=1e-4, rtol=1e-4)
    chex.assert_shape(ours.classify(ids, mask), (3, 2))


@pytest.mark.parametrize("case", ["v1_1_gated_gelu_untied", "v1_0_relu_tied"])
def test_round_trip_through_save_pretrained(tmp_path, case):
    ref = make_hf(tmp_path / "src", **CASES[case])
    ours = hf.from_pretrained(tmp_path / "src")
    hf.save_pretrained(ours, tmp_path / "out")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids, mask, labels = padded_batch(seed=3)
    dec = np.asarray(models.shift_right(jnp.asarray(labels)))
    chex.assert_trees_all_close(
        hf_logits(reloaded, ids, mask, dec), hf_logits(ref, ids, mask, dec), atol=1e-5, rtol=1e-5
    )


def test_encoder_only_saves_as_t5_encoder_model(tmp_path):
    ref = make_hf(tmp_path / "src", cls=transformers.T5EncoderModel)
    hf.save_pretrained(hf.from_pretrained(tmp_path / "src"), tmp_path / "out")
    reloaded = transformers.T5EncoderModel.from_pretrained(tmp_path / "out").eval()
    ids, mask, _ = padded_batch(seed=4)
    with torch.no_grad():
        a = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        b = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    chex.assert_trees_all_close(a.last_hidden_state.numpy(), b.last_hidden_state.numpy(), atol=1e-6)


def test_sharded_checkpoint(tmp_path):
    ref = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY, **BASE)).eval()
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / hf.SAFETENSORS_INDEX).exists()
    ours = hf.from_pretrained(tmp_path)
    ids, mask, labels = padded_batch(seed=5)
    dec = np.asarray(models.shift_right(jnp.asarray(labels)))
    chex.assert_trees_all_close(
        np.asarray(ours(ids, dec, mask)), hf_logits(ref, ids, mask, dec), atol=1e-4, rtol=1e-4
    )


def test_bfloat16_compute_is_finite_and_close(tmp_path):
    ref = make_hf(tmp_path, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ours = hf.from_pretrained(tmp_path, dtype=jnp.bfloat16)  # or "bfloat16", as Flax takes both
    assert ours.config.dtype == "bfloat16"
    ids, mask, labels = padded_batch(seed=6)
    dec = np.asarray(models.shift_right(jnp.asarray(labels)))
    logits = ours(ids, dec, mask)
    assert logits.dtype == jnp.float32  # logits are returned in float32
    assert ours.shared.embedding[...].dtype == jnp.float32  # params stay float32
    chex.assert_tree_all_finite(logits)
    expected = hf_logits(ref, ids, mask, dec)
    assert np.abs(np.asarray(logits) - expected).max() < 0.1 * np.abs(expected).max()


# ----------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    make_hf(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["d_ff"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"DenseReluDense\.wi\.weight.*\(32, 48\).*\(32, 64\)"):
        hf.from_pretrained(tmp_path)


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*config.json"):
        hf.from_pretrained(tmp_path / "nope")
    make_hf(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.from_pretrained(tmp_path)


def test_unsupported_feed_forward_proj(tmp_path):
    make_hf(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["feed_forward_proj"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="feed_forward_proj='gelu'.*relu, gated-gelu, gated-silu"):
        hf.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.final_layer_norm.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder.final_layer_norm.weight"):
        hf.from_pretrained(tmp_path)


def test_decoder_only_has_no_hf_form(tmp_path):
    from t5x_lite import config

    with pytest.raises(ValueError, match="no Hugging Face T5 equivalent"):
        hf.save_pretrained(models.build(config.get_preset("decoder-tiny")), tmp_path)


def test_scanned_layers_load_and_round_trip(tmp_path):
    """`scan_layers=True` stacks the checkpoint's blocks under a leading layer axis: the same
    logits as PyTorch, and `save_pretrained` writes one block per layer again, as HF loads it."""
    ref = make_hf(tmp_path / "src", **CASES["decoder_layers_differ"])  # 3 encoder, 1 decoder
    ours = hf.from_pretrained(tmp_path / "src", scan_layers=True)
    assert ours.encoder.layers.self_attn.q.shape == (3, 32, 4, 8)  # (layers, D, N, H)
    ids, mask, labels = padded_batch(seed=4)
    dec = np.asarray(models.shift_right(jnp.asarray(labels)))
    want = hf_logits(ref, ids, mask, dec)
    chex.assert_trees_all_close(np.asarray(ours(ids, dec, mask)), want, atol=1e-4, rtol=1e-4)
    hf.save_pretrained(ours, tmp_path / "out")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    chex.assert_trees_all_close(hf_logits(reloaded, ids, mask, dec), want, atol=1e-5, rtol=1e-5)
