"""Input pipeline: records from a source -> grain (shuffle, tokenize, objective stages, batch).

    spec = DataSpec(source="jsonl", path="train.jsonl", input_field="dialogue")
    records = read_records(spec)                                   # list of dicts
    it = make_iterator(records, tokenizer=tok, fields={"targets": "dialogue"},
                       stages=objective_stages, batch_size=8, seed=0)
    batch = next(it)                                               # dict of numpy (B, ...)
    state = it.get_state()                                         # JSON-able, for Orbax

Sources: `embedded` (the built-in DialogSum-style corpus), `jsonl` (also `.json`, `.csv`,
`.parquet`, `.txt` by extension; `data.path` may contain `{split}` or be a directory holding
`{split}.jsonl`), `hf` (a Hugging Face hub dataset, for users online) and `tfds`. Each process
reads a disjoint slice (`process_index::process_count`). Everything after reading is a grain
pipeline, deterministic in `seed`, whose iterator state is checkpointed, so a resumed run sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import grain
import numpy as np

log = logging.getLogger(__name__)

SOURCES = ("embedded", "jsonl", "hf", "tfds")
FILE_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
TEXT_FIELD = "text"  # the field name of `.txt` records (one text per line)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str = "embedded"
    path: str = ""
    split: str = "train"
    input_field: str = "dialogue"
    target_field: str = "summary"
    skip_bad_records: bool = False
    path_key: str = "data.path"  # the config keys that chose `path` and `split`, for errors
    split_key: str = "data.split"


@dataclasses.dataclass
class ReadStats:
    """What reading skipped, reported in the metrics."""

    skipped_records: int = 0


# ----------------------------------------------------------------------------- reading


def is_single_file(path: str) -> bool:
    """Whether a file source's `path` names one file for every split (no `{split}`, no
    directory of `{split}.jsonl` files)."""
    return bool(path) and "{split}" not in path and not Path(path).is_dir()


def _resolve_path(spec: DataSpec) -> Path:
    if not spec.path:
        raise ValueError(f"data.source={spec.source!r} needs {spec.path_key} (a file or directory)")
    if "{split}" in spec.path:
        return Path(spec.path.format(split=spec.split))
    path = Path(spec.path)
    if path.is_dir():
        for ext in FILE_EXTENSIONS:
            if (path / f"{spec.split}{ext}").exists():
                return path / f"{spec.split}{ext}"
        raise FileNotFoundError(
            f"{spec.path_key}={path} is a directory without {spec.split}.jsonl (or .json .csv "
            f".parquet .txt) for {spec.split_key}={spec.split!r}"
        )
    return path


def _read_jsonl(path: Path, skip_bad: bool, stats: ReadStats, skip_hint: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (json.JSONDecodeError, ValueError) as e:
                if skip_bad:
                    stats.skipped_records += 1
                    continue
                raise ValueError(
                    f"{path}:{lineno}: malformed record ({e}); fix the line{skip_hint}"
                ) from e
            record["_position"] = f"{path}:{lineno}"
            records.append(record)
    return records


def read_file(
    path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None, skip_hint: str = ""
) -> list[dict]:
    """The records of one file, read by its extension (`FILE_EXTENSIONS`); each carries
    `_position` ("file:line" or "file[row i]") for error messages. A `.txt` file gives one
    record per non-blank line, its text under `TEXT_FIELD`."""
    path, stats = Path(path), stats if stats is not None else ReadStats()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    ext = path.suffix.lower()
    if ext == ".jsonl":
        return _read_jsonl(path, skip_bad, stats, skip_hint)
    if ext == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
            return [dict(r, _position=f"{path}[{i}]") for i, r in enumerate(items)]
        return _read_jsonl(path, skip_bad, stats, skip_hint)  # JSON lines with a .json name
    if ext == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [dict(r, _position=f"{path}:{i + 2}") for i, r in enumerate(csv.DictReader(f))]
    if ext == ".txt":
        with open(path, encoding="utf-8") as f:
            return [
                {TEXT_FIELD: line.rstrip("\n"), "_position": f"{path}:{i + 1}"}
                for i, line in enumerate(f)
                if line.strip()
            ]
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from e
        rows = pq.read_table(path).to_pylist()
        return [dict(r, _position=f"{path}[row {i}]") for i, r in enumerate(rows)]
    raise ValueError(
        f"data file {path}: unsupported extension {ext!r}; expected one of "
        f"{', '.join(FILE_EXTENSIONS)}"
    )


def _read_hf(spec: DataSpec) -> list[dict]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            "data.source='hf' needs the `datasets` package: pip install datasets"
        ) from e
    ds = datasets.load_dataset(spec.path, split=spec.split)
    return [dict(r, _position=f"{spec.path}[{spec.split}][{i}]") for i, r in enumerate(ds)]


def _read_tfds(spec: DataSpec) -> list[dict]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ValueError(
            "data.source='tfds' needs the [tfds] extra: pip install 't5x_lite[tfds]'"
        ) from e
    rows = tfds.as_numpy(tfds.load(spec.path, split=spec.split))
    decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
    return [
        {k: decode(v) for k, v in r.items()} | {"_position": f"{spec.path}[{i}]"}
        for i, r in enumerate(rows)
    ]


def read_records(spec: DataSpec, stats: ReadStats | None = None) -> list[dict]:
    """All records of `spec.split` as dicts; each carries `_position` for error messages."""
    stats = stats if stats is not None else ReadStats()
    if spec.source == "embedded":
        from t5x_lite import corpus

        splits = corpus.splits()
        if spec.split not in splits:
            raise ValueError(
                f"the embedded corpus has no split {spec.split!r}; splits: {', '.join(splits)}"
            )
        records = [
            dict(r, _position=f"embedded[{spec.split}][{i}]")
            for i, r in enumerate(splits[spec.split])
        ]
    elif spec.source == "jsonl":
        path = _resolve_path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist ({spec.path_key})")
        records = read_file(
            path,
            skip_bad=spec.skip_bad_records,
            stats=stats,
            skip_hint=" or set --config.data.skip_bad_records=true",
        )
    elif spec.source == "hf":
        records = _read_hf(spec)
    elif spec.source == "tfds":
        records = _read_tfds(spec)
    else:
        raise ValueError(
            f"data.source={spec.source!r} is not supported; expected one of {', '.join(SOURCES)}"
        )
    if not records:
        raise ValueError(
            f"data source {spec.source}:{spec.path or spec.split} "
            f"(split {spec.split!r}) has no records"
        )
    return records


def check_fields(records: list[dict], fields: list[str]) -> None:
    """Fail on the first record that lacks a configured field, saying which and where."""
    for i, record in enumerate(records):
        for field in fields:
            if field not in record or record[field] is None:
                have = sorted(k for k in record if k != "_position")
                raise KeyError(
                    f"record {i} ({record.get('_position', '?')}) has no field {field!r} "
                    f"(set data.input_field / data.target_field); its fields: {have}"
                )


def read_texts(path: str | Path, fields: str | list[str] | None, *, flag: str) -> list[str]:
    """The non-blank texts of `fields` in every record of the file `path` (`read_file`), record
    by record; `fields=None` reads a `.txt` file's lines. Errors name the record's position and
    `flag`, the option that chose the fields."""
    records = read_file(path)
    if fields is None:
        if Path(path).suffix.lower() != ".txt":
            raise ValueError(f"{flag} is required for {path}, to name the field holding the text")
        fields = [TEXT_FIELD]
    fields = [fields] if isinstance(fields, str) else list(fields)
    if not fields:
        raise ValueError(f"{flag} must name at least one field")
    texts = []
    for record in records:
        for name in fields:
            if name not in record:
                have = sorted(k for k in record if k != "_position")
                raise KeyError(f"{record['_position']}: no field {name!r} ({flag}); it has {have}")
            if not isinstance(record[name], str):
                raise ValueError(
                    f"{record['_position']}: field {name!r} ({flag}) must be a string, "
                    f"got {type(record[name]).__name__}"
                )
            if record[name].strip():
                texts.append(record[name])
    return texts


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class TruncationCounter:
    """Counts texts cut to the configured maximum length (reported in the metrics).

    `max_tokens` is one limit for every feature, or a limit per feature (seq2seq's inputs and
    targets have their own lengths)."""

    max_tokens: int | dict[str, int]
    truncated: int = 0

    def __call__(self, ids: list[int], feature: str = "") -> np.ndarray:
        limit = self.max_tokens
        if isinstance(limit, dict):
            limit = limit[feature]
        if len(ids) > limit:
            self.truncated += 1
            ids = ids[:limit]
        return np.asarray(ids, np.int32)


Stages = Callable[[grain.IterDataset], grain.IterDataset]


def make_dataset(
    records: list[dict],
    *,
    tokenizer,
    fields: dict[str, str | Callable[[dict], str]],
    stages: Callable[[int], Stages],
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    truncation: TruncationCounter | None = None,
    num_shards: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Per shard: records -> shuffle -> repeat -> tokenize `fields` -> objective stages -> batch.

    `fields` maps output feature names to record fields, e.g. {"targets": "dialogue"} for
    pre-training or {"inputs": "dialogue", "targets": "summary"} for seq2seq; each becomes a
    1-D int32 token array without EOS (objectives add it); a callable instead of a field name
    renders the text from the record (a prompt template). `stages(shard)` gives the objective's
    grain stages for a shard (seeded per shard).

    The records are split into `num_shards` disjoint shards (0: one per process), each with its
    own pipeline yielding `batch_size / num_shards` rows. Process p reads only its shards
    (p * S/P ... (p+1) * S/P - 1) and yields their rows side by side: the rows this process
    contributes to the global batch of `batch_size`. The global batch is therefore the same for
    any process count that divides `num_shards`.
    """
    check_fields(records, [f for f in fields.values() if isinstance(f, str)])
    shards = num_shards or process_count
    if shards % process_count:
        raise ValueError(
            f"data.num_shards={shards} is not divisible by the {process_count} processes"
        )
    if batch_size % shards:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by data.num_shards={shards}"
        )
    texts = [
        {k: str(r[f]) if isinstance(f, str) else f(r) for k, f in fields.items()} for r in records
    ]
    cut = truncation or TruncationCounter(max_tokens=1 << 30)

    def shard_dataset(shard: int) -> grain.IterDataset:
        rows = texts[shard::shards]
        if not rows:
            raise ValueError(
                f"data shard {shard} of {shards} got no records: the source has only {len(records)}"
            )
        ds = grain.MapDataset.source(rows)
        if shuffle:
            ds = ds.shuffle(seed=seed + shard)
        if repeat:
            ds = ds.repeat()
        ds = ds.map(lambda r: {k: cut(tokenizer.encode(t, add_eos=False), k) for k, t in r.items()})
        return stages(shard)(ds.to_iter_dataset()).batch(batch_size // shards, drop_remainder=True)

    per_process = shards // process_count
    mine = [
        shard_dataset(s)
        for s in range(process_index * per_process, (process_index + 1) * per_process)
    ]
    if len(mine) == 1:
        return mine[0]
    return grain.experimental.ZipIterDataset(mine).map(
        lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    )


def make_iterator(*args, **kwargs) -> grain.DatasetIterator:
    return iter(make_dataset(*args, **kwargs))


def iterator_state_json(it: grain.DatasetIterator) -> dict:
    """The iterator's position as JSON-able data (saved with each checkpoint)."""
    return json.loads(json.dumps(it.get_state(), default=_to_builtin))


def _to_builtin(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode("latin-1")
    raise TypeError(f"cannot serialise {type(x).__name__} in the data iterator state")
