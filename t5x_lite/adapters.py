"""The parameter-efficient method a model carries (LoRA adapters or a soft prompt), in one
place: which variables train, which are the frozen base, the spec a checkpoint keeps to rebuild
the model, and loading or saving the adapter on its own in either format.

    spec = adapters.spec(model)              # {"lora": {...}} | {"prompt": {...}} | None
    model = adapters.apply(base, spec)        # the same adapters (new values) on a base model
    nnx.state(model, adapters.BASE)          # the base model's parameters
    adapters.save(model, "adapter/", step=n); adapters.load(base, "adapter/")  # Orbax or PEFT
"""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from t5x_lite import checkpoint, hf, lora, models, prompt_tuning
from t5x_lite.layers import PromptParam

ADDED = nnx.Any(nnx.LoRAParam, PromptParam)  # what the methods add to a model
BASE = nnx.All(nnx.Param, nnx.Not(ADDED))  # the model's own parameters


def trainable(method: dict | None) -> nnx.filterlib.Filter:
    """What the optimizer updates under `method` (a spec): every parameter without one."""
    if not method:
        return nnx.Param
    return nnx.LoRAParam if "lora" in method else PromptParam


def spec(model: models.Model) -> dict | None:
    """The method `model` carries, as JSON: {"lora": LoraConfig} or {"prompt": PromptConfig}."""
    if lora.config_of(model) is not None:
        return {"lora": lora.to_json(lora.config_of(model))}
    if prompt_tuning.config_of(model) is not None:
        return {"prompt": prompt_tuning.to_json(prompt_tuning.config_of(model))}
    return None


def apply(model: models.Model, method: dict | None, *, seed: int = 0) -> models.Model:
    """`model` with the method of `spec` added (freshly initialised); None adds nothing."""
    if not method:
        return model
    if set(method) - {"lora", "prompt"} or len(method) != 1:
        raise ValueError(f"an adapter spec names one of lora, prompt; got {sorted(method)}")
    if "lora" in method:
        return lora.apply(model, lora.from_json(method["lora"]), seed=seed)
    return prompt_tuning.apply(model, prompt_tuning.from_json(method["prompt"]), seed=seed)


def save(model: models.Model, directory: str | os.PathLike, *, step: int = 0) -> Path:
    """The model's adapter alone, as an Orbax checkpoint (`lora.save` / `prompt_tuning.save`)."""
    method = spec(model)
    if method is None:
        raise ValueError("the model has no LoRA adapters or soft prompt to save")
    if "lora" in method:
        return lora.save(model, directory, step=step)
    return prompt_tuning.save(model, directory, step=step)


def load(model: models.Model, directory: str | os.PathLike) -> models.Model:
    """`model` with the adapter in `directory` applied: a PEFT directory (LoRA or prompt
    tuning, by its `peft_type`) or one `save` wrote."""
    directory = Path(directory)
    if (directory / hf.PEFT_CONFIG).exists():
        if hf.peft_type(directory) == "PROMPT_TUNING":
            return prompt_tuning.from_peft(model, directory)
        return lora.from_peft(model, directory)
    config = checkpoint.load_json_item(directory, checkpoint.ADAPTER_CONFIG) or {}
    if config.get("method") == "prompt":
        return prompt_tuning.load(model, directory)
    return lora.load(model, directory)
