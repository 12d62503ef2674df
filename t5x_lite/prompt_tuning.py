"""Prompt tuning (Lester et al., 2021): n trainable virtual-token embeddings before the encoder
input (or a decoder-only model's prompt), everything else frozen; saved on their own, and in
Hugging Face PEFT's PROMPT_TUNING format for `SEQ_2_SEQ_LM` both ways.

    from t5x_lite import prompt_tuning
    model = prompt_tuning.apply(model, prompt_tuning.PromptConfig(num_tokens=20))
    optimizer = nnx.Optimizer(model, tx, wrt=prompt_tuning.PromptParam)
    prompt_tuning.save(model, "prompt/");  model = prompt_tuning.load(base, "prompt/")
    prompt_tuning.to_peft(model, "peft/"); model = prompt_tuning.from_peft(base, "peft/")

The prompt is a `layers.SoftPrompt` on the model (`model.prompt`). An encoder-decoder's `encode`
puts it before the input's embeddings and `input_mask` marks its positions real, so training
and generation (the cross-attention cache included) see it; a decoder-only model puts it before
its input (and its prefix, for prefix-LM), returns logits for the input's positions, and
`prefill` writes it into the KV cache with the prompt. Its initial rows are the embeddings of
distinct token ids sampled from the first `init_vocab` ids, as Lester et al. sample from the
5,000 most common tokens (T5's SentencePiece ids are roughly ordered by frequency). Packed
inputs are refused (rows would share one prompt). PEFT's format is for encoder-decoders: a
decoder-only T5 has no Hugging Face model to load it onto.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import checkpoint, hf, models
from t5x_lite.layers import PromptParam, SoftPrompt

__all__ = ["PromptConfig", "PromptParam", "apply", "save", "load", "to_peft", "from_peft"]

_FIRST_ID = 3  # after pad, eos and unk


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    num_tokens: int = 20
    init_vocab: int = 5000

    def __post_init__(self):
        if not isinstance(self.num_tokens, int) or self.num_tokens <= 0:
            raise ValueError(f"prompt.num_tokens={self.num_tokens!r}: expected a positive integer")
        if self.init_vocab <= _FIRST_ID:
            raise ValueError(f"prompt.init_vocab={self.init_vocab!r}: expected more than 3 ids")


def config_of(model) -> PromptConfig | None:
    return getattr(model, "prompt_config", None)


def to_json(cfg: PromptConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_json(fields: dict) -> PromptConfig:
    return PromptConfig(**fields)


def apply(model: models.Model, cfg: PromptConfig, *, seed: int = 0) -> models.Model:
    """Put a new soft prompt before `model`'s encoder input (in place; returned)."""
    _check_kind(model, "")
    if model.prompt is not None:
        raise ValueError("the model has a soft prompt already")
    vocab = min(cfg.init_vocab, model.config.vocab_size)
    if vocab - _FIRST_ID < cfg.num_tokens:
        raise ValueError(
            f"prompt.num_tokens={cfg.num_tokens} needs that many distinct ids among the first "
            f"{vocab}; lower it or raise prompt.init_vocab"
        )
    embedding = model.shared.embedding.get_value()
    if isinstance(embedding, jax.ShapeDtypeStruct):  # an abstract model, about to be restored
        shape = (cfg.num_tokens, embedding.shape[1])
        return _set(model, cfg, jax.ShapeDtypeStruct(shape, embedding.dtype))
    ids = jax.random.choice(
        jax.random.key(seed), jnp.arange(_FIRST_ID, vocab), (cfg.num_tokens,), replace=False
    )
    return _set(model, cfg, jnp.take(embedding, ids, axis=0))


def _set(model, cfg: PromptConfig, table) -> models.Model:
    if not isinstance(table, jax.ShapeDtypeStruct):
        table = jnp.asarray(table, model.shared.embedding.dtype)
    model.prompt = SoftPrompt(table)
    model.prompt_config = cfg  # static: part of the graph definition
    return model


def _table(model) -> np.ndarray:
    if config_of(model) is None or model.prompt is None:
        raise ValueError("the model has no soft prompt (add one with prompt_tuning.apply)")
    return np.asarray(jax.device_get(model.prompt.embedding[...]), np.float32)


def _check_kind(model, where, kinds=(models.EncoderDecoder, models.DecoderOnly)) -> None:
    if not isinstance(model, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(
            f"{where}{': ' if where else ''}a soft prompt goes on a {names} model; this one is "
            f"{model.config.architecture}"
        )


def _check(model, table: np.ndarray, where) -> None:
    _check_kind(model, where)
    want = model.config.d_model
    if table.ndim != 2 or table.shape[1] != want:
        raise ValueError(
            f"{where}: the prompt embeddings have shape {table.shape}, but this model's "
            f"embedding (shared, d_model={want}) needs (num_tokens, {want})"
        )


def save(model, directory: str | os.PathLike, *, step: int = 0) -> Path:
    """The soft prompt alone (an Orbax checkpoint step: its table and PromptConfig)."""
    config = dict(to_json(config_of(model) or PromptConfig()), method="prompt")
    return checkpoint.save_adapter(directory, step, {"embedding": _table(model)}, config)


def load(model: models.Model, directory: str | os.PathLike) -> models.Model:
    arrays, fields = checkpoint.load_adapter(directory)
    method = fields.pop("method", None)
    if method != "prompt":
        raise ValueError(f"{directory} holds a {method} adapter, not a soft prompt")
    table = np.asarray(arrays["embedding"])
    _check(model, table, directory)
    return _set(model, PromptConfig(**fields), table)


def to_peft(model: models.Model, directory: str | os.PathLike, *, base_model: str = "") -> Path:
    """PEFT's PROMPT_TUNING adapter (`SEQ_2_SEQ_LM`, one transformer submodule: the prompt goes
    before the encoder input, as PEFT's seq2seq prompt tuning uses it)."""
    _check_kind(model, directory, (models.EncoderDecoder,))
    table = _table(model)
    cfg = model.config
    peft_config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base_model or None,
        "num_virtual_tokens": int(table.shape[0]),
        "token_dim": cfg.d_model,
        "num_transformer_submodules": 1,
        "num_attention_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": True,
    }
    return hf.save_peft(directory, {"prompt_embeddings": np.ascontiguousarray(table)}, peft_config)


def from_peft(model: models.Model, directory: str | os.PathLike) -> models.Model:
    """`model` with the PEFT prompt-tuning adapter in `directory` (its encoder prompt)."""
    peft, stored, weights_path = hf.read_peft(directory, "PROMPT_TUNING")
    if "prompt_embeddings" not in stored:
        raise ValueError(f"{weights_path}: no 'prompt_embeddings' tensor; has {sorted(stored)}")
    n = int(peft["num_virtual_tokens"])
    table = stored["prompt_embeddings"][:n]  # the encoder's rows; a decoder's, if any, follow
    _check_kind(model, weights_path, (models.EncoderDecoder,))
    _check(model, table, weights_path)
    return _set(model, PromptConfig(num_tokens=n), table)
