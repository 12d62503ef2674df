"""Model configuration: one frozen dataclass for all three assemblies, and presets by name.

    from t5x_lite import config
    cfg = config.get_preset("flan-t5-small")                  # a ModelConfig
    cfg = config.get_preset("t5-tiny", dtype="bfloat16")      # with field overrides

`ModelConfig` mirrors Hugging Face's `T5Config` field names (d_model, d_kv, d_ff, num_layers,
num_decoder_layers, num_heads, relative_attention_num_buckets, ...) so that a T5 user reads it
without a glossary; `t5x_lite.hf` maps one to the other. Library code takes a `ModelConfig`,
never an `ml_collections.ConfigDict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so np.dtype reads its names)
import numpy as np

ARCHITECTURES = ("encoder_decoder", "decoder_only", "encoder_only")
FEED_FORWARD_PROJ = ("relu", "gated-gelu", "gated-silu")
DTYPES = ("float32", "bfloat16", "float16")

Architecture = Literal["encoder_decoder", "decoder_only", "encoder_only"]


def dtype_name(value: Any) -> str:
    """The name of a dtype given as a string, a `jnp` / numpy scalar type or a `np.dtype`
    ("bfloat16", `jnp.bfloat16` and `np.dtype("bfloat16")` all give "bfloat16")."""
    try:
        return np.dtype(value).name
    except TypeError as e:
        raise ValueError(f"{value!r} is not a dtype; expected one of {', '.join(DTYPES)}") from e


# remat policy -> the `jax.checkpoint_policies` function it names (None: keep nothing; "none"
# is no rematerialisation at all).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": "dots_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a T5-family model (HF `T5Config` names where one exists)."""

    architecture: Architecture = "encoder_decoder"
    vocab_size: int = 32128  # V
    d_model: int = 512  # D
    d_kv: int = 64  # H, per-head dimension
    d_ff: int = 2048  # F
    num_layers: int = 6  # encoder layers (decoder layers for decoder_only)
    num_decoder_layers: int | None = None  # None: same as num_layers
    num_heads: int = 8  # N
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # relu (v1.0) | gated-gelu (v1.1, Flan) | gated-silu
    tie_word_embeddings: bool = True  # v1.0: tied and scaled by d_model**-0.5; v1.1: untied
    num_labels: int = 0  # encoder_only: size of the pooled classification/regression head
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"  # parameters and optimizer state stay float32
    # Rematerialisation of each block in training (`REMAT_POLICIES`): what the backward pass
    # recomputes instead of keeping from the forward pass. A runtime choice: not in HF configs.
    remat: str = "none"
    # Scan the block stack (`jax.lax.scan` over parameters stacked under a leading `layers`
    # axis): one block is compiled whatever the depth. Same outputs as the unrolled stack.
    scan_layers: bool = False

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(
                f"remat={self.remat!r} is not a remat policy; expected one of "
                f"{', '.join(REMAT_POLICIES)}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is not supported; expected one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if self.feed_forward_proj not in FEED_FORWARD_PROJ:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported; supported: "
                f"{', '.join(FEED_FORWARD_PROJ)}"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if not isinstance(value, str):  # a jnp / numpy dtype is kept by its name (JSON)
                try:
                    object.__setattr__(self, name, dtype_name(value))
                except ValueError as e:
                    raise ValueError(f"{name}={value!r}: {e}") from None
            if getattr(self, name) not in DTYPES:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is not supported; expected one of "
                    f"{', '.join(DTYPES)}"
                )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    def replace(self, **overrides) -> ModelConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown ModelConfig field(s) {unknown}; valid fields: "
                f"{', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls().replace(**d)


_V10 = dict(feed_forward_proj="relu", tie_word_embeddings=True, vocab_size=32128)
_V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=32128)
# Tiny shapes for tests and the CPU default recipe; vocab 1024 fits the shipped tokenizer.
_TINY = dict(
    vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=32,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)  # fmt: skip
_SMALL = dict(**_V11, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=8)
_SIZES_V10 = {  # name: (d_model, d_ff, num_layers, num_heads)
    "small": (512, 2048, 6, 8), "base": (768, 3072, 12, 12), "large": (1024, 4096, 24, 16),
}  # fmt: skip
_SIZES_V11 = {
    "small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
}  # fmt: skip


def _shapes(d_model, d_ff, num_layers, num_heads) -> dict:
    return dict(d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=num_layers, num_heads=num_heads)


PRESETS: dict[str, ModelConfig] = {
    "t5-tiny": ModelConfig(**_TINY),
    # T5 v1.0: relu MLP, tied embeddings.
    **{f"t5-{k}": ModelConfig(**_V10, **_shapes(*v)) for k, v in _SIZES_V10.items()},
    # T5 v1.1: gated-gelu MLP, untied LM head; Flan-T5: the same shapes, instruction-tuned.
    **{f"t5-v1_1-{k}": ModelConfig(**_V11, **_shapes(*v)) for k, v in _SIZES_V11.items()},
    **{f"flan-t5-{k}": ModelConfig(**_V11, **_shapes(*v)) for k, v in _SIZES_V11.items()},
    # Decoder-only (causal / prefix LM) and encoder-only (masked LM, pooled head) from the
    # same blocks.
    "decoder-tiny": ModelConfig(architecture="decoder_only", **_TINY),
    "decoder-small": ModelConfig(architecture="decoder_only", **_SMALL),
    "encoder-tiny": ModelConfig(architecture="encoder_only", num_labels=1, **_TINY),
    "encoder-small": ModelConfig(architecture="encoder_only", num_labels=1, **_SMALL),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The preset `name`, with dataclass fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
