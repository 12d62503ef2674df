"""Checkpoint conversion between Hugging Face directories and native Orbax checkpoints.

    conversion.hf_to_native("flan-t5-small/", "ckpt/")    # t5x-lite convert --from-hf ... --to
    conversion.native_to_hf("ckpt/", "hf_out/")           # t5x-lite convert --from ... --to-hf

Tokenizer files found beside the source (spiece.model and friends) are copied to the target, so
either side stays a complete model directory.

    model, tok = conversion.load_for_inference("runs/default")   # workdir, native or HF directory
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from t5x_lite import checkpoint, hf, models
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


def hf_to_native(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *, architecture: str | None = None
) -> Path:
    model = hf.from_pretrained(hf_dir, architecture=architecture)
    checkpoint.save_model(out_dir, model)
    _copy_tokenizer(Path(hf_dir), Path(out_dir) / "tokenizer")
    log.info("wrote native checkpoint %s (%s)", out_dir, model.config.architecture)
    return Path(out_dir)


def native_to_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    model = checkpoint.load_model(ckpt_dir)
    hf.save_pretrained(model, out_dir)
    _copy_tokenizer(Path(ckpt_dir) / "tokenizer", Path(out_dir))
    log.info("wrote Hugging Face directory %s", out_dir)
    return Path(out_dir)


def _default_tokenizer_dir() -> Path:
    from t5x_lite import corpus

    return corpus.DEFAULT_TOKENIZER_DIR


def load_for_inference(
    path: str | os.PathLike, *, tokenizer_path: str | None = None, dtype: str | None = None
) -> tuple[models.Model, tokenizer_lib.Tokenizer]:
    """(model in eval mode, its tokenizer) from any model directory we know:

    - a Hugging Face directory (config.json with a model_type; tokenizer beside it),
    - a `t5x-lite train` workdir (latest step of `checkpoints/`; the run's `tokenizer.path`),
    - a native checkpoint from `t5x-lite convert` (tokenizer in its `tokenizer/` subdirectory).

    `tokenizer_path` overrides the tokenizer; where none is found, the shipped one is used.
    The tokenizer must not have more ids than the model's vocabulary.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"model path {str(path)!r} does not exist: expected a Hugging Face directory, a "
            "`t5x-lite train` workdir or a native checkpoint directory"
        )
    overrides = {} if dtype is None else {"dtype": dtype}
    found: Path | None = None
    if hf.is_hf_directory(path):
        model = hf.from_pretrained(path, **overrides)
        if any((path / n).exists() for n in tokenizer_lib.SPM_FILENAMES):
            found = path
    elif (path / "checkpoints").is_dir():
        model = checkpoint.load_model(path / "checkpoints", **overrides)
        run = path / "config.json"
        if run.exists():
            saved = json.loads(run.read_text()).get("tokenizer", {}).get("path", "")
            found = Path(saved) if saved else _default_tokenizer_dir()
    else:
        model = checkpoint.load_model(path, **overrides)
        if (path / "tokenizer").is_dir():
            found = path / "tokenizer"
    if tokenizer_path:
        found = Path(tokenizer_path)
    tok = tokenizer_lib.load(found if found is not None else _default_tokenizer_dir())
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tok.source} has {tok.vocab_size} ids but the model at {path} has "
            f"vocab_size={model.config.vocab_size}; pass a matching tokenizer"
        )
    model.eval()
    return model, tok
