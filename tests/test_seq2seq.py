"""Supervised input -> target stages, run as training runs them (`data.make_dataset`) on drawn
pairs (hypothesis): EOS and cutting, padding, pairs packed into rows with matching segment ids,
decoder inputs shifted within segments, the truncation count; and `describe_example` on a tiny
T5."""

import itertools

import chex
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from references import cross_entropy

from objectives import seq2seq
from t5x_lite import data, decoding, models

EOS = 1


class _IdTokenizer:
    """Reads texts of space-separated ids, so pairs carry tokens a test can trace back."""

    eos_id = EOS

    def encode(self, text, add_eos=False):
        return [int(w) for w in text.split()]


def _pairs(lengths):
    """Pair i: inputs 3 + 2000 * i + arange(a), targets 1003 + 2000 * i + arange(b)."""
    return [
        (3 + 2000 * i + np.arange(a), 1003 + 2000 * i + np.arange(b))
        for i, (a, b) in enumerate(lengths)
    ]


def _stage_rows(pairs, **options):
    """Rows and the truncation counter of the stages, wired as `train.make_pipeline` wires them."""
    tok = _IdTokenizer()
    _, max_tokens = seq2seq.make_stages(tok, seed=0, **options)
    counter = data.TruncationCounter(max_tokens)
    ds = data.make_dataset(
        [{"x": " ".join(map(str, a)), "y": " ".join(map(str, b))} for a, b in pairs],
        tokenizer=tok,
        fields=seq2seq.fields("x", "y"),
        stages=lambda shard: seq2seq.make_stages(tok, seed=shard, **options)[0],
        batch_size=1,
        seed=0,
        shuffle=False,
        repeat=False,
        truncation=counter,
    )
    return [{k: v[0] for k, v in b.items()} for b in ds], counter


def _cut(tokens, length):
    """What a text becomes in a row of `length`: its first length - 1 tokens, then EOS."""
    return tokens[: length - 1].tolist() + [EOS]


def _shifted(targets, segments):
    """Decoder inputs by the definition: 0 at each segment's start, else the previous target."""
    return [
        0 if t == 0 or segments[t] != segments[t - 1] else targets[t - 1]
        for t in range(len(targets))
    ]


def _settings(n):
    """Few examples (the suite's time budget), no deadline, no example database in the repo."""
    return settings(max_examples=n, deadline=None, database=None)


_LENGTHS = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 30)), min_size=1, max_size=12)


@_settings(30)
@given(lengths=_LENGTHS, length=st.sampled_from([6, 16]))
def test_property_unpacked_rows_are_the_pairs_cut_and_padded(lengths, length):
    """One pair a row: each side cut to length - 1 tokens + EOS, padded with 0; decoder inputs
    the targets shifted right; every text that lost tokens counted as truncated."""
    pairs = _pairs(lengths)
    rows, counter = _stage_rows(pairs, inputs_length=length, targets_length=0, pack=False)
    assert len(rows) == len(pairs)
    for row, (a, b) in zip(rows, pairs, strict=True):
        chex.assert_shape(list(row.values()), (length,))
        for key, tokens in (("inputs", a), ("targets", b)):
            cut = _cut(tokens, length)
            assert row[key].tolist() == cut + [0] * (length - len(cut)), key
        assert row["decoder_inputs"].tolist() == [0] + row["targets"].tolist()[:-1]
    assert counter.truncated == sum(len(x) > length - 1 for pair in pairs for x in pair)


@_settings(30)
@given(
    lengths=_LENGTHS,
    inputs_length=st.sampled_from([8, 20]),
    targets_length=st.sampled_from([6, 20]),
)
def test_property_packed_rows_pair_segments(lengths, inputs_length, targets_length):
    """Packed: segment k of a row's inputs and segment k of its targets are the same pair (each
    cut + EOS), segments are runs numbered 1, 2, ... then padding, decoder inputs restart at
    every segment, and every pair lands in exactly one row."""
    pairs = _pairs(lengths)
    rows, _ = _stage_rows(
        pairs, inputs_length=inputs_length, targets_length=targets_length, pack=True
    )
    seen = []
    for row in rows:
        chex.assert_shape([row["inputs"], row["inputs_segment_ids"]], (inputs_length,))
        chex.assert_shape(
            [row["targets"], row["decoder_inputs"], row["targets_segment_ids"]], (targets_length,)
        )
        runs = {}
        for side in ("inputs", "targets"):
            segs, tokens = row[f"{side}_segment_ids"].tolist(), row[side].tolist()
            used = sum(s > 0 for s in segs)
            assert segs[used:] == [0] * (len(segs) - used) and 0 not in tokens[:used]
            assert tokens[used:] == [0] * (len(segs) - used)
            groups = itertools.groupby(zip(segs[:used], tokens[:used], strict=True), lambda x: x[0])
            runs[side] = [(k, [t for _, t in g]) for k, g in groups]
            assert [k for k, _ in runs[side]] == list(range(1, len(runs[side]) + 1))
        assert len(runs["inputs"]) == len(runs["targets"])
        for (_, x), (_, y) in zip(runs["inputs"], runs["targets"], strict=True):
            i = (x[0] - 3) // 2000
            assert x == _cut(pairs[i][0], inputs_length)
            assert y == _cut(pairs[i][1], targets_length)
            seen.append(i)
        targets, segs = row["targets"].tolist(), row["targets_segment_ids"].tolist()
        assert row["decoder_inputs"].tolist() == _shifted(targets, segs)
    assert sorted(seen) == list(range(len(pairs)))


def test_truncation_count_includes_texts_cut_to_the_shorter_length():
    pairs = _pairs([(3, 10)])  # 10 target tokens, cut to 5 + EOS
    rows, counter = _stage_rows(pairs, inputs_length=16, targets_length=6, pack=False)
    assert rows[0]["targets"].tolist() == _cut(pairs[0][1], 6)
    assert counter.truncated == 1


def test_describe_example_shows_input_target_and_greedy_output(tok, tiny_t5):
    texts = [("Thank you for inviting me.", "A thank-you."), ("Bring a coat.", "A coat.")]
    stages, _ = seq2seq.make_stages(tok, inputs_length=16, targets_length=8, pack=False, seed=0)
    ds = data.make_dataset(
        [{"x": x, "y": y} for x, y in texts],
        tokenizer=tok,
        fields=seq2seq.fields("x", "y"),
        stages=lambda shard: stages,
        batch_size=2,
        seed=0,
        shuffle=False,
    )
    batch = next(iter(ds))
    lines = seq2seq.describe_example(tiny_t5, tok, batch, max_new_tokens=4).splitlines()
    output, _ = decoding.generate(tiny_t5, batch["inputs"][:1], max_new_tokens=4, eos_id=EOS)
    assert lines[1] == f"  input:  {tok.decode(batch['inputs'][0].tolist())}"
    assert lines[2] == f"  target: {tok.decode(batch['targets'][0].tolist())}"
    assert lines[3] == f"  output: {tok.decode(np.asarray(output[0]).tolist())}"
    assert tok.decode(batch["targets"][0].tolist()) == texts[0][1]


def test_loss_fn_is_the_cross_entropy_of_real_target_tokens(tiny_t5):
    """Padded rows: the loss is the teacher-forced cross-entropy over non-pad targets of the
    model run with both padding masks; num_tokens counts real inputs and targets."""
    rng = np.random.default_rng(0)
    inputs = np.array([[5, 6, 7, 1, 0, 0], [8, 9, 10, 11, 12, 1]], np.int32)
    targets = np.array([[13, 14, 1, 0], [15, 1, 0, 0]], np.int32)
    inputs = np.where(inputs > 1, rng.integers(2, 1000, inputs.shape), inputs).astype(np.int32)
    decoder_inputs = np.asarray(models.shift_right(targets))
    batch = {"inputs": inputs, "targets": targets, "decoder_inputs": decoder_inputs}
    loss, metrics = seq2seq.loss_fn(tiny_t5, batch)
    logits = tiny_t5(
        inputs, decoder_inputs, attention_mask=inputs != 0, decoder_attention_mask=targets != 0
    )
    np.testing.assert_allclose(float(loss), cross_entropy(logits, targets, targets != 0), rtol=1e-5)
    assert int(metrics["num_tokens"]) == 5
    assert seq2seq.num_tokens(batch) == 10 + 5
