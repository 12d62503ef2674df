"""T5 span corruption: the length arithmetic, sentinels, exact reconstruction, span statistics.

Reference values come from the T5 paper/code (512 -> 568 raw tokens, 114 targets; the paper's
Figure 2 example) or are recomputed here independently of `objectives.span_corruption`.
"""

from math import comb

import chex
import numpy as np
import pytest

from objectives import span_corruption as sc

VOCAB = 32128  # T5's: 32000 pieces + 100 sentinels, padded
EOS = 1
NUM_SENTINELS = 100


def _reference_lengths(raw_length, noise_density=0.15, mean_span=3.0):
    """(inputs, targets) lengths incl. EOS of a raw chunk, straight from the T5 paper's recipe."""
    noise = int(round(raw_length * noise_density))
    spans = int(round(noise / mean_span))
    return raw_length - noise + spans + 1, noise + spans + 1


def _reference_helper(inputs_length, noise_density=0.15, mean_span=3.0):
    """Brute force: the longest raw chunk whose inputs fit, and its targets length."""
    best = max(
        n
        for n in range(1, 3 * inputs_length)
        if _reference_lengths(n, noise_density, mean_span)[0] <= inputs_length
    )
    return best, _reference_lengths(best, noise_density, mean_span)[1]


def _reconstruct(inputs, targets):
    """Original tokens from (inputs, targets): splice each sentinel's target span in."""
    is_sentinel = lambda t: t >= VOCAB - NUM_SENTINELS
    assert inputs[-1] == EOS and targets[-1] == EOS
    spans, current = {}, None
    for t in targets[:-1]:
        if is_sentinel(t):
            current = int(t)
            spans[current] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            spans[current].append(int(t))
    out = []
    for t in inputs[:-1]:
        out.extend(spans[int(t)] if is_sentinel(t) else [int(t)])
    return out


def _runs(mask):
    """Lengths of the runs of True and of False in a boolean vector."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [len(mask)]])
    lengths = np.diff(bounds)
    values = mask[bounds[:-1]]
    return lengths[values], lengths[~values]


# ----------------------------------------------------------------------------- lengths


def test_helper_t5_default_512_gives_568_and_114():
    assert sc.random_spans_helper(512, 0.15, 3.0, 1, 1) == (568, 114)
    assert sc.random_spans_helper() == (568, 114)
    assert _reference_lengths(568) == (512, 114)


@pytest.mark.parametrize(
    "inputs_length, expected",
    [
        # 141: noise round(21.15)=21, spans 7 -> inputs 141-21+7+1 = 128; 142 -> 129.
        (128, (141, 29)),
        # 284: noise round(42.6)=43, spans round(14.33)=14 -> 284-43+14+1 = 256; 285 -> 257.
        (256, (284, 58)),
    ],
)
def test_helper_hand_computed(inputs_length, expected):
    assert sc.random_spans_helper(inputs_length) == expected
    assert _reference_helper(inputs_length) == expected


@pytest.mark.parametrize("inputs_length", [8, 16, 64, 100, 512, 1024, 2048])
@pytest.mark.parametrize("density, mean_span", [(0.15, 3.0), (0.3, 3.0), (0.15, 8.0)])
def test_helper_matches_brute_force(inputs_length, density, mean_span):
    assert sc.random_spans_helper(inputs_length, density, mean_span) == _reference_helper(
        inputs_length, density, mean_span
    )


def test_helper_density_half_evens_out_targets():
    # 767 raw: noise round(383.5)=384 (half to even), spans 128 -> inputs 512, targets 513;
    # T5 gives up one raw token so targets are 512 too: 766 -> noise 383, spans 128 -> 512.
    assert _reference_lengths(767, 0.5) == (512, 513)
    assert sc.random_spans_helper(512, 0.5, 3.0) == (766, 512)


def test_raw_568_gives_inputs_512_and_targets_114():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ex = sc.preprocess(rng.integers(3, 32000, 568), vocab_size=VOCAB, rng=rng)
        assert ex["inputs"].shape == (512,) and ex["targets"].shape == (114,)
        assert ex["inputs"].dtype == np.int32 and ex["targets"].dtype == np.int32


def test_split_tokens():
    tokens = np.arange(1000)
    chunks = list(sc.split_tokens(tokens, 568))
    assert [len(c) for c in chunks] == [568, 432]
    np.testing.assert_array_equal(np.concatenate(chunks), tokens)
    assert list(sc.split_tokens(np.arange(0), 568)) == []
    assert [len(c) for c in sc.split_tokens(np.arange(1136), 568)] == [568, 568]


# ----------------------------------------------------------------------------- sentinels


def test_paper_figure_2_example():
    # "Thank you <X> me to your party <Y> week ." -> "<X> for inviting <Y> last <Z>"
    words = "Thank you for inviting me to your party last week .".split()
    tokens = np.arange(10, 10 + len(words))
    mask = np.isin(words, ["for", "inviting", "last"])
    x, y, z = VOCAB - 1, VOCAB - 2, VOCAB - 3
    np.testing.assert_array_equal(
        sc.noise_span_to_unique_sentinel(tokens, mask, VOCAB),
        [10, 11, x, 14, 15, 16, 17, y, 19, 20],
    )
    np.testing.assert_array_equal(
        sc.nonnoise_span_to_unique_sentinel(tokens, mask, VOCAB), [x, 12, 13, y, 18, z]
    )


def test_sentinels_count_down_from_extra_id_0_on_both_sides():
    rng = np.random.default_rng(0)
    for length in (5, 40, 200, 568):
        ex = sc.preprocess(rng.integers(3, 32000, length), vocab_size=VOCAB, rng=rng)
        for key in ("inputs", "targets"):
            seq = ex[key]
            sentinels = seq[seq >= VOCAB - NUM_SENTINELS]
            np.testing.assert_array_equal(sentinels, VOCAB - 1 - np.arange(len(sentinels)))
        assert ex["targets"][0] == VOCAB - 1
        n_in = (ex["inputs"] >= VOCAB - NUM_SENTINELS).sum()
        n_tg = (ex["targets"] >= VOCAB - NUM_SENTINELS).sum()
        assert n_in == n_tg


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 7, 10, 33, 190, 200, 567, 568, 1000])
def test_inputs_and_targets_reconstruct_the_tokens(length):
    rng = np.random.default_rng(length)
    for _ in range(20):
        tokens = rng.integers(3, 32000, length)
        ex = sc.preprocess(tokens, vocab_size=VOCAB, rng=rng)
        assert _reconstruct(ex["inputs"].tolist(), ex["targets"].tolist()) == tokens.tolist()


def test_tokens_colliding_with_sentinels_are_refused():
    rng = np.random.default_rng(0)
    tokens = np.full(50, VOCAB - 1)
    with pytest.raises(ValueError, match="sentinel"):
        sc.preprocess(tokens, vocab_size=VOCAB, rng=rng)


def test_deterministic_in_the_generator():
    tokens = np.arange(3, 303)
    a = sc.preprocess(tokens, vocab_size=VOCAB, rng=np.random.default_rng(7))
    b = sc.preprocess(tokens, vocab_size=VOCAB, rng=np.random.default_rng(7))
    c = sc.preprocess(tokens, vocab_size=VOCAB, rng=np.random.default_rng(8))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a["inputs"], c["inputs"])


# ----------------------------------------------------------------------------- the mask


def test_mask_counts_follow_t5_formula():
    rng = np.random.default_rng(0)
    for length in (2, 3, 10, 50, 199, 200, 568, 1000):
        mask = sc.random_spans_noise_mask(length, rng)
        noise = min(max(int(round(length * 0.15)), 1), length - 1)
        spans = max(int(round(noise / 3.0)), 1)
        noise_runs, nonnoise_runs = _runs(mask)
        assert mask.shape == (length,) and mask.dtype == bool
        assert mask.sum() == noise
        assert len(noise_runs) == spans and len(nonnoise_runs) == spans
        assert not mask[0] and mask[-1]  # no random_roll: starts clean, ends with noise


def test_mask_rounds_in_float32_like_tensorflow():
    # T5 computes round(float32(190) * float32(0.15)) = round(28.500002) = 29, where float64
    # gives 190 * 0.15 = 28.5 exactly, which rounds half to even -> 28.
    assert np.float32(190) * np.float32(0.15) > 28.5 and round(190 * 0.15) == 28
    assert sc.random_spans_noise_mask(190, np.random.default_rng(0)).sum() == 29


def test_mask_tiny_and_zero_density():
    rng = np.random.default_rng(0)
    assert sc.random_spans_noise_mask(0, rng).shape == (0,)
    # T5 computes a length-1 mask as length 2 ([clean, noise]) cut back to 1.
    np.testing.assert_array_equal(sc.random_spans_noise_mask(1, rng), [False])
    np.testing.assert_array_equal(sc.random_spans_noise_mask(2, rng), [False, True])
    assert not sc.random_spans_noise_mask(100, rng, noise_density=0.0).any()


def _part_length_pmf(n, k):
    """P(a given part = j) in a uniform random composition of n into k positive parts.

    Fixing one part at j leaves compositions of n - j into k - 1 parts: C(n-j-1, k-2) of
    C(n-1, k-1) in all.
    """
    return {j: comb(n - j - 1, k - 2) / comb(n - 1, k - 1) for j in range(1, n - k + 2)}


def test_span_statistics_over_many_documents():
    rng = np.random.default_rng(1234)
    length, docs = 200, 2000
    noise_runs, nonnoise_runs, noise_total = [], [], 0
    for _ in range(docs):
        ex = sc.preprocess(rng.integers(3, 32000, length), vocab_size=VOCAB, rng=rng)
        # Non-sentinel runs: noise spans in the targets, non-noise spans in the inputs.
        in_targets = ex["targets"][:-1] < VOCAB - NUM_SENTINELS
        noise_total += int(in_targets.sum())
        noise_runs.append(_runs(in_targets)[0])
        nonnoise_runs.append(_runs(ex["inputs"][:-1] < VOCAB - NUM_SENTINELS)[0])
    noise_runs, nonnoise_runs = np.concatenate(noise_runs), np.concatenate(nonnoise_runs)

    expected_noise = round(length * 0.15)  # 30
    assert abs(noise_total / (docs * length) - expected_noise / length) < 0.005
    assert len(noise_runs) == docs * round(expected_noise / 3.0)  # 10 spans a document
    assert abs(noise_runs.mean() - 3.0) < 0.05
    assert abs(nonnoise_runs.mean() - (length - expected_noise) / 10) < 0.05

    # The span lengths are those of a uniformly random composition. Tolerance per length:
    # 6 binomial standard errors over ~20000 spans (spans of one document are weakly dependent).
    for runs, n in ((noise_runs, expected_noise), (nonnoise_runs, length - expected_noise)):
        pmf = _part_length_pmf(n, 10)
        counts = np.bincount(runs, minlength=max(pmf) + 1)
        for j, p in pmf.items():
            tol = 6 * np.sqrt(p * (1 - p) / len(runs)) + 1e-3
            assert abs(counts[j] / len(runs) - p) < tol, (n, j, counts[j] / len(runs), p)
