"""The embedded corpus: deterministic DialogSum-format records for runs without a dataset.

The machine this code runs on often has no network, so DialogSum cannot be downloaded. This
module generates a stand-in with the same record layout, used by the default `t5x-lite train`
(span corruption on ``dialogue``) and by the fine-tuning, reward-model and PPO recipes
(``dialogue`` -> ``summary``; ``toxic_summary`` as the rejected/penalised variant).

    records = corpus.generate(100, seed=0)  # list of dicts, see `make_record`
    data = corpus.splits()                  # {"train": 2000, "validation": 200, "test": 200}
    tok = tokenizer.load(corpus.DEFAULT_TOKENIZER_DIR)  # shipped tokenizer, vocab 1024

Record ``i`` depends only on ``(seed, i)``, never on how many records are asked for. Exactly
one record in every five (``i % 5 == 2``) carries ``toxic_summary``, a rude rewrite of its
summary, so any prefix of ``n`` records holds exactly ``round(n * TOXIC_FRACTION)`` of them.

Each record comes from one of ~50 everyday scenes (shopping, a doctor visit, a job interview,
...) whose turns are slot-filled templates (names, items, prices, times, places, numbers) with
several phrasings per turn; the reference summary is filled from the same slots, so every
number and name in a summary also occurs in its dialogue and summarisation is learnable.
The scenes, word lists and phrases are data: ``assets/corpus/*.json``, whose format
``assets/corpus/README.md`` describes and `t5x_lite.scenes` reads.
`train_tokenizer` retrains the shipped tokenizer on the corpus (`t5x-lite tokenizer
train-embedded`).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from t5x_lite import scenes

DEFAULT_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"

TOXIC_FRACTION = 0.2
_TOXIC_PERIOD = 5  # record i is toxic iff i % 5 == 2: floor((n + 2) / 5) == round(n / 5)
_TOXIC_OFFSET = 2

SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
MIN_TURNS, MAX_TURNS = 4, 10
_EXTRA_TURNS = (0, 0, 1, 1, 2, 2, 3, 4)  # generic turns added around a scene's core

# Words that mark a toxic summary (all mild insults; the corpus has no slurs or profanity).
INSULT_WORDS = (
    "stupid", "idiot", "shut up", "pathetic", "useless", "dumb", "clueless", "moron", "loser",
    "lazy", "annoying", "fool",
)  # fmt: skip

PathLike = str | os.PathLike

SCENES: tuple[scenes.Scene, ...] = scenes.load_scenes()
TOPICS: tuple[str, ...] = tuple(scene.topic for scene in SCENES)
_PHRASES: dict[str, list] = scenes.load_phrases()


def _choose(rng: random.Random, alt: scenes.Alt) -> str:
    return alt if isinstance(alt, str) else rng.choice(alt)


_FREE_MENTION = r"(?!'s|,)"


def _rude(summary: str, rng: random.Random) -> str:
    """A rude rewrite of ``summary``: same content, insulting tone (mild insults only)."""
    text = summary
    person = rng.choice(("#Person1#", "#Person2#"))
    # A possessive ("#Person1#'s bag") or a mention that already has an appositive
    # ("#Person1#, the neighbor") cannot take one; then fall back to the other person.
    match = re.search(re.escape(person) + _FREE_MENTION, text) or re.search(
        r"#Person[12]#" + _FREE_MENTION, text
    )
    if match:
        insult = rng.choice(_PHRASES["rude_appositives"])
        text = f"{text[: match.end()]}, {insult},{text[match.end() :]}"
    style = rng.randrange(3) if match else 2
    if style in (0, 2):
        text = f"{text} {rng.choice(_PHRASES['rude_closers'])}"
    if style in (1, 2):
        text = f"{rng.choice(_PHRASES['rude_openers'])} {text}"
    return text


def is_toxic_index(index: int) -> bool:
    """Whether record ``index`` carries ``toxic_summary`` (one in five, at ``i % 5 == 2``)."""
    return index % _TOXIC_PERIOD == _TOXIC_OFFSET


def make_record(index: int, *, seed: int = 0) -> dict[str, Any]:
    """Record ``index`` of the corpus for ``seed``; depends on nothing else.

    Keys: ``fname``, ``dialogue`` ("#Person1#: ..." / "#Person2#: ..." turns joined by "\\n"),
    ``summary``, ``topic``, ``is_toxic_variant`` and, when that is True, ``toxic_summary``;
    ``noisy_summary`` is ``toxic_summary`` where there is one, else ``summary``.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    # An explicit integer mix rather than hash(): str hashes are salted per process.
    rng = random.Random(seed * 1_000_003 + index)
    scene = SCENES[rng.randrange(len(SCENES))]
    slots = scene.draw_slots(rng)
    ending_turns, ending_summary = rng.choice(scene.endings) if scene.endings else ((), "")

    core = [_choose(rng, alt) for alt in (*scene.turns, *ending_turns)]
    extra = min(rng.choice(_EXTRA_TURNS), MAX_TURNS - len(core))
    extra = max(extra, MIN_TURNS - len(core))
    opener: list[str] = []
    if scene.greet and extra >= 2 and rng.random() < 0.5:
        opener = rng.choice(_PHRASES["casual_openers" if scene.casual else "openers"])
        extra -= 2
    chain = _PHRASES["casual_closing_chain" if scene.casual else "closing_chain"]
    closing = [rng.choice(options) for options in chain[:extra]]
    turns = [*opener, *(t.format_map(slots) for t in core), *closing]
    dialogue = "\n".join(f"#Person{i % 2 + 1}#: {turn}" for i, turn in enumerate(turns))

    summary = _choose(rng, scene.summary).format_map(slots)
    if ending_summary:
        summary = f"{summary} {ending_summary.format_map(slots)}"
    record: dict[str, Any] = {
        "fname": f"embedded_{index:05d}",
        "dialogue": dialogue,
        "summary": summary,
        "topic": scene.topic,
    }
    toxic = is_toxic_index(index)
    if toxic:
        record["toxic_summary"] = _rude(summary, rng)
    record["is_toxic_variant"] = toxic
    # References as a careless annotator team wrote them: the rude fifth kept rude. A
    # summarizer fine-tuned on these is sometimes rude, which the PPO detox recipe removes.
    record["noisy_summary"] = record.get("toxic_summary", summary)
    return record


def generate(num_records: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Records ``0 .. num_records - 1`` for ``seed`` (see `make_record`)."""
    if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 0:
        raise ValueError(f"num_records must be a non-negative int, got {num_records!r}")
    return [make_record(i, seed=seed) for i in range(num_records)]


@functools.lru_cache(maxsize=4)
def _split_records(seed: int) -> dict[str, tuple[dict[str, Any], ...]]:
    out, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        out[name] = tuple(make_record(i, seed=seed) for i in range(start, start + size))
        start += size
    return out


def splits(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``train`` / ``validation`` / ``test`` (2000 / 200 / 200 records), consecutive and
    disjoint index ranges, so validation and test never overlap training."""
    # Cached because the data pipeline asks once per split; copies keep callers' edits local.
    return {name: [dict(r) for r in records] for name, records in _split_records(seed).items()}


def write_jsonl(records: Iterable[dict[str, Any]], path: PathLike) -> Path:
    """Write ``records`` one JSON object per line (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def train_tokenizer(out_dir=None, *, vocab_size: int = 924, seed: int = 0):
    """Train the embedded corpus's tokenizer on its ``train`` split and save it to ``out_dir``
    (default: the shipped one, ``DEFAULT_TOKENIZER_DIR``); returns it loaded.

    Texts are the dialogues, summaries and toxic summaries of ``splits(seed)``.
    ``vocab_size`` counts SentencePiece pieces; the 100 sentinels come on top, so the default
    gives 1024 ids, the ``t5-tiny`` preset's vocabulary. The same corpus gives the same bytes.
    """
    from t5x_lite import tokenizer

    fields = ["dialogue", "summary", "toxic_summary"]
    # `train` needs every field in every record; empty texts are skipped there.
    rows = [{k: r.get(k, "") for k in fields} for r in splits(seed)["train"]]
    out_dir = DEFAULT_TOKENIZER_DIR if out_dir is None else out_dir
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(rows, Path(tmp) / "train.jsonl")
        return tokenizer.train(path, out_dir, vocab_size=vocab_size, field=fields, seed=seed)
