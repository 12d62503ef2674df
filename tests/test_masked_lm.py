"""BERT masking: selection rate, the 80/10/10 split, special tokens, untouched positions; the
stages run as training runs them (`data.make_dataset`) on drawn documents (hypothesis); and
`describe_example` on a tiny model.

Rates are checked on ~260k tokens with tolerances of 5 binomial standard errors,
5 * sqrt(p (1 - p) / n) for a proportion p over n trials (a false failure is ~1 in 3 million).
"""

import itertools

import chex
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import cross_entropy

from objectives import masked_lm
from t5x_lite import config, data, models

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


# ----------------------------------------------------------------------------- properties


def _settings(n, **kw):
    """Few examples (the suite's time budget), no deadline, no example database in the repo."""
    return settings(max_examples=n, deadline=None, database=None, **kw)


@_settings(12, derandomize=True)  # a statistical test: the same draws on every run
@given(
    mask_rate=st.sampled_from([0.05, 0.15, 0.4]),
    split=st.sampled_from([(0.8, 0.1), (0.5, 0.5), (0.0, 0.3), (1.0, 0.0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_rates_follow_the_arguments(mask_rate, split, seed):
    """For drawn rates, on 128k tokens: selected ~ Binomial(maskable, mask_rate), and of the
    selected, [MASK] ~ mask_token_rate, random ~ random_token_rate (less the chance of redrawing
    the original), kept the rest; all within 6 standard errors."""
    mask_token_rate, random_token_rate = split
    rng = np.random.default_rng(seed)
    tokens = _tokens(rng, (32, 4096))
    ex = masked_lm.preprocess(
        tokens,
        rng=rng,
        vocab_size=VOCAB,
        mask_id=MASK_ID,
        mask_rate=mask_rate,
        mask_token_rate=mask_token_rate,
        random_token_rate=random_token_rate,
    )
    inputs, selected = ex["inputs"], ex["loss_mask"]
    n = int((tokens >= 3).sum())
    tol = lambda p, n: 6 * np.sqrt(p * (1 - p) / n) + 1e-9
    assert abs(selected.sum() / n - mask_rate) <= tol(mask_rate, n)
    m = int(selected.sum())
    p_same = 1 / (VOCAB - 100 - 3)
    rest = 1 - mask_token_rate - random_token_rate
    parts = {
        "masked": (selected & (inputs == MASK_ID), mask_token_rate),
        "random": (
            selected & (inputs != MASK_ID) & (inputs != tokens),
            random_token_rate * (1 - p_same),
        ),
        "kept": (selected & (inputs == tokens), rest + random_token_rate * p_same),
    }
    for name, (part, p) in parts.items():
        assert abs(part.sum() / m - p) <= tol(p, m), (name, part.sum() / m, p)
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])


class _IdTokenizer:
    """Reads texts of space-separated ids, so documents carry tokens a test can trace back."""

    pad_id, eos_id, unk_id = 0, 1, 2
    vocab_size = 1 << 16
    num_sentinels = 100

    def encode(self, text, add_eos=False):
        return [int(w) for w in text.split()]

    def sentinel_id(self, i):
        return self.vocab_size - 1 - i


@_settings(30)
@given(
    lengths=st.lists(st.integers(0, 60), min_size=1, max_size=20),
    inputs_length=st.sampled_from([8, 16, 40]),
    mask_rate=st.sampled_from([0.0, 0.15, 1.0]),
)
def test_property_stages_rows_hold_every_document_once(lengths, inputs_length, mask_rate):
    """Through `data.make_dataset`: documents + EOS, concatenated and cut into rows; each
    segment is a contiguous piece of one document (EOS only at its end), all pieces together
    are every document exactly once; only real non-special tokens are selected, and every
    unselected input is the target."""
    tok = _IdTokenizer()
    docs = [3 + 2000 * i + np.arange(n) for i, n in enumerate(lengths)]
    ds = data.make_dataset(
        [{"text": " ".join(map(str, d))} for d in docs],
        tokenizer=tok,
        fields=masked_lm.fields("text", "unused"),
        stages=lambda shard: masked_lm.make_stages(
            tok, inputs_length=inputs_length, mask_rate=mask_rate, seed=shard
        )[0],
        batch_size=1,
        seed=0,
        shuffle=False,
        repeat=False,
    )
    rows = [{k: v[0] for k, v in b.items()} for b in ds]
    pieces, eos_count = {i: [] for i in range(len(docs))}, 0
    for row in rows:
        chex.assert_shape(list(row.values()), (inputs_length,))
        assert all(v.dtype == np.int32 for v in row.values())
        segs, targets = row["segment_ids"].tolist(), row["targets"].tolist()
        used = sum(s > 0 for s in segs)
        assert segs[used:] == [0] * (inputs_length - used) and 0 not in targets[:used]
        assert targets[used:] == [0] * (inputs_length - used)
        selected = row["loss_mask"] > 0
        assert not (selected & np.isin(row["targets"], [0, 1, 2])).any()
        np.testing.assert_array_equal(row["inputs"][~selected], row["targets"][~selected])
        if mask_rate == 1.0:
            np.testing.assert_array_equal(selected, row["targets"] > 2)
        for _, run in itertools.groupby(
            zip(segs[:used], targets[:used], strict=True), lambda x: x[0]
        ):
            tokens = [t for _, t in run]
            if tokens[-1] == 1:  # a document's EOS ends its segment
                eos_count += 1
                tokens = tokens[:-1]
            assert 1 not in tokens
            if tokens:
                doc, pos = (tokens[0] - 3) // 2000, (tokens[0] - 3) % 2000
                assert tokens == docs[doc][pos : pos + len(tokens)].tolist()
                pieces[doc].append((pos, len(tokens)))
    for i, doc in enumerate(docs):
        starts, sizes = zip(*sorted(pieces[i]), strict=True) if pieces[i] else ((), ())
        assert list(starts) == list(itertools.accumulate(sizes, initial=0))[:-1]  # no gaps
        assert sum(sizes) == len(doc), (i, pieces[i])
    assert eos_count == len(docs)
    assert len(rows) == -(-sum(n + 1 for n in lengths) // inputs_length)


def test_describe_example_shows_the_hidden_tokens(tok):
    model = models.build(config.get_preset("encoder-tiny"), seed=0)
    model.eval()
    texts = ["Thank you for inviting me to your party last week.", "Bring a coat."] * 2
    ds = data.make_dataset(
        [{"text": t} for t in texts],
        tokenizer=tok,
        fields=masked_lm.fields("text", "unused"),
        stages=lambda shard: masked_lm.make_stages(tok, inputs_length=24, mask_rate=0.3, seed=1)[0],
        batch_size=2,
        seed=0,
        shuffle=False,
    )
    batch = next(iter(ds))
    selected = batch["loss_mask"][0] > 0
    assert selected.any()
    lines = masked_lm.describe_example(model, tok, batch).splitlines()
    guesses = np.asarray(model(batch["inputs"][:1], segment_ids=batch["segment_ids"][:1]))
    assert lines[1] == f"  input:   {tok.decode(batch['inputs'][0][:64].tolist())}"
    assert lines[2] == f"  hidden:  {tok.decode(batch['targets'][0][selected].tolist())}"
    assert lines[3] == f"  guessed: {tok.decode(guesses[0].argmax(-1)[selected].tolist())}"


def test_loss_fn_is_the_cross_entropy_of_the_selected_positions():
    """The loss counts the selected positions only (loss_mask), with the model run over the
    packed segments; num_tokens counts every real token."""
    model = models.build(config.get_preset("encoder-tiny", num_layers=1, vocab_size=64), seed=0)
    model.eval()
    segments = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    rng = np.random.default_rng(0)
    targets = np.where(segments > 0, rng.integers(2, 64, segments.shape), 0).astype(np.int32)
    loss_mask = np.array([[1, 0, 1, 0, 1, 0], [0, 1, 0, 0, 0, 1]], np.int32)
    inputs = np.where(loss_mask > 0, 63, targets).astype(np.int32)
    batch = {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": segments,
        "loss_mask": loss_mask,
    }
    loss, metrics = masked_lm.loss_fn(model, batch)
    want = cross_entropy(model(inputs, segment_ids=segments), targets, loss_mask)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert int(metrics["num_tokens"]) == 5
    assert masked_lm.num_tokens(batch) == 11
