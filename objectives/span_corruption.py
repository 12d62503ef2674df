"""T5 span corruption (the "denoising" pre-training objective), host-side preprocessing.

A port of `t5.data.preprocessors.span_corruption` (and the seqio pieces it uses) to numpy. A
document's tokens are cut into chunks of `raw_length`; in each chunk ~15% of the tokens, in spans
of mean length 3, are the noise. The inputs keep the rest, each dropped span replaced by one
sentinel; the targets are the dropped spans, each led by its sentinel:

    tokens   = "Thank you for inviting me to your party last week ."
    inputs   = "Thank you <extra_id_0> me to your party <extra_id_1> week . </s>"
    targets  = "<extra_id_0> for inviting <extra_id_1> last </s>"

Usage (lengths chosen so inputs come out exactly `inputs_length` long, no padding):

    raw_length, targets_length = random_spans_helper(inputs_length=512)   # (568, 114)
    rng = np.random.default_rng(seed)
    for chunk in split_tokens(doc_tokens, raw_length):                    # tokens without EOS
        ex = preprocess(chunk, vocab_size=32128, rng=rng)                 # inputs, targets int32

Sentinels are the top ids of the vocabulary: `<extra_id_i>` = vocab_size - 1 - i, where
`vocab_size` counts the sentinels (32128 for the T5 vocabulary incl. its 100 extra ids), so
document tokens must lie below the sentinels.

Differences from T5: randomness is a `numpy.random.Generator` (not TF stateless seeds), so masks
are distributed as T5's but not bit-identical to them; T5's optional `random_roll` (off by default
in T5 too) is not implemented, so a chunk always starts with non-noise and ends with noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import numpy as np

import objectives
from objectives import causal_lm, seq2seq

# ----------------------------------------------------------------------------- lengths


def random_spans_helper(
    inputs_length: int = 512,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """Raw chunk length whose corrupted inputs (incl. EOS) fill `inputs_length` exactly.

    For a raw length L (T5's `_tokens_length_to_inputs_length_targets_length`):

        noise    = int(round(L * noise_density))
        spans    = int(round(noise / mean_noise_span_length))
        inputs   = (L - noise) + spans * extra_tokens_per_span_inputs  + 1     # + EOS
        targets  =  noise      + spans * extra_tokens_per_span_targets + 1

    Starting at L = inputs_length - 1, L grows while inputs(L + 1) <= inputs_length; returns
    (L, targets(L)). As in T5, for noise_density == 0.5 one raw token is given up when that makes
    targets(L) > inputs(L), so both come out the same (round) length. 512 -> (568, 114).

    Returns:
        (tokens_length, targets_length): the raw chunk length for `split_tokens` and the length
        of the targets it produces, EOS included.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return (
            num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
            num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    # T5's "minor hack": at density 0.5 make targets as long as inputs (a round number).
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def split_tokens(tokens: np.ndarray, raw_length: int) -> Iterator[np.ndarray]:
    """Consecutive chunks of at most `raw_length` tokens (T5's `split_tokens_to_inputs_length`).

    Every chunk but the last has exactly `raw_length` tokens; the last keeps the remainder, as in
    T5 (it yields shorter inputs, which the batcher pads). An empty document yields nothing.
    """
    if raw_length < 1:
        raise ValueError(f"raw_length must be >= 1, got {raw_length}")
    tokens = np.asarray(tokens)
    for start in range(0, len(tokens), raw_length):
        yield tokens[start : start + raw_length]


# ----------------------------------------------------------------------------- noise mask


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random split of `num_items` items into `num_segments` non-empty segments.

    first_in_segment = [0] + shuffle([1] * (num_segments - 1) + [0] * (num_items - num_segments))
    segment_id       = cumsum(first_in_segment)
    lengths          = bincount(segment_id)                     # [num_segments], sums to num_items

    Every composition of num_items into num_segments positive parts is equally likely.
    """
    if not 1 <= num_segments <= num_items:
        # T5 fails here too (its span lengths no longer stack); say why instead.
        raise ValueError(
            f"cannot split {num_items} tokens into {num_segments} non-empty spans; "
            "lower the noise density or raise mean_noise_span_length"
        )
    starts = (np.arange(num_items - 1) < num_segments - 1).astype(np.int64)
    first_in_segment = np.concatenate([[0], rng.permutation(starts)])
    return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> np.ndarray:
    """Boolean [length] mask of noise tokens in alternating non-noise/noise spans (T5's).

        noise  = clip(round(length * noise_density), 1, length - 1)
        spans  = max(round(noise / mean_noise_span_length), 1)
        noise span lengths    = _random_segmentation(noise, spans)
        nonnoise span lengths = _random_segmentation(length - noise, spans)
        interleave as [nonnoise_0, noise_0, nonnoise_1, noise_1, ...]; odd spans are noise.

    Given the counts, every such mask is equally likely. The mask starts with non-noise and ends
    with noise (T5 without `random_roll`). Lengths below 2 are computed as 2 and cut back, as T5
    does. Rounding is half-to-even in float32, as TF's `tf.round` on T5's float32 casts, so
    e.g. length 190 gets 29 noise tokens here and in T5 (float64: round(28.5) = 28). As in T5,
    `random_spans_helper` rounds Python floats; the two differ only at such half-way lengths.
    """
    if noise_density == 0.0:
        return np.zeros(length, bool)
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(
        np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length))
    )
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, np.int64)
    span_start_indicator[span_starts] = 1
    span_num = np.cumsum(span_start_indicator)
    is_noise = span_num % 2 == 1
    return is_noise[:orig_length]


# ----------------------------------------------------------------------------- sentinels


def noise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int
) -> np.ndarray:
    """Replace each run of noise tokens by one sentinel, counting down from vocab_size - 1.

        first      = noise & ~shift_right(noise)        # first token of each noise span
        subsequent = noise &  shift_right(noise)
        sentinel   = vocab_size - cumsum(first)         # span i -> vocab_size - 1 - i
        out        = where(first, sentinel, tokens)[~subsequent]

    T5 writes `sentinel_id(vocabulary) + 1 - cumsum(first)` with sentinel_id = vocab size - 1.
    """
    tokens = np.asarray(tokens)
    noise_mask = np.asarray(noise_mask, bool)
    prev_token_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise_tokens = noise_mask & ~prev_token_is_noise
    subsequent_noise_tokens = noise_mask & prev_token_is_noise
    sentinel = vocab_size - np.cumsum(first_noise_tokens, dtype=np.int64)
    out = np.where(first_noise_tokens, sentinel, tokens)
    return out[~subsequent_noise_tokens]


def nonnoise_span_to_unique_sentinel(
    tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int
) -> np.ndarray:
    """The targets side: `noise_span_to_unique_sentinel` with the mask inverted.

    Each non-noise span becomes a sentinel, so what remains is every noise span, led by the
    sentinel that replaced it in the inputs (both sides start with non-noise, so sentinel i
    lines up on both sides).
    """
    return noise_span_to_unique_sentinel(tokens, ~np.asarray(noise_mask, bool), vocab_size)


# ----------------------------------------------------------------------------- preprocess


def preprocess(
    tokens: np.ndarray,
    *,
    vocab_size: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    eos_id: int = 1,
) -> dict[str, np.ndarray]:
    """One chunk of raw tokens (1-D, no EOS) -> {"inputs": int32[...], "targets": int32[...]}.

        mask    = random_spans_noise_mask(len(tokens))
        inputs  = noise_span_to_unique_sentinel(tokens, mask)    + [EOS]
        targets = nonnoise_span_to_unique_sentinel(tokens, mask) + [EOS]

    With a chunk of `random_spans_helper(n)[0]` tokens, inputs are n long and targets
    `random_spans_helper(n)[1]`. Raises ValueError if a token would be read as a sentinel.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D (one chunk), got shape {tokens.shape}")
    mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
    inputs = noise_span_to_unique_sentinel(tokens, mask, vocab_size)
    targets = nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size)
    # The targets hold one sentinel per span (inputs may hold one fewer for tiny chunks).
    num_sentinels = len(targets) - int(mask.sum())
    if len(tokens) and tokens.max() >= vocab_size - num_sentinels:
        raise ValueError(
            f"token id {int(tokens.max())} collides with the sentinels "
            f"[{vocab_size - num_sentinels}, {vocab_size}); is vocab_size={vocab_size} the full "
            "vocabulary size including the extra ids?"
        )
    eos = np.array([eos_id])
    return {
        "inputs": np.concatenate([inputs, eos]).astype(np.int32),
        "targets": np.concatenate([targets, eos]).astype(np.int32),
    }


# ----------------------------------------------------------------------------- train side

ARCHITECTURE = "encoder_decoder"
loss_fn = seq2seq.loss_fn  # span corruption trains like any input -> target pair
num_tokens = seq2seq.num_tokens
describe_example = seq2seq.describe_example


def fields(input_field: str, target_field: str) -> dict[str, str]:
    del target_field
    return {"targets": input_field}


def make_stages(
    tokenizer,
    *,
    inputs_length: int,
    targets_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    seed: int,
):
    """grain stages: documents -> concatenated and split into raw chunks (T5's
    `reduce_concat_tokens` + `split_tokens`) -> span corruption -> padded rows.

    The raw chunk length comes from `random_spans_helper(inputs_length)` (512 -> 568), so inputs
    fill `inputs_length` exactly; targets are padded to `targets_length` (0: the derived 114).
    Where the mask's float32 counts exceed the helper's (e.g. 172 -> 190 raw, targets 40, not
    38), the chunk and the derived targets length follow the mask, so no row is ever cut.
    Documents are split, never truncated.
    """
    raw_length, derived = random_spans_helper(inputs_length, noise_density, mean_noise_span_length)

    def corrupted_lengths(n: int) -> tuple[int, int]:
        # What `preprocess` makes of n raw tokens (the counts do not depend on the draw). The
        # helper is T5's float64 arithmetic; the mask rounds in float32 and keeps one span at
        # least, so a few chunks come out longer (172 -> 190 raw: 29 noise tokens, not 28).
        ex = preprocess(
            np.full(n, 3),
            vocab_size=1 << 30,
            rng=np.random.default_rng(0),
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
        )
        return len(ex["inputs"]), len(ex["targets"])

    while raw_length > 1 and corrupted_lengths(raw_length)[0] > inputs_length:
        raw_length -= 1
    derived = max(derived, corrupted_lengths(raw_length)[1])
    targets_length = targets_length or derived
    if targets_length < derived:
        raise ValueError(
            f"objective.targets_length={targets_length} is shorter than the "
            f"{derived} span corruption needs for inputs_length={inputs_length}"
        )

    def corrupt(ex, rng):
        tokens = ex["targets"][ex["targets_segment_ids"] > 0]
        out = preprocess(
            tokens,
            vocab_size=tokenizer.vocab_size,
            rng=rng,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
            eos_id=tokenizer.eos_id,
        )
        targets = seq2seq.pad_to(out["targets"], targets_length)
        return {
            "inputs": seq2seq.pad_to(out["inputs"], inputs_length),
            "targets": targets,
            "decoder_inputs": causal_lm.shift_right_segments(targets),
        }

    def stages(ds: grain.IterDataset) -> grain.IterDataset:
        ds = grain.experimental.ConcatThenSplitIterDataset(
            ds, length_struct={"targets": raw_length}
        )
        return ds.random_map(corrupt, seed=seed)

    return stages, 1 << 30


@dataclasses.dataclass(frozen=True)
class Config:
    """Span corruption's options (the run config's `objective` block)."""

    inputs_length: int = 128  # encoder length, tokens including EOS
    targets_length: int = 0  # decoder length; 0: derived by T5's arithmetic (512 -> 114)
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0


OBJECTIVE = objectives.register(
    objectives.Objective(
        name="span_corruption",
        architecture=ARCHITECTURE,
        config=Config,
        fields=fields,
        make_stages=make_stages,
        loss_fn=loss_fn,
        num_tokens=num_tokens,
        describe_example=describe_example,
    )
)
