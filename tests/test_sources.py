"""Streaming and random-access sources (`t5x_lite/sources.py`) through the pipeline as training
runs it (`data.make_dataset`): processes over a glob of shards read disjoint parts whose union
is the corpus; a pipeline restored from its saved state yields exactly the batches an
uninterrupted one does; ArrayRecord shards from `prepare` hold the records (or the tokenizer's
ids); bad input names the file and record."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from t5x_lite import corpus, data, main, sources


class _Tok:
    """Each record's `text` is its integer id; a token per word."""

    eos_id = 1
    checksum = "ids"

    def encode(self, text, add_eos=False):
        return [3 + int(w) for w in text.split()]


def _write_jsonl_shards(root: Path, sizes: list[int]) -> list[int]:
    """Shards `root/part-i.jsonl` of `sizes` records (ids numbered across them), a blank line
    in each; returns the ids."""
    ids, n = [], 0
    for i, size in enumerate(sizes):
        lines = [json.dumps({"text": str(n + j)}) for j in range(size)]
        (root / f"part-{i:02d}.jsonl").write_text("\n".join(lines[:1] + [""] + lines[1:]) + "\n")
        ids += range(n, n + size)
        n += size
    return ids


def _source(kind: str, root: Path, sizes: list[int], **spec) -> tuple[sources.Source, list[int]]:
    ids = _write_jsonl_shards(root, sizes)
    glob = str(root / "part-*.jsonl")
    if kind == "array_record":
        records = data.open_source(data.DataSpec("jsonl", glob)).head()
        data.prepare(records, root / "ar", num_shards=len(sizes))
        return data.open_source(data.DataSpec("array_record", str(root / "ar"), **spec)), ids
    return data.open_source(data.DataSpec("jsonl", glob, **spec)), ids


def _pipeline(source, **kw):
    kw.setdefault("batch_size", 2)
    return data.make_dataset(
        source,
        tokenizer=_Tok(),
        fields={"targets": "text"},
        stages=lambda shard: lambda ds: ds,
        seed=kw.pop("seed", 0),
        **kw,
    )


def _ids(batches) -> list[int]:
    return [int(x) - 3 for b in batches for x in b["targets"][:, 0]]


@settings(max_examples=30, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    processes=st.integers(1, 4),
    kind=st.sampled_from(["jsonl", "array_record"]),
)
def test_processes_over_a_glob_of_shards_partition_the_corpus(sizes, processes, kind):
    """One pass (no repeat, a row per process per batch): every record is read by exactly one
    process, with more files than processes (whole files each) or fewer (every P-th record)."""
    assume(sum(sizes) >= processes)  # else a process has nothing to read: an error
    with tempfile.TemporaryDirectory() as tmp:
        source, ids = _source(kind, Path(tmp), sizes, shuffle_buffer=3)
        seen = []
        for p in range(processes):
            ds = _pipeline(
                source, batch_size=processes, process_index=p, process_count=processes, repeat=False
            )
            seen.append(_ids(ds))
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)), "a record reached two processes (or one twice)"
    assert sorted(flat) == ids


@pytest.mark.parametrize("kind", ["jsonl", "array_record"])
def test_resumed_processes_see_the_batches_of_an_uninterrupted_run(tmp_path, kind):
    """Two processes, shuffled, over several epochs: each pipeline's state, saved mid-run (as
    JSON, as the checkpoint holds it) and restored into a fresh pipeline, gives the same next
    batches, across file and epoch boundaries and shuffle windows."""
    source, ids = _source(kind, tmp_path, [7, 3, 5, 4], shuffle_buffer=5)
    for p in range(2):
        make = lambda p=p: iter(_pipeline(source, batch_size=4, process_index=p, process_count=2))
        it = make()
        for _ in range(5):
            next(it)
        state = json.loads(json.dumps(data.iterator_state_json(it)))
        want = [next(it)["targets"] for _ in range(12)]  # past the end of the first epoch
        fresh = make()
        fresh.set_state(state)
        for w in want:
            np.testing.assert_array_equal(next(fresh)["targets"], w)


def test_file_order_and_window_shuffle_change_with_the_seed(tmp_path):
    source, ids = _source("jsonl", tmp_path, [6, 6, 6], shuffle_buffer=9)  # 2 per epoch
    first = lambda seed: _ids([next(iter(_pipeline(source, batch_size=18, seed=seed)))])
    assert sorted(first(0)) == ids  # a whole epoch in one batch
    assert first(0) == first(0) and first(0) != first(1) and first(0) != ids


def test_grain_worker_processes_keep_the_partition_and_resume(tmp_path):
    """`data.worker_count`: the workers split each shard again; every record is still read
    once per pass, and a restored pipeline continues exactly."""
    source, ids = _source("jsonl", tmp_path, [5, 4, 6])
    one_pass = _pipeline(source, batch_size=1, repeat=False, shuffle=False, worker_count=2)
    assert sorted(_ids(one_pass)) == ids
    make = lambda: iter(_pipeline(source, batch_size=2, worker_count=2))
    it = make()
    for _ in range(3):
        next(it)
    state = data.iterator_state_json(it)
    want = [next(it)["targets"] for _ in range(8)]
    fresh = make()
    fresh.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh)["targets"], w)


def test_prepare_with_a_tokenizer_stores_its_ids(tmp_path, tok):
    """`t5x-lite data prepare --tokenizer`: the shards hold `tok.encode` of the field, and the
    pipeline feeds them as the text source's pipeline feeds the text; another tokenizer is an
    error naming the shards' record of theirs."""
    texts = ["#Person1#: Hello there.", "#Person2#: Fine, thanks!", "a b c"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"d": t}) + "\n" for t in texts))
    argv = ["data", "prepare", "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o")]
    main.main(argv + ["--tokenizer", str(corpus.DEFAULT_TOKENIZER_DIR), "--field", "d"])
    stored = data.open_source(data.DataSpec("array_record", str(tmp_path / "o"))).head()
    assert [r["d"] for r in stored] == [tok.encode(t, add_eos=False) for t in texts]

    def batches(spec):
        ds = data.make_dataset(
            data.open_source(spec),
            tokenizer=tok,
            fields={"targets": "d"},
            stages=lambda shard: lambda ds: ds,
            batch_size=1,
            seed=0,
            shuffle=False,
            repeat=False,
        )
        return [b["targets"].tolist() for b in ds]

    text_spec = data.DataSpec("jsonl", str(tmp_path / "in.jsonl"))
    assert batches(data.DataSpec("array_record", str(tmp_path / "o"))) == batches(text_spec)
    with pytest.raises(ValueError, match="prepare.json: the shards hold token ids from another"):
        _pipeline(data.open_source(data.DataSpec("array_record", str(tmp_path / "o"))))


def test_hf_streaming_partitions_and_resumes(tmp_path, monkeypatch):
    """`data.source=hf` streams a local dataset directory (`datasets`, streaming=True): two
    shards read disjoint parts whose union is the split; a restored stream continues exactly."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    root = tmp_path / "ds"
    root.mkdir()
    ids = _write_jsonl_shards(root, [4, 5, 3])
    for i, f in enumerate(sorted(root.glob("part-*.jsonl"))):
        f.rename(root / f"train-{i:05d}-of-00003.jsonl")
    source = data.open_source(data.DataSpec("hf", str(root), "train", shuffle_buffer=4))
    seen = [
        _ids(_pipeline(source, batch_size=2, process_index=p, process_count=2, repeat=False))
        for p in range(2)
    ]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == ids
    make = lambda: iter(_pipeline(source, batch_size=2))
    it = make()
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(data.iterator_state_json(it)))
    want = [next(it)["targets"] for _ in range(9)]  # into the next epoch
    fresh = make()
    fresh.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(fresh)["targets"], w)


# ----------------------------------------------------------------------------- bad input


def test_a_glob_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path: the glob '.*nope/\*.jsonl' matches"):
        data.open_source(data.DataSpec("jsonl", str(tmp_path / "nope/*.jsonl")))
    (tmp_path / "a.jsonl").write_text('{"text": "1"}\n')
    with pytest.raises(FileNotFoundError, match=r"data file .*missing.jsonl does not exist"):
        data.open_source(data.DataSpec("jsonl", f"{tmp_path}/a.jsonl,{tmp_path}/missing.jsonl"))


def test_a_truncated_jsonl_shard_names_the_file_and_line(tmp_path):
    _write_jsonl_shards(tmp_path, [3, 4])
    last = tmp_path / "part-01.jsonl"
    last.write_bytes(last.read_bytes()[:-9])  # the last record cut mid-way
    spec = data.DataSpec("jsonl", str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match=r"part-01.jsonl:5: malformed record .*skip_bad_records"):
        _ids(_pipeline(data.open_source(spec), batch_size=1, repeat=False, shuffle=False))
    stats = data.ReadStats()
    source = data.open_source(data.DataSpec("jsonl", spec.path, skip_bad_records=True), stats)
    assert len(_ids(_pipeline(source, batch_size=1, repeat=False, shuffle=False))) == 6
    assert stats.skipped_records == 1


def test_a_damaged_array_record_shard_names_the_file_and_record(tmp_path):
    source, ids = _source("array_record", tmp_path, [300, 300])
    shard = tmp_path / "ar" / "train-00001-of-00002.array_record"
    raw = bytearray(shard.read_bytes())
    truncated = tmp_path / "cut" / "train-00000-of-00001.array_record"
    truncated.parent.mkdir()
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match=r"cut/train-00000-of-00001.array_record: unreadable"):
        data.open_source(data.DataSpec("array_record", str(truncated.parent)))
    stats = data.ReadStats()
    spec = data.DataSpec(
        "array_record", f"{tmp_path}/ar/*.array_record,{truncated}", skip_bad_records=True
    )
    skipped = data.open_source(spec, stats)
    assert stats.skipped_files == 1 and sorted(r["text"] for r in skipped.head()) == sorted(
        str(i) for i in ids
    )
    raw[1000:1064] = bytes(64)  # a damaged chunk among the records (the rest is padding)
    shard.write_bytes(bytes(raw))
    spec = data.DataSpec("array_record", str(tmp_path / "ar"))
    with pytest.raises(ValueError, match=r"train-00001-of-00002.array_record\[record \d+\]: "):
        data.open_source(spec).head()
    stats = data.ReadStats()
    spec = data.DataSpec("array_record", spec.path, skip_bad_records=True)
    got = data.open_source(spec, stats).head()
    assert stats.skipped_records >= 1 and len(got) == 600 - stats.skipped_records


def test_a_directory_without_the_split_says_what_it_looked_for(tmp_path):
    (tmp_path / "train-00000-of-00001.array_record").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="without validation.array_record / valid"):
        data.open_source(data.DataSpec("array_record", str(tmp_path), split="validation"))
    assert os.path.exists(tmp_path / "train-00000-of-00001.array_record")
