"""Causal (next-token) language modelling on packed documents, for `DecoderOnly` models.

A document becomes `tokens + [EOS]`, trimmed to the row length; grain's first-fit packer puts
several in a row, kept apart by segment ids (seqio / T5X `trim_and_pack`). The model reads
`inputs`, the targets shifted right within each segment, so the first token of every segment
sees `bos_id` (0, T5's decoder start) and never the previous document's last token:

    stages, max_tokens = make_stages(tok, inputs_length=1024, pack=True, seed=0)
    loss, metrics = loss_fn(model, batch)   # batch: inputs, targets, segment_ids (B, T)

Padding is segment 0 and target 0, and counts in no loss.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

import objectives
from t5x_lite import losses, models

ARCHITECTURE = "decoder_only"


def preprocess(tokens: np.ndarray, *, eos_id: int = 1) -> dict[str, np.ndarray]:
    """A document's tokens (1-D, no EOS) -> {"targets": int32[len + 1]} = tokens + [EOS]."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D (one document), got shape {tokens.shape}")
    return {"targets": np.concatenate([tokens, [eos_id]]).astype(np.int32)}


# ----------------------------------------------------------------------------- shifting


def shift_right_segments(
    targets: np.ndarray, segment_ids: np.ndarray | None = None, bos_id: int = 0
) -> np.ndarray:
    """Decoder inputs for packed targets: shift right by one, restarting in every segment.

        inputs[..., t] = bos_id              if t == 0 or segment_ids[t] != segment_ids[t - 1]
                       = targets[..., t - 1] otherwise

    Works on [T] or [B, T]. Without segment ids it is the plain shift (one segment per row).
    Padding (segment 0) right after a segment gets bos_id too; it is masked out of the loss.
    """
    targets = np.asarray(targets)
    if targets.shape[-1] == 0:
        return targets.copy()
    shifted = np.concatenate([np.full_like(targets[..., :1], bos_id), targets[..., :-1]], axis=-1)
    if segment_ids is None:
        return shifted
    segment_ids = np.asarray(segment_ids)
    starts = np.concatenate(
        [np.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]],
        axis=-1,
    )
    return np.where(starts, bos_id, shifted).astype(targets.dtype)


# ----------------------------------------------------------------------------- train side


def fields(input_field: str, target_field: str) -> dict[str, str]:
    del target_field
    return {"targets": input_field}


def make_stages(tokenizer, *, inputs_length: int, pack: bool, seed: int):
    """grain stages (document tokens -> packed rows) and the longest document kept whole."""
    length = inputs_length

    def finish(ex):
        segments = ex.get("targets_segment_ids")
        if segments is None:  # unpacked: one document, padded
            targets = np.zeros((length,), np.int32)
            targets[: len(ex["targets"])] = ex["targets"]
            segments = (targets != 0).astype(np.int32)
        else:
            targets = ex["targets"].astype(np.int32)
        return {
            "inputs": shift_right_segments(targets, segments).astype(np.int32),
            "targets": targets,
            "segment_ids": segments.astype(np.int32),
        }

    def stages(ds: grain.IterDataset) -> grain.IterDataset:
        ds = ds.map(lambda ex: preprocess(ex["targets"], eos_id=tokenizer.eos_id))
        if pack:
            ds = grain.experimental.FirstFitPackIterDataset(
                ds,
                length_struct={"targets": length},
                num_packing_bins=8,
                seed=seed,
                shuffle_bins=False,
            )
        return ds.map(finish)

    return stages, length - 1  # room for EOS


def loss_fn(
    model: models.DecoderOnly, batch: dict, *, z_loss: float = 0.0, label_smoothing: float = 0.0
):
    """Next-token cross-entropy over real tokens; attention never crosses segments."""
    logits = model(batch["inputs"], segment_ids=batch["segment_ids"])
    return losses.cross_entropy(
        logits,
        batch["targets"],
        batch["segment_ids"] > 0,
        z_loss=z_loss,
        label_smoothing=label_smoothing,
    )


def num_tokens(batch: dict) -> int:
    return int((batch["segment_ids"] > 0).sum())


def describe_example(model, tokenizer, batch: dict) -> str:
    """The first packed document and the model's next-token predictions for it."""
    first = batch["segment_ids"][0] == 1
    predicted = np.asarray(model(batch["inputs"][:1], segment_ids=batch["segment_ids"][:1])).argmax(
        -1
    )[0]
    return "\n".join(
        [
            "example (teacher-forced next-token predictions):",
            f"  text:      {tokenizer.decode(batch['targets'][0][first].tolist())}",
            f"  predicted: {tokenizer.decode(predicted[first].tolist())}",
        ]
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Causal LM's options (the run config's `objective` block)."""

    inputs_length: int = 128  # row length, tokens
    pack: bool = True  # several documents per row (else one, padded)


OBJECTIVE = objectives.register(
    objectives.Objective(
        name="causal_lm",
        architecture=ARCHITECTURE,
        config=Config,
        fields=fields,
        make_stages=make_stages,
        loss_fn=loss_fn,
        num_tokens=num_tokens,
        describe_example=describe_example,
    )
)
