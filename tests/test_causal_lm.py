"""Causal LM preprocessing: EOS, trim-and-pack (segments, positions, no splits), shifting."""

import chex
import grain
import numpy as np
import pytest

from objectives import causal_lm


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
