"""The T5 presets against the published Hugging Face `config.json` of each checkpoint, read by
transformers' own `T5Config`, and t5-small's parameter count against transformers' model."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from t5x_lite import config, hf, models

# The shape fields of each checkpoint's published config.json (google-t5/t5-*, google/t5-v1_1-*,
# google/flan-t5-*); fields a file leaves out take T5Config's defaults, as when loading it.
_COMMON = dict(
    architectures=["T5ForConditionalGeneration"],
    model_type="t5",
    d_kv=64,
    vocab_size=32128,
    relative_attention_num_buckets=32,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,
    decoder_start_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
)
_V10 = dict(_COMMON)  # no feed_forward_proj (relu) nor tie_word_embeddings (tied) in the files
_V11 = dict(_COMMON, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
PUBLISHED = {
    "t5-small": dict(_V10, d_model=512, d_ff=2048, num_layers=6, num_heads=8),
    "t5-base": dict(_V10, d_model=768, d_ff=3072, num_layers=12, num_heads=12),
    "t5-large": dict(_V10, d_model=1024, d_ff=4096, num_layers=24, num_heads=16),
    **{
        f"{family}-{size}": dict(
            _V11, d_model=d, d_ff=f, num_layers=n, num_decoder_layers=n, num_heads=h
        )
        for family in ("t5-v1_1", "flan-t5")
        for size, (d, f, n, h) in {
            "small": (512, 1024, 8, 6),
            "base": (768, 2048, 12, 12),
            "large": (1024, 2816, 24, 16),
        }.items()
    },
}
_SAME_NAME = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_the_published_config(name):
    published = PUBLISHED[name]
    ref = transformers.T5Config(**published)
    ours = config.get_preset(name)
    assert ours.architecture == "encoder_decoder"
    for field in _SAME_NAME:
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.decoder_layers == ref.num_decoder_layers
    assert ours.is_gated == ref.is_gated_act
    # v1.0 ties the LM head to the embedding (scaled by d_model**-0.5); v1.1 / Flan do not.
    # transformers 5 records that as scale_decoder_outputs.
    assert ours.tie_word_embeddings == published.get("tie_word_embeddings", True)
    assert ours.tie_word_embeddings == ref.scale_decoder_outputs
    # Our reader of config.json gives the preset back, and our writer's file reads as the same
    # T5Config.
    read = hf.config_from_hf(published)
    assert read.decoder_layers == ours.decoder_layers
    assert read.replace(num_decoder_layers=None) == ours  # None: as many as the encoder
    written = transformers.T5Config(**hf.config_to_hf(ours))
    for field in (*_SAME_NAME, "num_decoder_layers", "is_gated_act", "scale_decoder_outputs"):
        assert getattr(written, field) == getattr(ref, field), field


def _num_params(cfg) -> int:
    params = nnx.state(nnx.eval_shape(lambda: models.build(cfg)), nnx.Param)
    return sum(v.get_value().size for _, v in nnx.to_flat_state(params))


def _hf_num_params(name) -> int:
    with torch.device("meta"):  # shapes only
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(**PUBLISHED[name]))
    return model.num_parameters()


def test_parameter_counts_match_transformers():
    # t5-small: tied in both, 60,506,624 parameters (its published size).
    assert _num_params(config.get_preset("t5-small")) == _hf_num_params("t5-small") == 60_506_624
    # flan-t5-small carries an LM head of its own (V x D); transformers 5 ties a fresh model's.
    cfg = config.get_preset("flan-t5-small")
    lm_head = cfg.vocab_size * cfg.d_model
    assert _num_params(cfg) == _hf_num_params("flan-t5-small") + lm_head


@pytest.mark.parametrize("dtype", ["bfloat16", jnp.bfloat16, np.dtype(jnp.bfloat16), "float16"])
def test_dtypes_are_strings_or_jnp_and_numpy_dtypes(dtype):
    cfg = config.get_preset("t5-tiny", dtype=dtype, param_dtype=np.float32)
    assert (cfg.dtype, cfg.param_dtype) == (np.dtype(dtype).name, "float32")
    assert config.ModelConfig.from_dict(cfg.to_dict()) == cfg  # kept as names: JSON as before


def test_dict_round_trip_and_overrides():
    cfg = config.get_preset("t5-tiny", num_decoder_layers=3, dtype="bfloat16")
    assert config.ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.num_layers, cfg.decoder_layers) == (2, 3)
    assert config.get_preset("t5-tiny").decoder_layers == 2
    assert config.get_preset("t5-tiny") == config.PRESETS["t5-tiny"]  # overrides copy
    assert {f.name for f in dataclasses.fields(cfg)} >= set(_SAME_NAME)
    for bad, match in [
        (dict(architecture="rnn"), "architecture='rnn' is not supported"),
        (dict(dtype="int8"), "dtype='int8' is not supported"),
        (dict(dtype=jnp.int8), "dtype='int8' is not supported"),
        (dict(param_dtype=3.5), "param_dtype=3.5: 3.5 is not a dtype"),
        (dict(num_heads=0), "num_heads must be positive, got 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            config.get_preset("t5-tiny", **bad)
