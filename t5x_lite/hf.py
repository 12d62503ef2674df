"""Hugging Face T5 interop without torch: read and write `config.json` + safetensors.

    from t5x_lite import hf
    model = hf.from_pretrained("path/to/flan-t5-base")          # EncoderDecoder, eval mode
    encoder = hf.from_pretrained("path/to/t5", architecture="encoder_only")
    hf.save_pretrained(model, "out/")   # transformers.T5ForConditionalGeneration loads it

Reads T5 v1.0 / v1.1 / Flan-T5 / mT5 `*ForConditionalGeneration` and `T5EncoderModel`
directories, with `model.safetensors` or a sharded `model.safetensors.index.json`. The model is
built abstractly (no random init) and filled with the checkpoint, so loading costs one copy of
the weights. HF Linear weights are (out, in); ours are (in, out) with heads split out:
q/k/v (D, N, H), o (N, H, D).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import config as config_lib
from t5x_lite import models

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"

_ARCHITECTURE_FROM_HF = {
    "T5ForConditionalGeneration": "encoder_decoder",
    "MT5ForConditionalGeneration": "encoder_decoder",
    "T5Model": "encoder_decoder",
    "MT5Model": "encoder_decoder",
    "T5EncoderModel": "encoder_only",
    "MT5EncoderModel": "encoder_only",
}
_HF_CLASS = {"encoder_decoder": "T5ForConditionalGeneration", "encoder_only": "T5EncoderModel"}
# Parameters an EncoderOnly may lack in a T5 checkpoint: its heads start from random init.
_OPTIONAL_HEADS = ("lm_head.", "classifier.")


# ----------------------------------------------------------------------------- configs


def config_from_hf(
    hf_config: dict, *, architecture: str | None = None, source: str = "", **overrides
) -> config_lib.ModelConfig:
    """Our `ModelConfig` from a HF T5Config dict. `architecture` overrides the one named in
    `architectures` (e.g. load a T5ForConditionalGeneration's encoder as `encoder_only`)."""
    where = f" in {source}" if source else ""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r}{where} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in config_lib.FEED_FORWARD_PROJ:
        raise ValueError(
            f"feed_forward_proj={proj!r}{where} is not supported; supported: "
            f"{', '.join(config_lib.FEED_FORWARD_PROJ)}"
        )
    if architecture is None:
        names = hf_config.get("architectures") or ["T5ForConditionalGeneration"]
        architecture = _ARCHITECTURE_FROM_HF.get(names[0])
        if architecture is None:
            raise ValueError(
                f"architectures={names}{where} is not supported; supported: "
                f"{', '.join(_ARCHITECTURE_FROM_HF)}"
            )
    tie_default = model_type == "t5"  # HF's T5Config ties by default, MT5Config does not
    fields = dict(
        architecture=architecture,
        vocab_size=hf_config.get("vocab_size", 32128),
        d_model=hf_config.get("d_model", 512),
        d_kv=hf_config.get("d_kv", 64),
        d_ff=hf_config.get("d_ff", 2048),
        num_layers=hf_config.get("num_layers", 6),
        num_decoder_layers=hf_config.get("num_decoder_layers"),
        num_heads=hf_config.get("num_heads", 8),
        relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
        dropout_rate=hf_config.get("dropout_rate", 0.1),
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
        feed_forward_proj=proj,
        # transformers >= 5 always ties and records v1.0's output scaling separately.
        tie_word_embeddings=bool(
            hf_config.get(
                "scale_decoder_outputs", hf_config.get("tie_word_embeddings", tie_default)
            )
        ),
        pad_token_id=hf_config.get("pad_token_id", 0) or 0,
        eos_token_id=_first(hf_config.get("eos_token_id", 1)),
        decoder_start_token_id=hf_config.get("decoder_start_token_id", 0) or 0,
    )
    fields.update(overrides)
    return config_lib.ModelConfig(**fields)


def _first(value):
    return value[0] if isinstance(value, list | tuple) else value


def config_to_hf(cfg: config_lib.ModelConfig) -> dict:
    """A `config.json` dict that transformers' `T5Config` reads."""
    if cfg.architecture not in _HF_CLASS:
        raise ValueError(
            f"a {cfg.architecture} model has no Hugging Face T5 equivalent; save it as a native "
            "checkpoint instead (t5x_lite.checkpoint.save_model)"
        )
    return {
        "architectures": [_HF_CLASS[cfg.architecture]],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward_proj,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "scale_decoder_outputs": cfg.tie_word_embeddings,
        "is_encoder_decoder": cfg.architecture == "encoder_decoder",
        "use_cache": True,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- name mapping

# A conversion between one of our arrays and one HF tensor: (to_ours, to_hf).
Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]
_IDENTITY: Transform = (lambda w: w, lambda w: w)
_LINEAR: Transform = (lambda w: w.T, lambda w: w.T)


def _qkv(cfg) -> Transform:
    n, h, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    return (lambda w: w.T.reshape(d, n, h), lambda w: w.reshape(d, n * h).T)


def _out(cfg) -> Transform:
    n, h, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    return (lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T)


def _attention(ours: tuple, hf: str, cfg) -> Iterator[tuple[tuple, str, Transform]]:
    for name in "qkv":
        yield (*ours, name), f"{hf}.{name}.weight", _qkv(cfg)
    yield (*ours, "o"), f"{hf}.o.weight", _out(cfg)


def _stack(cfg, ours: str, hf: str, num_layers: int, cross: bool):
    yield (
        (ours, "relative_bias", "embedding"),
        (f"{hf}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        _IDENTITY,
    )
    for i in range(num_layers):
        o, b = (ours, "layers", i), f"{hf}.block.{i}.layer"
        yield from _attention((*o, "self_attn"), f"{b}.0.SelfAttention", cfg)
        yield (*o, "self_attn_norm", "scale"), f"{b}.0.layer_norm.weight", _IDENTITY
        mlp = 1
        if cross:
            yield from _attention((*o, "cross_attn"), f"{b}.1.EncDecAttention", cfg)
            yield (*o, "cross_attn_norm", "scale"), f"{b}.1.layer_norm.weight", _IDENTITY
            mlp = 2
        names = ("wi_0", "wi_1") if cfg.is_gated else ("wi",)
        for name in (*names, "wo"):
            yield (*o, "mlp", name, "kernel"), f"{b}.{mlp}.DenseReluDense.{name}.weight", _LINEAR
        yield (*o, "mlp_norm", "scale"), f"{b}.{mlp}.layer_norm.weight", _IDENTITY
    yield (ours, "final_norm", "scale"), f"{hf}.final_layer_norm.weight", _IDENTITY


def parameter_map(cfg: config_lib.ModelConfig) -> list[tuple[tuple, str, Transform]]:
    """(our parameter path, HF tensor name, transform) for every parameter of the model."""
    if cfg.architecture not in _HF_CLASS:
        config_to_hf(cfg)  # raises the explanatory error
    entries = [(("shared", "embedding"), "shared.weight", _IDENTITY)]
    entries += _stack(cfg, "encoder", "encoder", cfg.num_layers, cross=False)
    if cfg.architecture == "encoder_decoder":
        entries += _stack(cfg, "decoder", "decoder", cfg.decoder_layers, cross=True)
    if not cfg.tie_word_embeddings:
        entries.append((("lm_head", "kernel"), "lm_head.weight", _LINEAR))
    if cfg.architecture == "encoder_only" and cfg.num_labels > 0:
        entries.append((("classifier", "kernel"), "classifier.weight", _LINEAR))
        entries.append((("classifier", "bias"), "classifier.bias", _IDENTITY))
    return entries


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from e


def _weight_files(directory: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    single, index = directory / SAFETENSORS, directory / SAFETENSORS_INDEX
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="numpy") as f:
            return {k: single for k in f.keys()}
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a 'weight_map' object of tensor name -> file")
        return {k: directory / v for k, v in weight_map.items()}
    others = sorted(p.name for p in directory.iterdir())
    hint = (
        " (pytorch_model.bin needs torch: re-save it with "
        "`model.save_pretrained(dir, safe_serialization=True)`)"
        if "pytorch_model.bin" in others
        else ""
    )
    raise FileNotFoundError(
        f"no weights in {directory}: expected {SAFETENSORS} or {SAFETENSORS_INDEX}; "
        f"found {others}{hint}"
    )


def _load_tensor(path: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"weight file {path} (listed for tensor {name!r}) does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return f.get_tensor(name)
    except TypeError:  # bfloat16 has no numpy dtype in safetensors' numpy backend
        with safe_open(str(path), framework="flax") as f:
            return np.asarray(f.get_tensor(name).astype(jnp.float32))


def load_hf_config(path: str | os.PathLike) -> dict:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory: expected a Hugging Face model directory with "
            f"config.json and {SAFETENSORS}"
        )
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: expected a Hugging Face T5 config")
    return _read_json(config_path)


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    architecture: str | None = None,
    **config_overrides,
) -> models.Model:
    """Load a local HF T5-family directory into our model (eval mode, float32 parameters).

    dtype: compute dtype (e.g. "bfloat16"); `config_overrides` replace other ModelConfig fields
    (e.g. `num_labels=1` for an EncoderOnly reward-model head, `dropout_rate=0.0`).
    """
    directory = Path(path)
    if dtype is not None:
        config_overrides["dtype"] = dtype
    cfg = config_from_hf(
        load_hf_config(directory),
        architecture=architecture,
        source=str(directory / "config.json"),
        **config_overrides,
    )
    files = _weight_files(directory)
    scan_layers, cfg = cfg.scan_layers, cfg.replace(scan_layers=False)  # HF's layout, then ours
    entries = parameter_map(cfg)
    # tensor we need -> tensor stored in the files
    stored = {name: name for name in files}
    if not cfg.tie_word_embeddings and cfg.architecture == "encoder_decoder":
        # An untied head saved by a library that ties it anyway: start from the embedding.
        stored.setdefault("lm_head.weight", "shared.weight")
    elif "lm_head.weight" in files and cfg.architecture == "encoder_decoder":
        lm_head = _load_tensor(files["lm_head.weight"], "lm_head.weight")
        if not np.array_equal(lm_head, _load_tensor(files["shared.weight"], "shared.weight")):
            raise ValueError(
                f"{directory}: config asks for a tied, scaled LM head (T5 v1.0) but lm_head.weight "
                "differs from shared.weight; set tie_word_embeddings=false for an untied head"
            )
    missing = [hf for _, hf, _ in entries if hf not in stored]
    optional = cfg.architecture == "encoder_only"
    required_missing = [k for k in missing if not (optional and k.startswith(_OPTIONAL_HEADS))]
    if required_missing:
        raise ValueError(
            f"{directory} lacks {len(required_missing)} tensor(s) the config needs, e.g. "
            f"{required_missing[:5]}"
        )
    used = {hf for _, hf, _ in entries} | {
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }
    unused = sorted(k for k in files if k not in used)
    if unused:
        log.warning(
            "ignoring %d tensor(s) of %s not used by %s, e.g. %s",
            len(unused),
            directory,
            cfg.architecture,
            unused[:3],
        )

    if missing:  # random heads: a real init, then overwrite the rest
        log.warning("initialising %s randomly: not in %s", missing, directory)
        graphdef, state, rest = nnx.split(models.build(cfg), nnx.Param, ...)
    else:
        graphdef, state, rest = models.build_abstract(cfg)
    flat = dict(nnx.to_flat_state(state))
    for ours, hf_name, (to_ours, _) in entries:
        if hf_name in missing:
            continue
        var = flat[ours]
        value = to_ours(_load_tensor(files[stored[hf_name]], stored[hf_name]))
        if value.shape != tuple(var.shape):
            raise ValueError(
                f"parameter {hf_name} in {files[stored[hf_name]]} has shape {tuple(value.shape)} "
                f"(as ours: {'/'.join(map(str, ours))}), but the config expects "
                f"{tuple(var.shape)}"
            )
        var.set_value(jnp.asarray(value, dtype=cfg.param_dtype))
    model = nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
    model.eval()
    return models.with_layout(model, scan_layers=scan_layers)


# ----------------------------------------------------------------------------- writing


def to_hf_tensors(model: models.Model) -> dict[str, np.ndarray]:
    """HF T5 tensor name -> float32 numpy array, for every parameter of `model`."""
    model = models.with_layout(model, scan_layers=False)  # HF's layout: one block per layer
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for ours, hf_name, (_, to_hf) in parameter_map(model.config):
        value = np.asarray(jax.device_get(flat[ours][...]), dtype=np.float32)
        tensors[hf_name] = np.ascontiguousarray(to_hf(value))
    return tensors


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same directory, then rename: never a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_pretrained(model: models.Model, path: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write `config.json` + `model.safetensors` (float32) that transformers loads.

    Tied checkpoints store `shared.weight` once, as HF does. A `tokenizer`
    (t5x_lite.tokenizer.Tokenizer) is saved beside the weights when given.
    """
    from safetensors.numpy import save_file

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.config)
    tensors = to_hf_tensors(model)
    _atomic_write(
        directory / SAFETENSORS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(text))
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def is_hf_directory(path: str | os.PathLike) -> bool:
    """True for a directory that looks like a HF model (config.json with a model_type)."""
    p = Path(path) / "config.json"
    return p.exists() and "model_type" in _read_json(p)


# ----------------------------------------------------------------------------- PEFT adapters

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_peft(directory: str | os.PathLike, tensors: dict[str, np.ndarray], config: dict) -> Path:
    """A PEFT adapter directory: `adapter_config.json` + `adapter_model.safetensors`, each
    written whole or not at all."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        directory / PEFT_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / PEFT_CONFIG, lambda tmp: Path(tmp).write_text(text))
    return directory


def peft_type(directory: str | os.PathLike) -> str | None:
    """The `peft_type` of a PEFT adapter directory (LORA, PROMPT_TUNING, ...); None if it is
    not one."""
    path = Path(directory) / PEFT_CONFIG
    return _read_json(path).get("peft_type") if path.exists() else None


def read_peft(directory: str | os.PathLike, peft_type: str) -> tuple[dict, dict, Path]:
    """(adapter config, tensors, weights path) of a PEFT adapter directory of `peft_type`."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    for p in (config_path, weights_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist: expected a PEFT {peft_type} adapter")
    config = _read_json(config_path)
    if config.get("peft_type") != peft_type:
        raise ValueError(
            f"{config_path}: peft_type={config.get('peft_type')!r}; expected {peft_type!r}"
        )
    return config, load_file(str(weights_path)), weights_path
