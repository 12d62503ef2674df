"""Causal LM preprocessing: EOS, trim-and-pack (segments, positions, no splits), shifting; the
stages run as training runs them (`data.make_dataset`) on drawn documents (hypothesis); and
`describe_example` on a tiny model."""

import itertools

import chex
import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from references import cross_entropy

from objectives import causal_lm
from t5x_lite import config, data, models


def _documents(rng, n, max_len):
    """Documents whose tokens name them: document i is 1000 * (i + 2) + arange(len)."""
    return [1000 * (i + 2) + np.arange(rng.integers(1, max_len)) for i in range(n)]


def test_preprocess_appends_eos():
    ex = causal_lm.preprocess(np.array([5, 6, 7]), eos_id=1)
    np.testing.assert_array_equal(ex["targets"], [5, 6, 7, 1])
    assert ex["targets"].dtype == np.int32
    np.testing.assert_array_equal(causal_lm.preprocess(np.array([], int))["targets"], [1])


class _Tok:
    eos_id = 1


def _packed_rows(docs, length):
    """Rows of the real pipeline (grain first-fit packing) over `docs`, without repeating."""
    stages, max_tokens = causal_lm.make_stages(_Tok(), inputs_length=length, pack=True, seed=0)
    ds = grain.MapDataset.source([{"targets": d[:max_tokens]} for d in docs]).to_iter_dataset()
    return list(stages(ds))


def test_packing_keeps_every_document_whole_and_shifts_within_segments():
    rng = np.random.default_rng(0)
    length = 128
    docs = _documents(rng, 300, 100)
    docs[7] = 1000 * 9 + np.arange(300)  # longer than a row: trimmed, keeps its EOS
    rows = _packed_rows(docs, length)
    expected = {int(d[0]) // 1000 - 2: d[: length - 1].tolist() + [1] for d in docs}
    seen = []
    for row in rows:
        chex.assert_shape([row["inputs"], row["targets"], row["segment_ids"]], (length,))
        segs = row["segment_ids"]
        used = int((segs > 0).sum())
        assert (segs[used:] == 0).all() and (row["targets"][used:] == 0).all()
        for seg in np.unique(segs[segs > 0]):
            tokens = row["targets"][segs == seg].tolist()
            index = tokens[0] // 1000 - 2
            assert tokens == expected[index]  # a whole (trimmed) document with its EOS
            seen.append(index)
        np.testing.assert_array_equal(
            row["inputs"], _naive_shift(row["targets"][None], segs[None], 0)[0]
        )
    assert sorted(seen) == list(range(len(docs)))  # each document exactly once: no splits
    assert len(rows) < len(docs) / 1.5  # several documents share a row


def _naive_shift(targets, segment_ids, bos_id):
    out = np.empty_like(targets)
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            start = t == 0 or segment_ids[b, t] != segment_ids[b, t - 1]
            out[b, t] = bos_id if start else targets[b, t - 1]
    return out


@pytest.mark.parametrize("bos_id", [0, 7])
def test_shift_right_segments_matches_naive_loop(bos_id):
    rng = np.random.default_rng(bos_id)
    rows = _packed_rows(_documents(rng, 60, 30), 48)
    targets = np.stack([r["targets"] for r in rows])
    segment_ids = np.stack([r["segment_ids"] for r in rows])
    shifted = causal_lm.shift_right_segments(targets, segment_ids, bos_id=bos_id)
    np.testing.assert_array_equal(shifted, _naive_shift(targets, segment_ids, bos_id))
    # No segment start ever sees the previous segment's last token.
    starts = (segment_ids > 0) & np.concatenate(
        [np.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
    )
    assert (shifted[starts] == bos_id).all()
    # 1-D and no-segment forms.
    np.testing.assert_array_equal(
        causal_lm.shift_right_segments(targets[0], segment_ids[0], bos_id), shifted[0]
    )
    np.testing.assert_array_equal(
        causal_lm.shift_right_segments(np.array([5, 6, 7]), bos_id=bos_id), [bos_id, 5, 6]
    )


# ----------------------------------------------------------------------------- properties


class _IdTokenizer:
    """Reads texts of space-separated ids, so documents carry tokens a test can trace back."""

    eos_id = 1

    def encode(self, text, add_eos=False):
        return [int(w) for w in text.split()]


def _stage_rows(lengths, length, pack):
    """Rows (and the truncation counter) of the stages run the way `train.make_pipeline` runs
    them, over documents whose tokens name them: document i is 3 + 2000 * i + arange(n)."""
    tok = _IdTokenizer()
    docs = [3 + 2000 * i + np.arange(n) for i, n in enumerate(lengths)]
    _, max_tokens = causal_lm.make_stages(tok, inputs_length=length, pack=pack, seed=0)
    counter = data.TruncationCounter(max_tokens)
    ds = data.make_dataset(
        [{"text": " ".join(map(str, d))} for d in docs],
        tokenizer=tok,
        fields=causal_lm.fields("text", "unused"),
        stages=lambda shard: causal_lm.make_stages(
            tok, inputs_length=length, pack=pack, seed=shard
        )[0],
        batch_size=1,
        seed=0,
        shuffle=False,
        repeat=False,
        truncation=counter,
    )
    return [{k: v[0] for k, v in b.items()} for b in ds], docs, counter


@settings(max_examples=40, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(0, 70), min_size=1, max_size=25),
    length=st.sampled_from([8, 16, 33]),
    pack=st.booleans(),
)
def test_property_stages_keep_documents_apart_and_whole(lengths, length, pack):
    """Every row: segments are contiguous runs numbered 1, 2, ... then padding (0); the inputs
    are the targets shifted right within each segment (a segment starts from 0, never the
    previous document's token). Every document is one segment, its first max_tokens tokens then
    EOS, and exactly the documents cut short are counted as truncated."""
    rows, docs, counter = _stage_rows(lengths, length, pack)
    seen = []
    for row in rows:
        chex.assert_shape([row["inputs"], row["targets"], row["segment_ids"]], (length,))
        assert all(row[k].dtype == np.int32 for k in row)
        segs, targets, inputs = (row[k].tolist() for k in ("segment_ids", "targets", "inputs"))
        used = sum(s > 0 for s in segs)
        assert segs[used:] == [0] * (length - used) and targets[used:] == [0] * (length - used)
        runs = [seg for seg, _ in itertools.groupby(segs[:used])]
        assert runs == list(range(1, len(runs) + 1)), segs  # each segment one run, in order
        for t in range(length):
            start = t == 0 or segs[t] != segs[t - 1]
            assert inputs[t] == (0 if start else targets[t - 1]), (t, segs, inputs, targets)
        for seg in range(1, max(segs) + 1):
            tokens = [x for x, s in zip(targets, segs, strict=True) if s == seg]
            doc = (tokens[0] - 3) // 2000 if len(tokens) > 1 else None
            if doc is None:  # an empty document: EOS alone
                assert tokens == [1]
                doc = next(i for i, d in enumerate(docs) if len(d) == 0 and i not in seen)
            assert tokens == docs[doc][: length - 1].tolist() + [1], (seg, tokens)
            seen.append(doc)
    assert sorted(seen) == list(range(len(docs)))  # every document, once
    assert counter.truncated == sum(n > length - 1 for n in lengths)
    if not pack:
        assert len(rows) == len(docs)


@pytest.fixture(scope="module")
def decoder_tiny():
    model = models.build(config.get_preset("decoder-tiny"), seed=0)
    model.eval()
    return model


def test_describe_example_shows_the_first_document(tok, decoder_tiny):
    stages, max_tokens = causal_lm.make_stages(tok, inputs_length=48, pack=True, seed=0)
    texts = ["Thank you for inviting me.", "See you at the party next week.", "Bring a coat."]
    ds = data.make_dataset(
        [{"text": t} for t in texts],
        tokenizer=tok,
        fields=causal_lm.fields("text", "unused"),
        stages=lambda shard: stages,
        batch_size=2,
        seed=0,
        shuffle=False,
        truncation=data.TruncationCounter(max_tokens),
    )
    batch = next(iter(ds))
    lines = causal_lm.describe_example(decoder_tiny, tok, batch).splitlines()
    first = batch["segment_ids"][0] == 1
    assert batch["segment_ids"][0].max() > 1  # a second document shares the row
    assert lines[1] == f"  text:      {tok.decode(batch['targets'][0][first].tolist())}"
    predicted = np.asarray(decoder_tiny(batch["inputs"][:1], segment_ids=batch["segment_ids"][:1]))
    assert lines[2] == f"  predicted: {tok.decode(predicted[0].argmax(-1)[first].tolist())}"


def test_loss_fn_is_the_cross_entropy_of_packed_real_tokens():
    """Two packed documents and padding: the loss is the mean next-token cross-entropy over the
    real tokens of the model run with the segments; num_tokens counts those tokens."""
    model = models.build(config.get_preset("decoder-tiny", num_layers=1, vocab_size=64), seed=0)
    model.eval()
    segments = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    rng = np.random.default_rng(0)
    targets = np.where(segments > 0, rng.integers(2, 64, segments.shape), 0).astype(np.int32)
    batch = {
        "inputs": np.asarray(causal_lm.shift_right_segments(targets, segments)),
        "targets": targets,
        "segment_ids": segments,
    }
    loss, metrics = causal_lm.loss_fn(model, batch)
    logits = model(batch["inputs"], segment_ids=segments)
    want = cross_entropy(logits, targets, segments > 0)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert causal_lm.num_tokens(batch) == int(metrics["num_tokens"]) == 11
