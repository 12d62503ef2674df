"""Supervised input -> target training of an encoder-decoder (fine-tuning), and the
encoder-decoder loss that span corruption shares.

    stages, max_tokens = make_stages(tok, inputs_length=512, targets_length=128, seed=0)
    loss, metrics = loss_fn(model, batch)     # batch: inputs, targets (B, S) / (B, T)

Inputs and targets get EOS and are truncated to their lengths (counted by the data pipeline),
then padded (pad id 0); with `pack=True` several pairs share a row, kept apart by segment ids.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

import objectives
from objectives import causal_lm
from t5x_lite import losses, models

ARCHITECTURE = "encoder_decoder"


def fields(input_field: str, target_field: str) -> dict[str, str]:
    return {"inputs": input_field, "targets": target_field}


def append_eos(tokens: np.ndarray, length: int, eos_id: int = 1) -> np.ndarray:
    """tokens[: length - 1] + [EOS]: the sequence always ends with EOS."""
    return np.concatenate([tokens[: length - 1], [eos_id]]).astype(np.int32)


def pad_to(tokens: np.ndarray, length: int, pad_id: int = 0) -> np.ndarray:
    out = np.full((length,), pad_id, np.int32)
    out[: len(tokens)] = tokens[:length]
    return out


def make_stages(tokenizer, *, inputs_length: int, targets_length: int, pack: bool, seed: int):
    """grain stages (tokens -> fixed-length rows) and, per feature, the longest text kept whole."""
    targets_length = targets_length or inputs_length
    lengths = {"inputs": inputs_length, "targets": targets_length}

    def add_eos(ex):
        return {k: append_eos(ex[k], lengths[k], tokenizer.eos_id) for k in lengths}

    def stages(ds: grain.IterDataset) -> grain.IterDataset:
        ds = ds.map(add_eos)
        if pack:
            ds = grain.experimental.FirstFitPackIterDataset(
                ds, length_struct=lengths, num_packing_bins=8, seed=seed, shuffle_bins=False
            )
            return ds.map(_rename_packed)
        return ds.map(lambda ex: _pad(ex, lengths))

    # Room for EOS, as causal_lm: a text of `length` tokens already loses one to append_eos.
    return stages, {k: length - 1 for k, length in lengths.items()}


def _rename_packed(ex: dict) -> dict:
    targets, segments = ex["targets"].astype(np.int32), ex["targets_segment_ids"]
    return {
        "inputs": ex["inputs"].astype(np.int32),
        "targets": targets,
        "decoder_inputs": causal_lm.shift_right_segments(targets, segments),
        "inputs_segment_ids": ex["inputs_segment_ids"].astype(np.int32),
        "targets_segment_ids": segments.astype(np.int32),
    }


def _pad(ex: dict, lengths: dict) -> dict:
    out = {k: pad_to(ex[k], lengths[k]) for k in lengths}
    out["decoder_inputs"] = causal_lm.shift_right_segments(out["targets"])
    return out


def loss_fn(
    model: models.EncoderDecoder, batch: dict, *, z_loss: float = 0.0, label_smoothing: float = 0.0
):
    """Teacher-forced cross-entropy over non-pad target tokens (float32).

    `decoder_inputs` are the targets shifted right (within each packed segment), built by the
    pipeline; packed batches carry `inputs_segment_ids` / `targets_segment_ids`.
    """
    inputs, targets = batch["inputs"], batch["targets"]
    segments = batch.get("inputs_segment_ids")
    decoder_segments = batch.get("targets_segment_ids")
    logits = model(
        inputs,
        batch["decoder_inputs"],
        attention_mask=None if segments is not None else (inputs != 0),
        decoder_attention_mask=None if decoder_segments is not None else (targets != 0),
        segment_ids=segments,
        decoder_segment_ids=decoder_segments,
    )
    return losses.cross_entropy(
        logits, targets, targets != 0, z_loss=z_loss, label_smoothing=label_smoothing
    )


def num_tokens(batch: dict) -> int:
    """Real (non-pad) tokens in a batch, inputs and targets: the throughput unit."""
    return int((batch["inputs"] != 0).sum() + (batch["targets"] != 0).sum())


def describe_example(model, tokenizer, batch: dict, max_new_tokens: int = 32) -> str:
    """One input, its reference target and the model's greedy output, as printable text."""
    from t5x_lite import decoding

    inputs = batch["inputs"][:1]
    tokens, _ = decoding.generate(
        model, inputs, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id
    )
    return "\n".join(
        [
            "example:",
            f"  input:  {tokenizer.decode(inputs[0].tolist())}",
            f"  target: {tokenizer.decode(batch['targets'][0].tolist())}",
            f"  output: {tokenizer.decode(np.asarray(tokens[0]).tolist())}",
        ]
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Supervised seq2seq's options (the run config's `objective` block)."""

    inputs_length: int = 128  # encoder length, tokens including EOS
    targets_length: int = 0  # decoder length; 0: inputs_length
    pack: bool = True  # several pairs per row (T5X's packing)


OBJECTIVE = objectives.register(
    objectives.Objective(
        name="seq2seq",
        architecture=ARCHITECTURE,
        config=Config,
        fields=fields,
        make_stages=make_stages,
        loss_fn=loss_fn,
        num_tokens=num_tokens,
        describe_example=describe_example,
    )
)
