"""Checkpoint conversion between Hugging Face directories and native Orbax checkpoints.

    conversion.hf_to_native("flan-t5-small/", "ckpt/")    # t5x-lite convert --from-hf ... --to
    conversion.native_to_hf("runs/default", "hf_out/")    # t5x-lite convert --from ... --to-hf

A model travels with its tokenizer: HF -> native copies the tokenizer files into the
checkpoint's `tokenizer/`, native -> HF saves the model's tokenizer (`tokenizer_dir`) beside
the weights, so either side stays a complete model directory.

    model, tok = conversion.load_for_inference("runs/default")   # workdir, native or HF directory
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from t5x_lite import adapters, checkpoint, hf, lora, models
from t5x_lite import config as config_lib
from t5x_lite import tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "spiece.model",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def locate(path: str | os.PathLike, *, flag: str = "--model") -> tuple[str, Path]:
    """What `path` (given as `flag`) holds: `("hf", path)` for a Hugging Face directory, or
    `("native", checkpoints)` for a `t5x-lite train` workdir (its `checkpoints/`) or a native
    checkpoint directory. The three are accepted wherever a model is read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{flag} {str(path)!r} does not exist: expected a Hugging Face directory, a "
            "`t5x-lite train` workdir or a native checkpoint directory (for a workdir of "
            "`t5x-lite train`, such as the default ./runs/default, run that first)"
        )
    if hf.is_hf_directory(path):
        return "hf", path
    if (path / "checkpoints").is_dir():
        return "native", path / "checkpoints"
    return "native", path


def workdir_of(path: str | os.PathLike) -> Path | None:
    """The `t5x-lite train` workdir that `path` is, or whose `checkpoints/` it is; else None."""
    path = Path(path)
    for candidate in (path, path.parent):
        if (candidate / "config.json").is_file() and (candidate / "checkpoints").is_dir():
            if candidate == path or path.name == "checkpoints":
                return candidate
    return None


def model_config(
    path: str | os.PathLike, *, flag: str = "--model", **overrides
) -> config_lib.ModelConfig:
    """The ModelConfig of the model at `path` (see `locate`), with `overrides`; no weights read."""
    kind, where = locate(path, flag=flag)
    if kind == "hf":
        return hf.config_from_hf(hf.load_hf_config(where), **overrides)
    return checkpoint.load_model_config(where).replace(**overrides)


def load_model(path: str | os.PathLike, *, flag: str = "--model", **overrides) -> models.Model:
    """The model at `path` (see `locate`) in eval mode, `overrides` replacing config fields. A
    LoRA or prompt-tuning run's checkpoint comes back with its adapters (LoRA unmerged)."""
    kind, where = locate(path, flag=flag)
    if kind == "hf":
        return hf.from_pretrained(where, **overrides)
    method = checkpoint.load_json_item(where, checkpoint.ADAPTERS)
    adapt = None if method is None else (lambda m: adapters.apply(m, method))
    return checkpoint.load_model(where, adapt=adapt, **overrides)


def tokenizer_dir(path: str | os.PathLike) -> Path | None:
    """The tokenizer that travels with the model at `path`: a HF directory's own files, a
    workdir's `tokenizer/` (older workdirs: their config's `tokenizer.path`), a native
    checkpoint's `tokenizer/`; None where there is none (the shipped one was used)."""
    path = Path(path)
    workdir = workdir_of(path)
    if workdir is not None:
        if (workdir / "tokenizer").is_dir():
            return workdir / "tokenizer"
        saved = json.loads((workdir / "config.json").read_text()).get("tokenizer", {})
        return Path(saved["path"]) if saved.get("path") else None
    if hf.is_hf_directory(path):
        return path if any((path / n).exists() for n in tokenizer_lib.SPM_FILENAMES) else None
    return path / "tokenizer" if (path / "tokenizer").is_dir() else None


def hf_to_native(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, architecture: str | None = None
) -> Path:
    model = hf.from_pretrained(hf_dir, architecture=architecture)
    checkpoint.save_model(out_dir, model)
    _copy_tokenizer(Path(hf_dir), Path(out_dir) / "tokenizer")
    log.info("wrote native checkpoint %s (%s)", out_dir, model.config.architecture)
    return Path(out_dir)


def native_to_hf(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A workdir or native checkpoint as a Hugging Face directory, with its tokenizer
    (`tokenizer_dir`, else the shipped one) saved beside it, as `T5Tokenizer` reads it."""
    model = load_model(path, flag="--from")
    if lora.config_of(model) is not None:  # HF's T5 has no adapters: fold them in
        lora.merge(model)
        log.info("merged the LoRA adapters of %s into its weights", path)
    if model.prompt is not None:
        raise ValueError(
            f"{path} is prompt-tuned: a soft prompt has no place in a plain HF T5 checkpoint; "
            "export the base with its init_from and the prompt with prompt_tuning.to_peft"
        )
    tok = tokenizer_lib.load(tokenizer_dir(path) or default_tokenizer_dir())
    hf.save_pretrained(model, out_dir, tokenizer=tok)
    log.info("wrote Hugging Face directory %s (tokenizer %s)", out_dir, tok.source)
    return Path(out_dir)


def default_tokenizer_dir() -> Path:
    """The shipped tokenizer (vocabulary 1024), used where a model has none of its own."""
    from t5x_lite import corpus

    return corpus.DEFAULT_TOKENIZER_DIR


def load_for_inference(
    path: str | os.PathLike, *, tokenizer_path: str | None = None, dtype: Any = None
) -> tuple[models.Model, tokenizer_lib.Tokenizer]:
    """(model in eval mode, its tokenizer) from a Hugging Face directory, a `t5x-lite train`
    workdir or a native checkpoint (`locate`). The tokenizer is the model's own
    (`tokenizer_dir`) unless `tokenizer_path` is given; where the model has none, the shipped
    one. The tokenizer must not have more ids than the model's vocabulary."""
    model = load_model(path, **({} if dtype is None else {"dtype": dtype}))
    found = Path(tokenizer_path) if tokenizer_path else tokenizer_dir(path)
    tok = tokenizer_lib.load(found if found is not None else default_tokenizer_dir())
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tok.source} has {tok.vocab_size} ids but the model at {path} has "
            f"vocab_size={model.config.vocab_size}; pass a matching tokenizer"
        )
    model.eval()
    return model, tok
