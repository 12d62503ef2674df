"""T5 span corruption: the length arithmetic, sentinels, exact reconstruction, span statistics,
and the grain stages (`make_stages`) that feed training.

Reference values come from the T5 paper/code (512 -> 568 raw tokens, 114 targets; the paper's
Figure 2 example) or are recomputed here independently of `objectives.span_corruption`.
Property tests (hypothesis) draw documents, lengths, densities and span lengths.
"""

import itertools
from math import comb

import chex
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from objectives import span_corruption as sc
from t5x_lite import corpus, data

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


def _reconstruct(inputs, targets, first_sentinel=VOCAB - NUM_SENTINELS):
    """Original tokens from (inputs, targets): splice each sentinel's target span in."""
    is_sentinel = lambda t: t >= first_sentinel
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


def _t5_mask_counts(length, density=0.15, mean_span=3.0):
    """(noise tokens, noise spans) of T5's `random_spans_noise_mask` over `length` tokens: its TF
    arithmetic in float32 (`tf.round`: half to even), at least one of each, lengths below 2 as 2."""
    length = max(length, 2)
    noise = int(np.rint(np.float32(length) * np.float32(density)))
    noise = min(max(noise, 1), length - 1)
    return noise, max(int(np.rint(np.float32(noise) / np.float32(mean_span))), 1)


def _settings(n, **kw):
    """Few examples (the suite's time budget), no deadline, no example database in the repo."""
    return settings(max_examples=n, deadline=None, database=None, **kw)


_TOKENS = st.lists(st.integers(3, VOCAB - NUM_SENTINELS - 1), max_size=300)
_DENSITY = st.floats(0.02, 0.5)
_MEAN_SPAN = st.floats(1.0, 8.0)
_SEED = st.integers(0, 2**32 - 1)


def _splittable(length, density, mean_span):
    """T5 (and `preprocess`) cannot split fewer clean tokens into more spans than there are."""
    noise, spans = _t5_mask_counts(length, density, mean_span)
    return spans <= max(length, 2) - noise


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


# ----------------------------------------------------------------------------- properties


def _corrupt(tokens, density, mean_span, seed) -> dict:
    return sc.preprocess(
        np.array(tokens, np.int64),
        vocab_size=VOCAB,
        rng=np.random.default_rng(seed),
        noise_density=density,
        mean_noise_span_length=mean_span,
    )


@_settings(50)
@given(tokens=_TOKENS, density=_DENSITY, mean_span=_MEAN_SPAN, seed=_SEED)
def test_property_inputs_and_targets_interleave_back_into_the_tokens(
    tokens, density, mean_span, seed
):
    """Splicing each sentinel's span from the targets into the inputs gives the tokens back."""
    assume(_splittable(len(tokens), density, mean_span))
    ex = _corrupt(tokens, density, mean_span, seed)
    assert ex["inputs"].dtype == np.int32 and ex["targets"].dtype == np.int32
    assert _reconstruct(ex["inputs"].tolist(), ex["targets"].tolist()) == tokens


@_settings(50)
@given(tokens=_TOKENS, density=_DENSITY, mean_span=_MEAN_SPAN, seed=_SEED)
def test_property_sentinels_count_down_in_order_on_both_sides(tokens, density, mean_span, seed):
    """<extra_id_0>, <extra_id_1>, ... (vocab_size - 1, - 2, ...) in order on each side."""
    assume(_splittable(len(tokens), density, mean_span))
    ex = _corrupt(tokens, density, mean_span, seed)
    in_sentinels = [t for t in ex["inputs"].tolist() if t >= VOCAB - NUM_SENTINELS]
    tg_sentinels = [t for t in ex["targets"].tolist() if t >= VOCAB - NUM_SENTINELS]
    assert tg_sentinels == [VOCAB - 1 - i for i in range(len(tg_sentinels))]
    assert in_sentinels == [VOCAB - 1 - i for i in range(len(in_sentinels))]
    if tokens:  # targets lead with <extra_id_0>; inputs never do (a chunk starts clean)
        assert ex["targets"][0] == VOCAB - 1 and ex["inputs"][0] == tokens[0]
    # Inputs hold a sentinel per noise span; a 1-token chunk has none (its mask is cut from 2).
    assert len(in_sentinels) == (len(tg_sentinels) if len(tokens) >= 2 else 0)


@_settings(50)
@given(length=st.integers(0, 600), density=_DENSITY, mean_span=_MEAN_SPAN, seed=_SEED)
def test_property_noise_and_span_counts_are_t5s(length, density, mean_span, seed):
    """Exactly round(L * density) noise tokens (clipped to [1, L - 1]) in exactly
    round(noise / mean_span) spans (at least 1), alternating clean/noise from a clean start."""
    assume(_splittable(length, density, mean_span))
    noise, spans = _t5_mask_counts(length, density, mean_span)
    mask = sc.random_spans_noise_mask(length, np.random.default_rng(seed), density, mean_span)
    assert mask.shape == (length,) and mask.dtype == bool
    if length >= 2:
        noise_runs, clean_runs = _runs(mask)
        assert mask.sum() == noise and len(noise_runs) == spans and len(clean_runs) == spans
        assert not mask[0] and mask[-1]
        # ... and through preprocess: noise tokens sit in the targets, one sentinel per span.
        tokens = np.arange(3, 3 + length)
        ex = _corrupt(tokens, density, mean_span, seed)
        assert (
            len(ex["targets"]) == noise + spans + 1
            and len(ex["inputs"]) == length - noise + spans + 1
        )
    else:
        assert not mask.any()


@_settings(50)
@given(
    inputs_length=st.integers(8, 4096),
    density=st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]),
    mean_span=st.sampled_from([1.0, 2.0, 3.0, 5.0, 8.0]),
)
def test_property_helper_is_t5s_arithmetic(inputs_length, density, mean_span):
    """The longest raw chunk whose inputs fit, by T5's `random_spans_helper` formula (Python
    floats), found here by brute force."""
    got = sc.random_spans_helper(inputs_length, density, mean_span)
    assert got == _reference_helper(inputs_length, density, mean_span)
    assert _reference_lengths(got[0], density, mean_span)[0] <= inputs_length


# ----------------------------------------------------------------------------- grain stages


class _IdTokenizer:
    """Reads texts of space-separated ids, so documents carry tokens a test can trace back."""

    pad_id, eos_id, unk_id = 0, 1, 2
    vocab_size = VOCAB
    num_sentinels = NUM_SENTINELS

    def encode(self, text, add_eos=False):
        return [int(w) for w in text.split()]

    def sentinel_id(self, i):
        return self.vocab_size - 1 - i


def _traceable(lengths):
    """Document i of length n: 3 + 2000 * i + arange(n), so a token names its document and
    position (below the sentinels for < 16 documents of < 2000 tokens)."""
    return [3 + 2000 * i + np.arange(n) for i, n in enumerate(lengths)]


def _stage_rows(tokenizer, texts, **options):
    """Rows of `make_stages` run the way training runs it (`data.make_dataset`), in order, once."""
    ds = data.make_dataset(
        [{"text": t} for t in texts],
        tokenizer=tokenizer,
        fields=sc.fields("text", "unused"),
        stages=lambda shard: sc.make_stages(tokenizer, seed=3 + shard, **options)[0],
        batch_size=1,
        seed=0,
        shuffle=False,
        repeat=False,
    )
    return [{k: v[0] for k, v in batch.items()} for batch in ds]


def _check_row(row, inputs_length, targets_length, eos):
    """Shapes, EOS then padding on both sides, decoder inputs = targets shifted right; returns
    (inputs, targets) without padding."""
    chex.assert_shape(row["inputs"], (inputs_length,))
    chex.assert_shape([row["targets"], row["decoder_inputs"]], (targets_length,))
    out = []
    for key in ("inputs", "targets"):
        seq = row[key].tolist()
        n = len(seq) - seq[::-1].index(eos)  # up to and with the last EOS
        assert eos not in seq[: n - 1] and 0 not in seq[:n], (key, seq)
        assert seq[n:] == [0] * (len(seq) - n), (key, seq)  # padding after EOS
        out.append(seq[:n])
    assert row["decoder_inputs"].tolist() == [0] + row["targets"].tolist()[:-1]
    return out


def _t5_chunk_lengths(raw, density=0.15, mean_span=3.0):
    """(inputs, targets) lengths, EOS included, of T5's span corruption of `raw` >= 2 tokens:
    the clean tokens and a sentinel per span, the noise tokens and a sentinel per span."""
    noise, spans = _t5_mask_counts(raw, density, mean_span)
    return raw - noise + spans + 1, noise + spans + 1


def _stage_lengths(inputs_length, density=0.15, mean_span=3.0):
    """(raw chunk, targets) lengths the stages should use: T5's helper, then as many raw tokens
    fewer as the mask's own (float32) counts need for the inputs to fit, and targets long
    enough for what that chunk gives."""
    raw, targets = _reference_helper(inputs_length, density, mean_span)
    while _t5_chunk_lengths(raw, density, mean_span)[0] > inputs_length:
        raw -= 1
    return raw, max(targets, _t5_chunk_lengths(raw, density, mean_span)[1])


def _check_rows_tile_documents(rows, docs, raw, inputs_length, targets_length, density, mean_span):
    """Every row interleaves back into pieces of documents, each piece a contiguous run of one
    document; together the pieces cover every document exactly once. Every row but the last
    holds `raw` tokens, and each row's lengths are T5's for the tokens it holds."""
    pieces = {i: [] for i in range(len(docs))}
    for row in rows:
        inputs, targets = _check_row(row, inputs_length, targets_length, EOS)
        tokens = np.array(_reconstruct(inputs, targets))
        assert len(tokens) == raw or row is rows[-1], (len(tokens), raw)
        if len(tokens) >= 2:
            assert (len(inputs), len(targets)) == _t5_chunk_lengths(len(tokens), density, mean_span)
        doc, pos = (tokens - 3) // 2000, (tokens - 3) % 2000
        starts = np.flatnonzero(np.diff(doc, prepend=-1) != 0)
        for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True):
            np.testing.assert_array_equal(np.diff(pos[a:b]), 1)  # contiguous within a document
            pieces[int(doc[a])].append((int(pos[a]), b - a))
    for i, doc in enumerate(docs):
        starts, sizes = zip(*sorted(pieces[i]), strict=True) if pieces[i] else ((), ())
        assert list(starts) == list(itertools.accumulate(sizes, initial=0))[:-1]  # no gaps
        assert sum(sizes) == len(doc), (i, pieces[i])


@_settings(40)
@given(
    lengths=st.lists(st.integers(0, 120), min_size=1, max_size=12),
    inputs_length=st.integers(12, 80),
    density=st.sampled_from([0.1, 0.15, 0.3]),
    mean_span=st.sampled_from([2.0, 3.0, 5.0]),
    extra_targets=st.sampled_from([0, 3]),
)
def test_property_stages_rows_reconstruct_the_documents(
    lengths, inputs_length, density, mean_span, extra_targets
):
    """Through `data.make_dataset`: every row is T5-shaped (EOS last, then padding; decoder
    inputs shifted) and the rows together give back every document token exactly once."""
    assume(sum(lengths) > 0)  # an all-empty stream gives one empty row ([EOS] -> [EOS])
    docs = _traceable(lengths)
    raw, derived = _stage_lengths(inputs_length, density, mean_span)
    targets_length = derived + extra_targets if extra_targets else 0  # 0: make_stages derives it
    rows = _stage_rows(
        _IdTokenizer(),
        [" ".join(map(str, d)) for d in docs],
        inputs_length=inputs_length,
        targets_length=targets_length,
        noise_density=density,
        mean_noise_span_length=mean_span,
    )
    assert len(rows) == -(-sum(lengths) // raw)  # ceil: only the last chunk is short
    _check_rows_tile_documents(
        rows, docs, raw, inputs_length, targets_length or derived, density, mean_span
    )


@pytest.mark.parametrize(
    "inputs_length, density, mean_span",
    [
        (172, 0.15, 3.0),  # 190 raw: 28.5 noise tokens, 29 in float32 -> targets 40, not 38
        (77, 0.3, 3.0),  # 95 raw: the same at density 0.3
        (8, 0.15, 3.0),  # 8 raw: 0 spans by the helper, 1 by the mask -> inputs 9
        (128, 0.15, 3.0),  # the default config: 141 raw, targets 29
        (512, 0.15, 3.0),  # T5's: 568 raw, targets 114
    ],
)
def test_stages_fit_where_t5s_helper_and_mask_round_differently(inputs_length, density, mean_span):
    """T5's helper rounds in float64 and may count 0 spans; its mask rounds in float32 and keeps
    one. The stages must size the chunks for the mask, never cut a row's EOS or spans."""
    raw, targets_length = _stage_lengths(inputs_length, density, mean_span)
    docs = _traceable([raw, 2 * raw - 1, 5])
    rows = _stage_rows(
        _IdTokenizer(),
        [" ".join(map(str, d)) for d in docs],
        inputs_length=inputs_length,
        targets_length=0,
        noise_density=density,
        mean_noise_span_length=mean_span,
    )
    assert len(rows) == 4
    _check_rows_tile_documents(rows, docs, raw, inputs_length, targets_length, density, mean_span)
    if (inputs_length, density) == (512, 0.15):
        assert (raw, targets_length) == (568, 114)


def test_stages_on_the_embedded_corpus_concatenate_back(tok):
    """The shipped tokenizer on corpus dialogues, the default config's lengths (128 -> 141 raw
    tokens a row): reconstructed rows, in order, are the documents' tokens, concatenated."""
    records = corpus.generate(30, seed=1)
    encoded = [tok.encode(r["dialogue"], add_eos=False) for r in records]
    raw, targets_length = _stage_lengths(128)
    # grain passes a document of exactly one chunk ahead of a partly filled one: none here.
    assert raw not in {len(e) for e in encoded}
    rows = _stage_rows(
        tok,
        [r["dialogue"] for r in records],
        inputs_length=128,
        targets_length=0,
        noise_density=0.15,
        mean_noise_span_length=3.0,
    )
    got = []
    for row in rows:
        inputs, targets = _check_row(row, 128, targets_length, tok.eos_id)
        tokens = _reconstruct(inputs, targets, tok.vocab_size - tok.num_sentinels)
        assert len(tokens) == raw or row is rows[-1]
        got.extend(tokens)
    assert got == [t for e in encoded for t in e]


def test_describe_example_shows_sentinels_and_spans(tok, tiny_t5):
    """span_corruption describes its examples as seq2seq does: the corrupted input (with
    <extra_id_i> sentinels), the spans it hides, the model's greedy output."""
    rows = _stage_rows(
        tok,
        ["Thank you for inviting me to your party last week, it was great fun."] * 2,
        inputs_length=16,
        targets_length=0,
        noise_density=0.15,
        mean_noise_span_length=3.0,
    )
    batch = {k: np.stack([r[k] for r in rows[:2]]) for k in rows[0]}
    lines = sc.describe_example(tiny_t5, tok, batch, max_new_tokens=4).splitlines()
    assert lines[1] == f"  input:  {tok.decode(batch['inputs'][0].tolist())}"
    assert lines[2] == f"  target: {tok.decode(batch['targets'][0].tolist())}"
    assert lines[2].startswith("  target: <extra_id_0>") and "<extra_id_0>" in lines[1]
    assert lines[3].startswith("  output: ")
