"""BERT masking: selection rate, the 80/10/10 split, special tokens, untouched positions.

Rates are checked on ~260k tokens with tolerances of 5 binomial standard errors,
5 * sqrt(p (1 - p) / n) for a proportion p over n trials (a false failure is ~1 in 3 million).
"""

import chex
import numpy as np
import pytest

from objectives import masked_lm

VOCAB = 32128
MASK_ID = VOCAB - 1  # <extra_id_0>
PAD, EOS, UNK = 0, 1, 2


def _tokens(rng, shape=(64, 4096)):
    """Regular tokens in [3, 1000) with ~10% pad/EOS/UNK sprinkled in."""
    tokens = rng.integers(3, 1000, shape)
    special = rng.random(shape) < 0.1
    tokens[special] = rng.choice([PAD, EOS, UNK], size=special.sum())
    return tokens


def _tol(p, n):
    return 5 * np.sqrt(p * (1 - p) / n)


def test_rates_and_80_10_10_split():
    rng = np.random.default_rng(0)
    tokens = _tokens(rng)
    ex = masked_lm.preprocess(tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID)
    inputs, selected = ex["inputs"], ex["loss_mask"]

    maskable = tokens >= 3
    n = maskable.sum()
    assert abs(selected.sum() / n - 0.15) < _tol(0.15, n)

    m = selected.sum()
    masked = selected & (inputs == MASK_ID)
    randomized = selected & (inputs != MASK_ID) & (inputs != tokens)
    kept = selected & (inputs == tokens)
    assert masked.sum() + randomized.sum() + kept.sum() == m
    # A random draw over [3, 32028) hits the original token with probability 1 / 32025.
    p_same = 1 / (VOCAB - 100 - 3)
    for part, p in ((masked, 0.8), (randomized, 0.1 * (1 - p_same)), (kept, 0.1 + 0.1 * p_same)):
        assert abs(part.sum() / m - p) < _tol(p, m), (part.sum() / m, p)


def test_special_tokens_never_selected_and_unselected_unchanged():
    rng = np.random.default_rng(1)
    tokens = _tokens(rng)
    ex = masked_lm.preprocess(tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID)
    special = np.isin(tokens, [PAD, EOS, UNK])
    assert special.any()
    assert not ex["loss_mask"][special].any()
    np.testing.assert_array_equal(ex["inputs"][~ex["loss_mask"]], tokens[~ex["loss_mask"]])
    np.testing.assert_array_equal(ex["targets"], tokens)
    chex.assert_shape([ex["inputs"], ex["targets"], ex["loss_mask"]], tokens.shape)
    assert ex["inputs"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert ex["loss_mask"].dtype == bool


def test_random_replacements_are_uniform_over_the_range():
    rng = np.random.default_rng(2)
    tokens = _tokens(rng)
    lo, hi = 5000, 5010  # disjoint from the originals, so every replacement is visible
    ex = masked_lm.preprocess(
        tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID, random_token_range=(lo, hi)
    )
    replaced = ex["inputs"][ex["loss_mask"] & (ex["inputs"] != MASK_ID) & (ex["inputs"] != tokens)]
    assert ((replaced >= lo) & (replaced < hi)).all()
    counts = np.bincount(replaced - lo, minlength=hi - lo)
    assert len(counts) == hi - lo
    assert (np.abs(counts / len(replaced) - 0.1) < _tol(0.1, len(replaced))).all(), counts
    # The default range avoids specials and sentinels.
    ex = masked_lm.preprocess(tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID)
    replaced = ex["inputs"][ex["loss_mask"] & (ex["inputs"] != MASK_ID)]
    assert replaced.min() >= 3 and replaced.max() < VOCAB - 100


def test_one_dimensional_and_custom_specials():
    rng = np.random.default_rng(3)
    tokens = np.arange(3, 20003) % 500 + 3
    tokens[::7] = 42  # treated as special (say, a separator)
    ex = masked_lm.preprocess(
        tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID, special_ids=(0, 1, 2, 42)
    )
    assert ex["inputs"].shape == tokens.shape
    assert not ex["loss_mask"][tokens == 42].any()


def test_extreme_rates():
    rng = np.random.default_rng(4)
    tokens = _tokens(rng, (4, 512))
    none = masked_lm.preprocess(tokens, rng=rng, vocab_size=VOCAB, mask_id=MASK_ID, mask_rate=0)
    assert not none["loss_mask"].any()
    np.testing.assert_array_equal(none["inputs"], tokens)
    every = masked_lm.preprocess(
        tokens,
        rng=rng,
        vocab_size=VOCAB,
        mask_id=MASK_ID,
        mask_rate=1.0,
        mask_token_rate=1.0,
        random_token_rate=0.0,
    )
    np.testing.assert_array_equal(every["loss_mask"], tokens >= 3)
    assert (every["inputs"][tokens >= 3] == MASK_ID).all()


def test_deterministic_in_the_generator():
    tokens = _tokens(np.random.default_rng(5), (4, 256))
    a = masked_lm.preprocess(
        tokens, rng=np.random.default_rng(9), vocab_size=VOCAB, mask_id=MASK_ID
    )
    b = masked_lm.preprocess(
        tokens, rng=np.random.default_rng(9), vocab_size=VOCAB, mask_id=MASK_ID
    )
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mask_rate=1.5),
        dict(mask_token_rate=0.95, random_token_rate=0.1),
        dict(mask_id=VOCAB),
        dict(random_token_range=(10, 10)),
    ],
)
def test_bad_arguments(kwargs):
    args = dict(rng=np.random.default_rng(0), vocab_size=VOCAB, mask_id=MASK_ID) | kwargs
    with pytest.raises(ValueError):
        masked_lm.preprocess(np.arange(3, 10), **args)
