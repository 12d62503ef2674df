"""Input pipeline: a source's records -> grain (shuffle, tokenize, objective stages, batch).

    spec = DataSpec(source="jsonl", path="shards/*.jsonl", input_field="dialogue")
    source = open_source(spec)                                     # sources.Source
    it = make_iterator(source, tokenizer=tok, fields={"targets": "dialogue"},
                       stages=objective_stages, batch_size=8, seed=0)
    batch = next(it)                                               # dict of numpy (B, ...)
    state = it.get_state()                                         # JSON-able, for Orbax

Sources (`t5x_lite/sources.py` reads them): `embedded` (the built-in DialogSum-style corpus,
in memory), `jsonl` (files streamed lazily: `.jsonl`, `.json`, `.csv`, `.parquet`, `.txt` by
extension; `data.path` is a file, a glob or a comma-separated list, may contain `{split}`, or
is a directory holding `{split}.jsonl` or `{split}-*.jsonl`), `array_record` (shards written
by `prepare`, read at random), `hf` (a Hugging Face dataset, streamed) and `tfds` (its
ArrayRecord-backed data source). Input shards are disjoint; each process reads only its own.
Everything after reading is a grain pipeline, deterministic in `seed`, whose iterator state is
checkpointed, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import grain
import numpy as np

from t5x_lite import sources
from t5x_lite.sources import FILE_EXTENSIONS, TEXT_FIELD, ReadStats  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

SOURCES = ("embedded", "jsonl", "array_record", "hf", "tfds")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    source: str = "embedded"
    path: str = ""
    split: str = "train"
    input_field: str = "dialogue"
    target_field: str = "summary"
    skip_bad_records: bool = False
    shuffle_buffer: int = 10_000  # streamed sources shuffle within windows of this many records
    path_key: str = "data.path"  # the config keys that chose `path` and `split`, for errors
    split_key: str = "data.split"


# ----------------------------------------------------------------------------- reading


def is_single_file(path: str) -> bool:
    """Whether a file source's `path` names the same files for every split (a file, glob or
    list: no `{split}`, not a directory of `{split}` files)."""
    return bool(path) and "{split}" not in path and not Path(path).is_dir()


def resolve_files(spec: DataSpec, extensions: tuple[str, ...]) -> list[Path]:
    """The files of `spec.split`: `spec.path` with `{split}` filled in, expanded as a file, glob
    or list (`sources.expand`); a directory gives its `{split}.EXT` or `{split}-*.EXT` files."""
    if not spec.path:
        raise ValueError(
            f"data.source={spec.source!r} needs {spec.path_key} (a file, glob or directory)"
        )
    path = spec.path.replace("{split}", spec.split)
    if Path(path).is_dir():
        for ext in extensions:
            for pattern in (f"{spec.split}{ext}", f"{spec.split}-*{ext}"):
                if found := sorted(Path(path).glob(pattern)):
                    return found
        names = " or ".join(f"{spec.split}{e} / {spec.split}-*{e}" for e in extensions[:2])
        raise FileNotFoundError(
            f"{spec.path_key}={path} is a directory without {names} files for "
            f"{spec.split_key}={spec.split!r}"
        )
    return sources.expand(path, key=spec.path_key)


def open_source(spec: DataSpec, stats: ReadStats | None = None) -> sources.Source:
    """The `sources.Source` `spec` names (files are found and checked now; read lazily)."""
    stats = stats if stats is not None else ReadStats()
    skip = spec.skip_bad_records
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
        return sources.random_access(f"embedded[{spec.split}]", records)
    if spec.source == "jsonl":
        files = resolve_files(spec, FILE_EXTENSIONS)
        return sources.file_source(files, window=spec.shuffle_buffer, skip_bad=skip, stats=stats)
    if spec.source == "array_record":
        files = resolve_files(spec, (sources.ARRAY_RECORD,))
        records = sources.RecordFiles(files, skip_bad=skip, stats=stats)
        source = sources.random_access(f"{len(files)} ArrayRecord file(s) from {files[0]}", records)
        return dataclasses.replace(source, check_tokenizer=lambda tok: check_prepared(files, tok))
    if spec.source == "hf":
        return sources.hf_source(spec.path, spec.split, window=spec.shuffle_buffer)
    if spec.source == "tfds":
        return sources.random_access(f"tfds:{spec.path}[{spec.split}]", _TfdsRecords(spec))
    raise ValueError(
        f"data.source={spec.source!r} is not supported; expected one of {', '.join(SOURCES)}"
    )


class _TfdsRecords:
    """A TFDS dataset's random-access (ArrayRecord-backed) data source, bytes decoded."""

    def __init__(self, spec: DataSpec):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise ValueError(
                "data.source='tfds' needs the [tfds] extra: pip install 't5x_lite[tfds]'"
            ) from e
        self.name = spec.path
        self._source = tfds.data_source(spec.path, split=spec.split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        decode = lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
        return {k: decode(v) for k, v in self._source[i].items()} | {
            "_position": f"{self.name}[{i}]"
        }


def read_records(
    spec: DataSpec, stats: ReadStats | None = None, limit: int | None = None
) -> list[dict]:
    """The records of `spec.split` (the first `limit`; all: None) as dicts, in the source's
    order, for small sets (eval examples, prompts); each carries `_position` for errors."""
    records = open_source(spec, stats).head(limit)
    if not records:
        raise ValueError(
            f"data source {spec.source}:{spec.path or spec.split} "
            f"(split {spec.split!r}) has no records"
        )
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
    records = []
    for label, parse, _ in sources.records_from(path):
        record = sources.parse_or_skip(label, parse, skip_bad, stats, hint=skip_hint)
        if record is not None:
            records.append(record)
    return records


def field(record: dict, name: str):
    """`record[name]`, or an error naming the record's position, the field and its fields."""
    value = record.get(name)
    if value is None:
        have = sorted(k for k in record if k != "_position")
        raise KeyError(
            f"record at {record.get('_position', '?')} has no field {name!r} "
            f"(set data.input_field / data.target_field); its fields: {have}"
        )
    return value


def check_fields(records: list[dict], fields: list[str]) -> None:
    """Fail on the first record that lacks a configured field, saying which and where."""
    for record in records:
        for name in fields:
            field(record, name)


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
    source: sources.Source | list[dict],
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
    worker_count: int = 0,
) -> grain.IterDataset:
    """Per shard: records -> shuffle -> repeat -> tokenize `fields` -> objective stages -> batch.

    `source` is a `sources.Source` (`open_source`) or a list of records. `fields` maps output
    feature names to record fields, e.g. {"targets": "dialogue"} for pre-training or
    {"inputs": "dialogue", "targets": "summary"} for seq2seq; each becomes a 1-D int32 token
    array without EOS (objectives add it); a field holding token ids already (`prepare` with a
    tokenizer) is taken as it is; a callable instead of a field name renders the text from the
    record (a prompt template). `stages(shard)` gives the objective's grain stages for a shard
    (seeded per shard).

    The source is split into `num_shards` disjoint shards (0: one per process), each with its
    own pipeline yielding `batch_size / num_shards` rows. Process p reads only its shards
    (p * S/P ... (p+1) * S/P - 1) and yields their rows side by side: the rows this process
    contributes to the global batch of `batch_size`. The global batch is therefore the same for
    any process count that divides `num_shards`. `worker_count` > 0 runs the pipeline in that
    many grain worker processes (each a slice of every shard; the order depends on the count).
    """
    if not isinstance(source, sources.Source):
        check_fields(source, [f for f in fields.values() if isinstance(f, str)])
        source = sources.random_access(f"{len(source)} records", source)
    source.check_tokenizer(tokenizer)
    shards = num_shards or process_count
    if shards % process_count:
        raise ValueError(
            f"data.num_shards={shards} is not divisible by the {process_count} processes"
        )
    if batch_size % shards:
        raise ValueError(
            f"train.batch_size={batch_size} is not divisible by data.num_shards={shards}"
        )
    cut = truncation or TruncationCounter(max_tokens=1 << 30)

    def tokens(record: dict, feature: str, name) -> np.ndarray:
        value = field(record, name) if isinstance(name, str) else name(record)
        if isinstance(value, list):  # token ids (`prepare --tokenizer`)
            return cut(value, feature)
        return cut(tokenizer.encode(str(value), add_eos=False), feature)

    def shard_dataset(shard: int) -> grain.IterDataset:
        ds = source.shard(shard, shards, seed=seed, shuffle=shuffle, repeat=repeat)
        ds = ds.map(lambda r: {k: tokens(r, k, f) for k, f in fields.items()})
        return stages(shard)(ds).batch(batch_size // shards, drop_remainder=True)

    per_process = shards // process_count
    mine = [
        shard_dataset(s)
        for s in range(process_index * per_process, (process_index + 1) * per_process)
    ]
    ds = mine[0]
    if len(mine) > 1:
        ds = grain.experimental.ZipIterDataset(mine).map(
            lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        )
    if worker_count:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; we have no app
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


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


# ----------------------------------------------------------------------------- ArrayRecord

PREPARED = "prepare.json"  # beside the shards: splits, record counts, tokenized fields


def prepare(
    records: Iterable[dict],
    out: str | Path,
    *,
    split: str = "train",
    num_shards: int = 1,
    tokenizer=None,
    fields: list[str] | None = None,
) -> dict:
    """Write `records` round-robin into `num_shards` ArrayRecord files
    `out/{split}-0000i-of-0000N.array_record`, one JSON object per record, for
    `data.source=array_record`. With `tokenizer`, the `fields` hold token ids (no EOS) instead
    of text, and training checks that its tokenizer is the same one. Files are written under a
    temporary name and renamed when complete; `out/prepare.json` says what each split holds."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if tokenizer is not None and not fields:
        raise ValueError("--tokenizer needs --field: the fields to store as token ids")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / PREPARED
    info = json.loads(info_path.read_text()) if info_path.exists() else {"splits": {}}
    checksum = tokenizer.checksum if tokenizer is not None else None
    if info["splits"] and info.get("tokenizer_checksum") != checksum:
        raise ValueError(
            f"{out} holds splits prepared with another tokenizer (or none); use another --out"
        )
    names = [
        f"{split}-{i:05d}-of-{num_shards:05d}{sources.ARRAY_RECORD}" for i in range(num_shards)
    ]
    writers = [ArrayRecordWriter(str(out / f"{n}.tmp"), "group_size:1") for n in names]
    count = 0
    for record in records:
        record = {k: v for k, v in record.items() if k != "_position"}
        for name in fields if tokenizer is not None else ():
            record[name] = tokenizer.encode(str(field(record, name)), add_eos=False)
        writers[count % num_shards].write(json.dumps(record).encode("utf-8"))
        count += 1
    for w, name in zip(writers, names, strict=True):
        w.close()
        (out / f"{name}.tmp").replace(out / name)
    info["tokenizer_checksum"], info["token_fields"] = checksum, list(fields or [])
    info["splits"][split] = {"files": names, "records": count}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info["splits"][split]


def prepare_command(args) -> dict:
    """`t5x-lite data prepare`: `args.input` (files) or `args.hf` (a dataset, streamed) ->
    `prepare`, errors in the command's flags."""
    from t5x_lite import tokenizer

    source, path = ("hf", args.hf) if args.hf else ("jsonl", args.input)
    spec = DataSpec(
        source,
        path,
        args.split,
        skip_bad_records=args.skip_bad_records,
        path_key="--hf" if args.hf else "--input",
        split_key="--split",
    )
    tok = tokenizer.load(args.tokenizer) if args.tokenizer else None
    records = open_source(spec).shard(0, 1, seed=0, shuffle=False, repeat=False)
    return prepare(
        records,
        args.out,
        split=args.split,
        num_shards=args.num_shards,
        tokenizer=tok,
        fields=args.field,
    )


def check_prepared(files: list[Path], tokenizer) -> None:
    """ArrayRecord shards holding token ids must meet the tokenizer that made them."""
    info_path = files[0].parent / PREPARED
    if not info_path.exists():
        return
    checksum = json.loads(info_path.read_text()).get("tokenizer_checksum")
    if checksum and checksum != getattr(tokenizer, "checksum", checksum):
        raise ValueError(
            f"{info_path}: the shards hold token ids from another tokenizer than this run's "
            "(tokenizer.path); prepare them again with it, or train with theirs"
        )
