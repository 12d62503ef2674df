"""LoRA adapters on the model's weights, their own Orbax checkpoints, and Hugging Face PEFT's
adapter format in both directions.

    from t5x_lite import lora
    model = lora.apply(model, lora.LoraConfig(rank=8, alpha=16.0, targets=r".*/(q|v)"))
    print(lora.describe(model))       # trainable params: ... || all params: ... || trainable%: ...
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)   # only the adapters train
    lora.merge(model); lora.unmerge(model)
    lora.save(model, "adapter/");  model = lora.load(base, "adapter/")
    lora.to_peft(model, "peft/");  model = lora.from_peft(base, "peft/")  # PeftModel loads it

An adapter sits beside the weight it adapts (`<weight>_lora`, a `layers.LoRA`) and is applied
inside that weight's einsum (`layers.product`), so training, generation and the KV cache see it
without a wrapper. A target is named by its module path with the weight: attention
`encoder/layers/0/self_attn/q` (q, k, v, o; `cross_attn` in the decoder), MLP
`decoder/layers/3/mlp/wi` (wi, or wi_0 / wi_1 when gated, and wo), and the heads `lm_head`,
`classifier`. `targets` is a regular expression that must match a whole path.

Written on `nnx.LoRAParam` rather than qwix's `LoraProvider`: qwix matches its rules by module
path and op, and our q, k, v and o live in one attention module, so it cannot adapt q and v
without k and o; its LoRA dropout runs in eval mode too; and an NNX model gets one intercepted
method, while generation calls `prefill` and `step`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import checkpoint, hf, models
from t5x_lite.layers import LoRA, input_ndim

_PEFT_PREFIX = "base_model.model."
_PEFT_TASK = {"encoder_decoder": "SEQ_2_SEQ_LM", "encoder_only": "FEATURE_EXTRACTION"}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r; alpha, with scale alpha / r (rsLoRA: alpha / sqrt(r)); dropout on the adapter's
    input in train mode; `targets`, a regex over target paths (T5's default: q and v of every
    attention)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = r".*/(q|v)"
    rslora: bool = False

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"lora.rank={self.rank!r}: expected a positive integer")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha={self.alpha!r}: expected a positive number")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r}: expected a rate in [0, 1)")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(
                f"lora.targets={self.targets!r} is not a regular expression: {e}"
            ) from None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def candidates(model: nnx.Module) -> dict[str, tuple[nnx.Module, str]]:
    """Every weight an adapter may attach to: path -> (module, weight name)."""
    out = {}
    for parts, module in nnx.iter_modules(model):
        for name in getattr(module, "ADAPTABLE", {}):
            path = "/".join(map(str, parts)) + ("" if name == "kernel" else f"/{name}")
            out[path] = (module, name)
    return out


def adapters(model: nnx.Module) -> dict[str, tuple[nnx.Module, str, LoRA]]:
    """The adapters the model has: path -> (module, weight name, adapter)."""
    return {
        path: (module, name, getattr(module, f"{name}_lora"))
        for path, (module, name) in candidates(model).items()
        if getattr(module, f"{name}_lora") is not None
    }


def _pattern_list(paths) -> str:
    """The paths with layer numbers folded ('encoder/layers/*/self_attn/q'), for messages."""
    return ", ".join(sorted({re.sub(r"/\d+/", "/*/", p) for p in paths}))


def apply(model: models.Model, cfg: LoraConfig, *, seed: int = 0) -> models.Model:
    """Attach a new adapter to every weight whose path `cfg.targets` matches (in place; the model
    is returned). The base weights are untouched, so the outputs do not change until B trains."""
    if model.config.scan_layers:
        raise ValueError(
            "LoRA adapts each layer's weights by path (encoder/layers/0/self_attn/q); set "
            "model.scan_layers=false to train adapters (parameters convert on loading)"
        )
    found = candidates(model)
    matched = [p for p in found if re.fullmatch(cfg.targets, p)]
    if not matched:
        raise ValueError(
            f"lora.targets={cfg.targets!r} matches no weight of this "
            f"{model.config.architecture} model; the paths are: {_pattern_list(found)}"
        )
    if adapters(model):
        raise ValueError("the model has LoRA adapters already; apply LoRA to a model without")
    dropouts = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
    deterministic = bool(dropouts and dropouts[0].deterministic)  # train or eval, as the model
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    for path in matched:
        module, name = found[path]
        adapter = LoRA(
            module.ADAPTABLE[name],
            getattr(module, name),
            rank=cfg.rank,
            scale=cfg.scale,
            dropout_rate=cfg.dropout,
            dtype=module.dtype,
            rngs=rngs,
        )
        adapter.dropout.deterministic = deterministic
        setattr(module, f"{name}_lora", adapter)
    model.lora_config = cfg  # static: part of the graph definition
    return model


def config_of(model: nnx.Module) -> LoraConfig | None:
    return getattr(model, "lora_config", None)


def to_json(cfg: LoraConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_json(fields: dict) -> LoraConfig:
    return LoraConfig(**fields)


def count(model: nnx.Module, *, trainable=nnx.LoRAParam) -> tuple[int, int]:
    """(trainable parameters, all parameters including them); `trainable` filters them."""
    size = lambda state: sum(x.size for x in jax.tree.leaves(state))
    return size(nnx.state(model, trainable)), size(nnx.state(model, nnx.Param))


def describe(model: nnx.Module, *, trainable=nnx.LoRAParam) -> str:
    """PEFT's `print_trainable_parameters` line."""
    n, total = count(model, trainable=trainable)
    return f"trainable params: {n:,} || all params: {total:,} || trainable%: {100 * n / total:.4f}"


def merge(model: nnx.Module) -> nnx.Module:
    """Add each adapter's update to its weight (in place); the adapters then stay idle, so the
    outputs are the same, until `unmerge` takes the updates back out."""
    for module, name, adapter in adapters(model).values():
        if not adapter.merged:
            weight = getattr(module, name)
            weight[...] = weight[...] + adapter.delta().astype(weight.dtype)
            adapter.merged = True
    return model


def unmerge(model: nnx.Module) -> nnx.Module:
    for module, name, adapter in adapters(model).values():
        if adapter.merged:
            weight = getattr(module, name)
            weight[...] = weight[...] - adapter.delta().astype(weight.dtype)
            adapter.merged = False
    return model


# ----------------------------------------------------------------------------- Orbax adapters


def save(model: nnx.Module, directory: str | os.PathLike, *, step: int = 0) -> Path:
    """The adapters alone, as step `step` of an Orbax checkpoint directory (only the latest step
    is kept): each adapted path's A and B, and the LoraConfig with the adapted paths."""
    cfg = _require_adapters(model)
    found = adapters(model)
    paths = sorted(found)
    weights = [{"a": found[p][2].a[...], "b": found[p][2].b[...]} for p in paths]
    config = dict(to_json(cfg), method="lora", paths=paths)
    return checkpoint.save_adapter(directory, step, weights, config)


def load(model: models.Model, directory: str | os.PathLike) -> models.Model:
    """`model` with the adapters saved in `directory` (by `save`) applied; in place, returned."""
    weights, fields = checkpoint.load_adapter(directory)
    method = fields.pop("method", "lora")
    if method != "lora":
        raise ValueError(f"{directory} holds a {method} adapter, not LoRA")
    paths = fields.pop("paths")
    return _attach(model, from_json(fields), dict(zip(paths, weights, strict=True)), directory)


# ----------------------------------------------------------------------------- PEFT format


def _hf_modules(model: models.Model) -> dict[str, str]:
    """Our target path -> the HF module name of the same weight ('encoder.block.0....q')."""
    out = {}
    for ours, hf_name, _ in hf.parameter_map(model.config):
        path = "/".join(map(str, ours[:-1] if ours[-1] == "kernel" else ours))
        out[path] = hf_name.removesuffix(".weight")
    return out


def to_peft(model: models.Model, directory: str | os.PathLike, *, base_model: str = "") -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that
    `peft.PeftModel.from_pretrained(hf_model, directory)` loads onto the HF T5 model. PEFT's
    lora_A is (r, fan_in) and lora_B (fan_out, r), heads flattened as in HF's Linear."""
    cfg = _require_adapters(model)
    names = _hf_modules(model)
    tensors = {}
    for path, (_, _, adapter) in adapters(model).items():
        a = np.asarray(jax.device_get(adapter.a[...]), np.float32)
        b = np.asarray(jax.device_get(adapter.b[...]), np.float32)
        key = _PEFT_PREFIX + names[path]
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, cfg.rank).T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.reshape(cfg.rank, -1).T)
    peft_config = {
        "peft_type": "LORA",
        "task_type": _PEFT_TASK[model.config.architecture],
        "base_model_name_or_path": base_model or None,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": sorted(names[p] for p in adapters(model)),
        "inference_mode": True,
        **_PEFT_UNSUPPORTED,
    }
    return hf.save_peft(directory, tensors, peft_config)


# PEFT options with no counterpart here, each with the value that means "not used".
_PEFT_UNSUPPORTED = {
    "use_dora": False,
    "bias": "none",
    "modules_to_save": None,
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layer_replication": None,
    "lora_bias": False,
}


def from_peft(model: models.Model, directory: str | os.PathLike) -> models.Model:
    """`model` with the PEFT LoRA adapter in `directory` applied (in place; returned). The
    adapted layers are the ones the weights file holds; a PEFT feature we lack is refused."""
    peft, stored, weights_path = hf.read_peft(directory, "LORA")
    config_path = weights_path.parent / hf.PEFT_CONFIG
    for key, unused in _PEFT_UNSUPPORTED.items():
        if peft.get(key) not in (None, unused, {}, []):
            raise ValueError(
                f"{config_path}: {key}={peft[key]!r} is not supported by t5x_lite's LoRA "
                f"(expected {unused!r})"
            )
    cfg = LoraConfig(
        rank=int(peft.get("r", 8)),
        alpha=float(peft.get("lora_alpha", 8)),
        dropout=float(peft.get("lora_dropout", 0.0)),
        rslora=bool(peft.get("use_rslora", False)),
    )
    paths = {v: k for k, v in _hf_modules(model).items()}
    found = candidates(model)
    saved: dict[str, dict[str, np.ndarray]] = {}
    for key, value in stored.items():
        module, _, part = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if module not in paths or part not in ("A.weight", "B.weight"):
            raise ValueError(f"{weights_path}: tensor {key!r} is not a LoRA weight of this model")
        saved.setdefault(paths[module], {})[part[0]] = value
    weights = {}
    for path, parts in saved.items():
        owner, name = found[path]
        shape = getattr(owner, name).shape
        n_in = input_ndim(owner.ADAPTABLE[name])
        fan_in, fan_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
        expected = {"A": (cfg.rank, fan_in), "B": (fan_out, cfg.rank)}
        for part, want in expected.items():
            if parts.get(part) is None or parts[part].shape != want:
                got = None if parts.get(part) is None else parts[part].shape
                raise ValueError(
                    f"{weights_path}: lora_{part} of {path} (PEFT {_PEFT_PREFIX}"
                    f"{_hf_modules(model)[path]}) has shape {got}, but this model's layer needs "
                    f"{want} (r={cfg.rank})"
                )
        weights[path] = {
            "a": parts["A"].T.reshape(*shape[:n_in], cfg.rank),
            "b": parts["B"].T.reshape(cfg.rank, *shape[n_in:]),
        }
    return _attach(model, cfg, weights, weights_path)


# ----------------------------------------------------------------------------- helpers


def _require_adapters(model) -> LoraConfig:
    cfg = config_of(model)
    if cfg is None or not adapters(model):
        raise ValueError("the model has no LoRA adapters (apply them with lora.apply)")
    return cfg


def _attach(model, cfg: LoraConfig, weights: dict[str, dict[str, np.ndarray]], where):
    """`model` with adapters on exactly the paths of `weights` ({path: {"a": A, "b": B}}, in
    our shapes), set to them; a layer the model lacks or of other shapes is an error."""
    found = candidates(model)
    missing = sorted(set(weights) - set(found))
    if missing:
        raise ValueError(
            f"{where}: the adapter has {len(missing)} layer(s) this "
            f"{model.config.architecture} model lacks, e.g. {missing[:3]}"
        )
    for path, parts in weights.items():
        owner, name = found[path]
        shape = getattr(owner, name).shape
        n_in = input_ndim(owner.ADAPTABLE[name])
        want = {"a": (*shape[:n_in], cfg.rank), "b": (cfg.rank, *shape[n_in:])}
        for part, value in parts.items():
            if value.shape != want[part]:
                raise ValueError(
                    f"{where}: adapter {path} ({part.upper()}) has shape {value.shape}, but "
                    f"this model's layer (weight {tuple(shape)}) needs {want[part]}"
                )
    targets = "|".join(re.escape(p) for p in sorted(weights))
    apply(model, dataclasses.replace(cfg, targets=f"(?:{targets})"))
    for path, (_, _, adapter) in adapters(model).items():
        adapter.a[...] = jnp.asarray(weights[path]["a"], adapter.a.dtype)
        adapter.b[...] = jnp.asarray(weights[path]["b"], adapter.b.dtype)
    return model
