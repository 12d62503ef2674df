"""Checkpoint conversion between Hugging Face directories and native Orbax checkpoints.

    conversion.hf_to_native("flan-t5-small/", "ckpt/")    # t5x-lite convert --from-hf ... --to
    conversion.native_to_hf("ckpt/", "hf_out/")           # t5x-lite convert --from ... --to-hf

Tokenizer files found beside the source (spiece.model and friends) are copied to the target, so
either side stays a complete model directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from t5x_lite import checkpoint, hf

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
