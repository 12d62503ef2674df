"""Record sources: what the input pipeline reads, one disjoint shard at a time.

    source = sources.open_source(spec)          # spec: data.DataSpec
    ds = source.shard(0, 2, seed=0, shuffle=True, repeat=True)   # grain.IterDataset of dicts
    source.head(8)                               # the first records (eval generation)

    source         reads (lazily)                    shuffle                  a shard gets
    jsonl          .jsonl .json .csv .parquet .txt   file order per epoch     every S-th file
                   files: one, a glob or a list      + a window of records
    array_record   `t5x-lite data prepare` shards    global (random access)   every S-th record
    hf             a `datasets` dataset, streamed    a window of records      split_dataset_by_node
    embedded       the built-in corpus, in memory    global                   every S-th record

Memory does not grow with the corpus: files are read line by line (row groups for parquet),
ArrayRecord files by index. With fewer files than shards, every shard reads every file and
keeps every S-th record (parsing only its own). Each record carries `_position` ("file:line",
"file[record i]") for errors; a malformed one is an error naming it, or with `skip_bad` is
counted and skipped. Iterator states are small JSON (file, byte offset, epoch), saved with each
checkpoint, so a resumed run sees exactly the records an uninterrupted one does.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import glob
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import grain
import numpy as np

log = logging.getLogger(__name__)

FILE_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
ARRAY_RECORD = ".array_record"
TEXT_FIELD = "text"  # the field name of `.txt` records (one text per line)
SKIP_HINT = " or set --config.data.skip_bad_records=true"


@dataclasses.dataclass
class ReadStats:
    """What reading skipped, reported in the metrics: each bad record once, as this process
    reads it (grain worker processes keep their own counts)."""

    skipped_records: int = 0
    skipped_files: int = 0


def expand(path: str, *, key: str) -> list[Path]:
    """The files `path` names: a file, a glob (`shards/*.jsonl`, `**` too) or a comma-separated
    list of either, globs in sorted order. Errors name `key` and the part that matched nothing."""
    files = []
    for part in filter(None, (p.strip() for p in path.split(","))):
        if glob.has_magic(part):
            matched = sorted(Path(m) for m in glob.glob(part, recursive=True) if Path(m).is_file())
            if not matched:
                raise FileNotFoundError(f"{key}: the glob {part!r} matches no file")
            files += matched
        elif Path(part).is_file():
            files.append(Path(part))
        else:
            raise FileNotFoundError(f"data file {part} does not exist ({key})")
    if not files:
        raise ValueError(f"{key} is empty: name a file, a glob or a comma-separated list")
    return files


# ----------------------------------------------------------------------------- one file, lazily

Parse = Callable[[], dict]


def _json_object(raw: bytes) -> dict:
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def records_from(path: Path, pos: dict | None = None) -> Iterator[tuple[str, Parse, dict]]:
    """(position, parse, resume) for each record of `path` from `pos` (a `resume` given before;
    None: the start). `parse()` gives the record or raises ValueError; records are parsed only
    when asked, so a shard skipping others' records does not pay for them."""
    ext = path.suffix.lower()
    if ext not in FILE_EXTENSIONS:
        raise ValueError(
            f"data file {path}: unsupported extension {ext!r}; expected one of "
            f"{', '.join(FILE_EXTENSIONS)}"
        )
    if ext in (".jsonl", ".txt") or (ext == ".json" and not _is_json_array(path)):
        parse = (
            (lambda raw: {TEXT_FIELD: raw.decode("utf-8").rstrip("\r\n")})
            if ext == ".txt"
            else _json_object
        )
        offset, line = (pos["offset"], pos["line"]) if pos else (0, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            for raw in iter(f.readline, b""):
                offset, line = offset + len(raw), line + 1
                if raw.strip():
                    yield (
                        f"{path}:{line}",
                        lambda raw=raw: parse(raw),
                        dict(offset=offset, line=line),
                    )
        return
    start = pos["row"] if pos else 0
    for i, (label, row) in enumerate(_rows(path, ext)):
        if i >= start:
            yield label, lambda row=row: row, dict(row=i + 1)


def _rows(path: Path, ext: str) -> Iterator[tuple[str, dict]]:
    """(position, record) of a file read by rows: a JSON array (whole), CSV, parquet batches."""
    if ext == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
        yield from ((f"{path}[{i}]", dict(r)) for i, r in enumerate(items))
    elif ext == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            yield from ((f"{path}:{reader.line_num}", row) for row in reader)
    else:  # parquet, a batch of rows at a time
        try:
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        except ImportError as e:
            raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from e
        except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file vary
            raise ValueError(f"{path}: unreadable parquet file ({e})") from e
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}[row {i}]", row
                i += 1


def parse_or_skip(
    label: str, parse: Parse, skip_bad: bool, stats: ReadStats, hint: str = SKIP_HINT
) -> dict | None:
    """The record with its `_position`, or None for a malformed one under `skip_bad`; `hint`
    ends the error."""
    try:
        record = parse()
    except (ValueError, UnicodeDecodeError) as e:
        if skip_bad:
            stats.skipped_records += 1
            return None
        raise ValueError(f"{label}: malformed record ({e}); fix the line{hint}") from e
    record["_position"] = label
    return record


# ----------------------------------------------------------------------------- streams


class FileStream(grain.IterDataset):
    """The records of `files` in order, each file read lazily; every `stride`-th record from
    `offset`. With `shuffle` the file order is drawn anew each epoch from `seed`; with `repeat`
    the stream never ends. Grain's worker processes slice it further (`set_slice`)."""

    def __init__(self, files, *, seed, shuffle, repeat, offset=0, stride=1, skip_bad, stats):
        super().__init__()
        self.files, self.seed, self.shuffle, self.repeat = list(files), seed, shuffle, repeat
        self.offset, self.stride, self.skip_bad, self.stats = offset, stride, skip_bad, stats

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Worker w of W (grain's `mp_prefetch`) keeps every W-th of this stream's records."""
        del sequential_slice
        self.offset += self.stride * (sl.start or 0)
        self.stride *= sl.step or 1

    def order(self, epoch: int) -> list[int]:
        order = list(range(len(self.files)))
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order

    def __iter__(self) -> grain.DatasetIterator:
        return _FileStreamIterator(self)

    def __str__(self) -> str:
        return f"FileStream({len(self.files)} files, every {self.stride} from {self.offset})"


class _FileStreamIterator(grain.DatasetIterator):
    def __init__(self, ds: FileStream):
        super().__init__()
        self._ds, self._reader, self._order = ds, None, (None, [])
        # epoch; file: index into the epoch's order; pos: where to resume in it; count: records
        # seen (all shards'); kept: records this stream returned in the epoch
        self._state = dict(epoch=0, file=0, pos=None, count=0, kept=0)

    def _open(self) -> Iterator:
        ds, s = self._ds, self._state
        if self._order[0] != s["epoch"]:
            self._order = (s["epoch"], ds.order(s["epoch"]))
        return records_from(ds.files[self._order[1][s["file"]]], s["pos"])

    def __next__(self) -> dict:
        ds, s = self._ds, self._state
        while True:
            if s["file"] == len(ds.files):
                if not ds.repeat:
                    raise StopIteration
                if not s["kept"]:
                    files = f"{', '.join(map(str, ds.files[:3]))}{' ...' * (len(ds.files) > 3)}"
                    shard = f" for shard {ds.offset} of {ds.stride}" if ds.stride > 1 else ""
                    raise ValueError(f"data source {files} has no records{shard}")
                s.update(epoch=s["epoch"] + 1, file=0, pos=None, kept=0)
            if self._reader is None:
                self._reader = self._open()
            try:
                label, parse, pos = next(self._reader)
            except StopIteration:
                self._reader = None
                s.update(file=s["file"] + 1, pos=None)
                continue
            mine = s["count"] % ds.stride == ds.offset
            s.update(count=s["count"] + 1, pos=pos)
            stats = ds.stats if s["epoch"] == 0 else ReadStats()  # count each bad one once
            if mine and (record := parse_or_skip(label, parse, ds.skip_bad, stats)):
                s["kept"] += 1
                return record

    def get_state(self) -> dict:
        return dict(self._state)

    def set_state(self, state: dict) -> None:
        if self._reader is not None:
            self._reader.close()
        self._state, self._reader = dict(state), None


class RecordFiles:
    """ArrayRecord files (one JSON object per record) as one random-access sequence; a record
    that does not decode is an error naming its file and index, or None under `skip_bad`."""

    def __init__(self, files: list[Path], *, skip_bad: bool, stats: ReadStats):
        self.files, self.skip_bad, self.stats, sources = [], skip_bad, stats, []
        for path in files:
            try:
                sources.append(grain.sources.ArrayRecordDataSource([str(path)]))
            except Exception as e:  # noqa: BLE001 - riegeli's RuntimeError for a damaged file
                why = str(e) or "truncated, or not an ArrayRecord file"
                if not skip_bad:
                    raise ValueError(
                        f"{path}: unreadable ArrayRecord file ({why}){SKIP_HINT}"
                    ) from e
                log.warning("skipping %s: unreadable ArrayRecord file (%s)", path, why)
                stats.skipped_files += 1
                continue
            self.files.append(path)
        self._sources, self._bad = sources, set()
        self._ends = np.cumsum([len(s) for s in sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> dict | None:
        f = bisect.bisect_right(self._ends, index)
        i = index - (self._ends[f - 1] if f else 0)
        label = f"{self.files[f]}[record {i}]"

        def parse():
            try:
                return _json_object(self._sources[f][i])
            except RuntimeError as e:  # riegeli: a damaged chunk
                raise ValueError(str(e)) from e

        stats = self.stats if index not in self._bad else ReadStats()  # count each bad one once
        record = parse_or_skip(label, parse, self.skip_bad, stats)
        if record is None:
            self._bad.add(index)
        return record


class HFStream(grain.IterDataset):
    """A `datasets` dataset streamed: this shard's part (`split_dataset_by_node`), epochs via
    `set_epoch`; the iterator state is the dataset's own `state_dict()`."""

    def __init__(self, path: str, split: str, *, rank: int, world: int, repeat: bool):
        super().__init__()
        self.path, self.split, self.rank, self.world, self.repeat = path, split, rank, world, repeat

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice
        self.rank += self.world * (sl.start or 0)
        self.world *= sl.step or 1

    def dataset(self, epoch: int):
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(_load_hf(self.path, self.split), self.rank, self.world)
        ds.set_epoch(epoch)
        return ds

    def __iter__(self) -> grain.DatasetIterator:
        return _HFStreamIterator(self)


class _HFStreamIterator(grain.DatasetIterator):
    def __init__(self, stream: HFStream):
        super().__init__()
        self._stream, self._epoch, self._index = stream, 0, 0
        self._start(None)

    def _start(self, hf_state: dict | None) -> None:
        self._ds = self._stream.dataset(self._epoch)
        if hf_state is not None:
            self._ds.load_state_dict(hf_state)
        self._it = iter(self._ds)

    def __next__(self) -> dict:
        p = self._stream
        try:
            record = dict(next(self._it))
        except StopIteration:
            if not p.repeat:
                raise
            self._epoch, self._index = self._epoch + 1, 0
            self._start(None)
            record = dict(next(self._it))
        shard = f"[shard {p.rank} of {p.world}]" if p.world > 1 else ""
        record["_position"] = f"{p.path}[{p.split}]{shard}[{self._index}]"
        self._index += 1
        return record

    def get_state(self) -> dict:
        return dict(epoch=self._epoch, index=self._index, hf=self._ds.state_dict())

    def set_state(self, state: dict) -> None:
        self._epoch, self._index = state["epoch"], state["index"]
        self._start(state["hf"])


def _load_hf(path: str, split: str):
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            "data.source='hf' needs the `datasets` package: pip install datasets"
        ) from e
    return datasets.load_dataset(path, split=split, streaming=True)


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
    """What `open_source` gives: `shard(i, n, ...)` datasets and `head(n)` records."""

    name: str
    make_shard: Callable[..., grain.IterDataset]
    check_tokenizer: Callable[[object], None] = lambda tokenizer: None  # token-id sources

    def shard(self, index: int, count: int, *, seed: int, shuffle: bool, repeat: bool):
        return self.make_shard(index, count, seed=seed, shuffle=shuffle, repeat=repeat)

    def head(self, n: int | None = None) -> list[dict]:
        """The first `n` records (all: None) in the source's order, unshuffled."""
        it = iter(self.shard(0, 1, seed=0, shuffle=False, repeat=False))
        return [r for _, r in zip(range(n if n is not None else 1 << 62), it, strict=False)]


def random_access(name: str, records) -> Source:
    """A source over a random-access sequence (a list, `RecordFiles`, a TFDS data source):
    shard i of S holds records i, i + S, ...; shuffled globally (a new order each epoch is not
    drawn: every epoch repeats the first's, as T5X's deterministic pipelines do)."""

    def make_shard(index, count, *, seed, shuffle, repeat):
        ds = grain.MapDataset.source(records)[index::count]
        if not len(ds):
            raise ValueError(
                f"data shard {index} of {count} got no records: {name} has {len(records)}"
            )
        if shuffle:
            ds = ds.shuffle(seed=seed + index)
        if repeat:
            ds = ds.repeat()
        ds = ds.to_iter_dataset()
        return ds.filter(lambda r: r is not None) if isinstance(records, RecordFiles) else ds

    return Source(name, make_shard)


def windowed(ds: grain.IterDataset, window: int, seed: int) -> grain.IterDataset:
    """`ds` shuffled within windows of `window` records (grain's, checkpointable)."""
    if window <= 1:
        return ds
    return grain.experimental.WindowShuffleIterDataset(ds, window_size=window, seed=seed)


def file_source(files: list[Path], *, window: int, skip_bad: bool, stats: ReadStats) -> Source:
    name = f"{len(files)} file(s) from {files[0]}"

    def make_shard(index, count, *, seed, shuffle, repeat):
        common = dict(shuffle=shuffle, repeat=repeat, skip_bad=skip_bad, stats=stats)
        if len(files) >= count:  # whole files per shard
            ds = FileStream(files[index::count], seed=seed + index, **common)
        else:  # every shard reads every file and keeps its records
            if index == 0:
                log.warning(
                    "%d data files for %d shards: every shard reads every file and keeps one "
                    "record in %d (with at least as many files as processes, each reads less)",
                    len(files),
                    count,
                    count,
                )
            ds = FileStream(files, seed=seed, offset=index, stride=count, **common)
        return windowed(ds, window, seed + index) if shuffle else ds

    return Source(name, make_shard)


def hf_source(path: str, split: str, *, window: int) -> Source:
    _load_hf(path, split)  # fail now (missing package, unknown dataset or split)

    def make_shard(index, count, *, seed, shuffle, repeat):
        ds = HFStream(path, split, rank=index, world=count, repeat=repeat)
        return windowed(ds, window, seed + index) if shuffle else ds

    return Source(f"hf:{path}[{split}]", make_shard)
