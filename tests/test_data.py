"""Data sources (files by extension, the `hf` source on a local directory, `tfds` against a
stand-in), split resolution, per-process sharding and iterator state."""

import csv
import json
import sys
import types

import numpy as np
import pytest

from t5x_lite import data


def test_file_formats_read_the_same_records(tmp_path):
    rows = [{"dialogue": f"hello {i}", "summary": f"s{i}"} for i in range(5)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["dialogue", "summary"])
        w.writeheader()
        w.writerows(rows)
    for name in ("a.jsonl", "b.json", "c.csv"):
        got = data.read_records(data.DataSpec(source="jsonl", path=str(tmp_path / name)))
        assert [{k: r[k] for k in ("dialogue", "summary")} for r in got] == rows, name
    (tmp_path / "d.txt").write_text("one\n\ntwo\n")
    got = data.read_records(data.DataSpec(source="jsonl", path=str(tmp_path / "d.txt")))
    assert [r["text"] for r in got] == ["one", "two"]


def test_parquet_reads_the_rows_pyarrow_wrote(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"dialogue": f"#Person1#: hi {i}", "summary": f"s{i}", "id": i} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    spec = data.DataSpec(source="jsonl", path=str(tmp_path), split="validation")  # dir + split
    got = data.read_records(spec)
    assert [{k: r[k] for k in ("dialogue", "summary", "id")} for r in got] == rows
    assert got[3]["_position"] == f"{tmp_path / 'validation.parquet'}[row 3]"


@pytest.fixture
def hf_datasets(tmp_path, monkeypatch):
    """`datasets`, with its cache in tmp_path."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return datasets


def test_hf_source_reads_a_local_dataset_directory(tmp_path, hf_datasets):
    """`data.source=hf` with `data.path` a local directory of split files, as `datasets` finds."""
    root = tmp_path / "dialogs"
    root.mkdir()
    splits = {
        split: [{"dialogue": f"{split} {i}", "summary": f"s{i}"} for i in range(n)]
        for split, n in (("train", 5), ("validation", 3))
    }
    for split, rows in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, rows in splits.items():
        got = data.read_records(data.DataSpec(source="hf", path=str(root), split=split))
        assert [{k: r[k] for k in ("dialogue", "summary")} for r in got] == rows
        assert got[1]["_position"] == f"{root}[{split}][1]"


def test_hf_and_tfds_sources_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ValueError, match="needs the `datasets` package: pip install datasets"):
        data.read_records(data.DataSpec(source="hf", path="some/dataset"))
    with pytest.raises(ValueError, match=r"needs the \[tfds\] extra"):
        data.read_records(data.DataSpec(source="tfds", path="some_dataset"))


def test_tfds_source_decodes_bytes(monkeypatch):
    """The tfds reader against a stand-in module: tensorflow-datasets (and TensorFlow) is an
    optional extra the tests do not install."""
    examples = [{"dialogue": "héllo".encode(), "summary": b"s0", "id": 7}]
    calls = []

    def data_source(name, split):  # random access, as tfds.data_source's ArrayRecord reader
        calls.append((name, split))
        return examples

    fake = types.SimpleNamespace(data_source=data_source)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    got = data.read_records(data.DataSpec(source="tfds", path="dialogs", split="test"))
    assert calls == [("dialogs", "test")]
    assert got == [{"dialogue": "héllo", "summary": "s0", "id": 7, "_position": "dialogs[0]"}]


def test_split_template_and_directory(tmp_path):
    (tmp_path / "validation.jsonl").write_text(json.dumps({"dialogue": "v"}) + "\n")
    spec = data.DataSpec(source="jsonl", path=str(tmp_path), split="validation")
    assert data.read_records(spec)[0]["dialogue"] == "v"
    spec = data.DataSpec(source="jsonl", path=str(tmp_path / "{split}.jsonl"), split="validation")
    assert data.read_records(spec)[0]["dialogue"] == "v"
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        data.read_records(data.DataSpec(source="jsonl", path=str(tmp_path), split="train"))


def test_unknown_source_and_extension(tmp_path):
    with pytest.raises(
        ValueError, match="data.source='s3'.*embedded, jsonl, array_record, hf, tfds"
    ):
        data.read_records(data.DataSpec(source="s3"))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(ValueError, match="unsupported extension '.xml'"):
        data.read_records(data.DataSpec(source="jsonl", path=str(tmp_path / "x.xml")))


class _Tok:
    eos_id = 1

    def encode(self, text, add_eos=False):
        return [3 + int(w) for w in text.split()]


def _pipeline(records, **kw):
    identity = lambda ds: ds.map(lambda ex: {"targets": np.resize(ex["targets"], 4)})
    kw.setdefault("batch_size", 2)
    return data.make_dataset(
        records,
        tokenizer=_Tok(),
        fields={"targets": "text"},
        stages=lambda shard: identity,
        seed=0,
        **kw,
    )


def test_processes_read_disjoint_shards():
    records = [{"text": str(i)} for i in range(12)]
    seen = []
    for p in range(3):
        it = iter(
            _pipeline(
                records, shuffle=False, repeat=False, process_index=p, process_count=3, batch_size=3
            )
        )
        seen.append({int(x) for b in it for x in b["targets"][:, 0]})
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert set().union(*seen) == {3 + i for i in range(12)}


def test_iterator_state_resumes_exactly():
    records = [{"text": str(i)} for i in range(10)]
    it = iter(_pipeline(records))
    for _ in range(3):
        next(it)
    state = data.iterator_state_json(it)
    expected = [next(it)["targets"] for _ in range(4)]
    fresh = iter(_pipeline(records))
    fresh.set_state(json.loads(json.dumps(state)))
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["targets"], want)


def test_global_batch_does_not_depend_on_process_count():
    records = [{"text": str(i)} for i in range(40)]
    single = iter(_pipeline(records, batch_size=8, num_shards=4))
    halves = [
        iter(_pipeline(records, batch_size=8, num_shards=4, process_index=p, process_count=2))
        for p in range(2)
    ]
    for _ in range(5):
        whole = next(single)["targets"]
        parts = np.concatenate([next(h)["targets"] for h in halves])
        np.testing.assert_array_equal(parts, whole)
