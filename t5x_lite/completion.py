"""Text in, text out: tokenize prompts, generate in fixed-size batches, decode completions.

    model, tok = conversion.load_for_inference("runs/default")
    ids, _ = completion.encode_prompts(model, tok, ["Summarize: ..."], max_input_length=512)
    for c in completion.complete(model, tok, ids, max_new_tokens=32, temperature=0.7):
        print(c.text, c.logprob)

Used by `t5x-lite generate` and the ICL evaluation. Batches are right-padded and always have
`batch_size` rows (a short last batch repeats a prompt whose output is dropped), and
`decoding.generate` pads prompt lengths up to a bucket, so batches share one compiled program.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import numpy as np

from t5x_lite import decoding

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str  # decoded, up to (not including) EOS
    tokens: list[int]  # generated ids, up to and including EOS if one was generated
    logprob: float  # sum of the generated tokens' log-probabilities


def encode_prompts(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_input_length: int,
    on_long_prompt: str = "truncate",
) -> tuple[list[list[int]], int]:
    """Token ids of each prompt and how many were truncated.

    Encoder-decoder prompts end with EOS (as T5 was trained); decoder-only prompts do not, so
    the model continues them. A prompt over `max_input_length` tokens is cut, with a warning,
    keeping its start (encoder-decoder) or its end (decoder-only, next to the continuation), or
    raises ValueError with `on_long_prompt="error"`. An empty prompt raises ValueError.
    """
    if on_long_prompt not in ("truncate", "error"):
        raise ValueError(f"on_long_prompt must be 'truncate' or 'error', got {on_long_prompt!r}")
    continues = model.continues_prompt
    out, truncated = [], 0
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"prompt {i} is empty")
        ids = tokenizer.encode(text, add_eos=not continues)
        if len(ids) > max_input_length:
            message = (
                f"prompt {i} has {len(ids)} tokens, more than max_input_length={max_input_length}"
            )
            if on_long_prompt == "error":
                raise ValueError(message)
            log.warning("%s: truncated", message)
            truncated += 1
            if continues:
                ids = ids[-max_input_length:]
            else:
                ids = tokenizer.encode(text, max_length=max_input_length)
        out.append(ids)
    return out, truncated


def complete(
    model,
    tokenizer,
    ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    seed: int = 0,
    **generation,
) -> list[Completion]:
    """Continuations of each prompt's `ids` by `decoding.generate(**generation)`, in order.

    Batch `i` samples with `fold_in(key(seed), i)`, so a run is reproducible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [list(row) for row in ids]
    rows = min(batch_size, len(ids))
    key = jax.random.key(seed)
    out: list[Completion] = []
    for index, start in enumerate(range(0, len(ids), rows)):
        chunk = ids[start : start + rows]
        width = max(len(row) for row in chunk)
        input_ids = np.full((rows, width), tokenizer.pad_id, np.int32)
        attention_mask = np.zeros((rows, width), np.int32)
        for b, row in enumerate(chunk + [chunk[0]] * (rows - len(chunk))):
            input_ids[b, : len(row)] = row
            attention_mask[b, : len(row)] = 1
        tokens, logprobs = decoding.generate(
            model,
            input_ids,
            attention_mask=attention_mask,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            rng=jax.random.fold_in(key, index),
            **generation,
        )
        tokens, logprobs = np.asarray(tokens)[: len(chunk)], np.asarray(logprobs)[: len(chunk)]
        for row, lp in zip(tokens.tolist(), logprobs, strict=True):
            n = row.index(tokenizer.eos_id) + 1 if tokenizer.eos_id in row else len(row)
            text = tokenizer.decode(row[: n - 1] if tokenizer.eos_id in row else row)
            out.append(Completion(text=text, tokens=row[:n], logprob=float(lp[:n].sum())))
    return out
