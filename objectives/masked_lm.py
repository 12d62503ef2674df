"""BERT-style masked language modelling, host-side preprocessing.

Each non-special token is selected with probability `mask_rate` (15%); a selected token is, in
the inputs, replaced by `mask_id` (80%), by a random token (10%) or left as it is (10%). The model
predicts the original token at the selected positions only:

    rng = np.random.default_rng(seed)
    ex = preprocess(tokens, rng=rng, vocab_size=32128, mask_id=32127)   # tokens: [T] or [B, T]
    ex["inputs"], ex["targets"], ex["loss_mask"]                        # int32, int32, bool

Selection follows BERT / Hugging Face's `DataCollatorForLanguageModeling`: an independent
Bernoulli(mask_rate) per token, so the number selected varies from row to row (mean
mask_rate * n), rather than exactly round(n * mask_rate). Unlike that collator, random
replacements are drawn from `random_token_range`, not the whole vocabulary, so they are never
pad/EOS or a sentinel. A T5 vocabulary has no [MASK]; pass a sentinel (`<extra_id_0>` =
vocab_size - 1) as `mask_id`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

import objectives
from t5x_lite import losses, models

T5_NUM_SENTINELS = 100  # the <extra_id_*> tokens at the top of a T5 vocabulary
T5_FIRST_REGULAR_ID = 3  # after pad 0, EOS 1, UNK 2


def preprocess(
    tokens: np.ndarray,
    *,
    rng: np.random.Generator,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int] = (0, 1, 2),
    mask_rate: float = 0.15,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
    random_token_range: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Tokens (any shape, e.g. [T] or [B, T]) -> {"inputs", "targets", "loss_mask"}, same shape.

        selected  ~ Bernoulli(mask_rate) per token, never at `special_ids`
        u         ~ Uniform[0, 1) per token
        inputs    = mask_id            where selected & u < mask_token_rate
                  = Uniform[lo, hi)    where selected & mask_token_rate <= u < mask_token_rate
                                                                             + random_token_rate
                  = tokens             elsewhere (incl. the remaining selected, "keep")
        targets   = tokens
        loss_mask = selected

    A random replacement may by chance equal the original token (as in BERT), so "kept" tokens
    are slightly more than 1 - mask_token_rate - random_token_rate of the selected.

    Args:
        special_ids: ids never selected (pad, EOS, UNK by default; add BOS/CLS/SEP if used).
        random_token_range: [lo, hi) of the random replacements; default [3, vocab_size - 100),
            the regular tokens of a T5 vocabulary.
    """
    if not 0.0 <= mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in [0, 1], got {mask_rate}")
    if mask_token_rate < 0 or random_token_rate < 0 or mask_token_rate + random_token_rate > 1:
        raise ValueError(
            f"mask_token_rate={mask_token_rate} and random_token_rate={random_token_rate} must "
            "be >= 0 and sum to <= 1"
        )
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
    lo, hi = random_token_range or (T5_FIRST_REGULAR_ID, vocab_size - T5_NUM_SENTINELS)
    if not 0 <= lo < hi <= vocab_size:
        raise ValueError(f"random_token_range=[{lo}, {hi}) is empty or outside the vocabulary")

    tokens = np.asarray(tokens)
    maskable = ~np.isin(tokens, np.asarray(special_ids, dtype=tokens.dtype))
    selected = (rng.random(tokens.shape) < mask_rate) & maskable
    # One uniform draw splits the selected three ways; same law as BERT's two Bernoullis.
    u = rng.random(tokens.shape)
    to_mask = selected & (u < mask_token_rate)
    to_random = selected & (u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)
    random_tokens = rng.integers(lo, hi, size=tokens.shape)

    inputs = np.where(to_mask, mask_id, np.where(to_random, random_tokens, tokens))
    return {
        "inputs": inputs.astype(np.int32),
        "targets": tokens.astype(np.int32),
        "loss_mask": selected,
    }


# ----------------------------------------------------------------------------- train side

ARCHITECTURE = "encoder_only"


def fields(input_field: str, target_field: str) -> dict[str, str]:
    del target_field
    return {"targets": input_field}


def make_stages(tokenizer, *, inputs_length: int, mask_rate: float, seed: int):
    """grain stages: documents + EOS -> concatenated and split into rows of `inputs_length`
    (segment ids keep documents apart) -> BERT masking with `<extra_id_0>` as the mask token."""
    lo, hi = T5_FIRST_REGULAR_ID, tokenizer.vocab_size - tokenizer.num_sentinels

    def mask(ex, rng):
        out = preprocess(
            ex["targets"],
            rng=rng,
            vocab_size=tokenizer.vocab_size,
            mask_id=tokenizer.sentinel_id(0),
            special_ids=(tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id),
            mask_rate=mask_rate,
            random_token_range=(lo, hi),
        )
        return {
            "inputs": out["inputs"].astype(np.int32),
            "targets": out["targets"].astype(np.int32),
            "loss_mask": out["loss_mask"].astype(np.int32),
            "segment_ids": ex["targets_segment_ids"].astype(np.int32),
        }

    def stages(ds: grain.IterDataset) -> grain.IterDataset:
        ds = ds.map(lambda ex: {"targets": np.append(ex["targets"], tokenizer.eos_id)})
        ds = grain.experimental.ConcatThenSplitIterDataset(
            ds, length_struct={"targets": inputs_length}
        )
        return ds.random_map(mask, seed=seed)

    return stages, 1 << 30


def loss_fn(
    model: models.EncoderOnly, batch: dict, *, z_loss: float = 0.0, label_smoothing: float = 0.0
):
    """Cross-entropy on the selected positions only."""
    logits = model(batch["inputs"], segment_ids=batch["segment_ids"])
    return losses.cross_entropy(
        logits,
        batch["targets"],
        batch["loss_mask"] > 0,
        z_loss=z_loss,
        label_smoothing=label_smoothing,
    )


def num_tokens(batch: dict) -> int:
    return int((batch["segment_ids"] > 0).sum())


def describe_example(model, tokenizer, batch: dict) -> str:
    """A masked row, the hidden tokens and the model's guesses for them."""
    selected = batch["loss_mask"][0] > 0
    guesses = np.asarray(model(batch["inputs"][:1], segment_ids=batch["segment_ids"][:1])).argmax(
        -1
    )[0]
    return "\n".join(
        [
            "example (masked positions):",
            f"  input:   {tokenizer.decode(batch['inputs'][0][:64].tolist())}",
            f"  hidden:  {tokenizer.decode(batch['targets'][0][selected].tolist())}",
            f"  guessed: {tokenizer.decode(guesses[selected].tolist())}",
        ]
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Masked LM's options (the run config's `objective` block)."""

    inputs_length: int = 128  # row length, tokens including EOS
    mask_rate: float = 0.15  # the share of tokens selected for prediction


OBJECTIVE = objectives.register(
    objectives.Objective(
        name="masked_lm",
        architecture=ARCHITECTURE,
        config=Config,
        fields=fields,
        make_stages=make_stages,
        loss_fn=loss_fn,
        num_tokens=num_tokens,
        describe_example=describe_example,
    )
)
