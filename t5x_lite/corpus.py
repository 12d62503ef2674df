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
``assets/corpus/README.md`` describes. `t5x_lite.tokenizer.train_embedded` retrains the
shipped tokenizer on the corpus.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import operator
import os
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "assets" / "corpus"
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
Alt = str | tuple[str, ...]  # one template, or alternative phrasings of it
Sampler = Callable[[random.Random, dict], Any]


def _read_json(name: str) -> Any:
    try:
        return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{DATA_DIR / name}: not valid JSON: {e}") from e


def _clock(rng: random.Random, lo_hour: int, hi_hour: int) -> str:
    """A time of day such as "7 pm" or "10:30 am", with the hour in [lo_hour, hi_hour]."""
    hour = rng.randint(lo_hour, hi_hour)
    minute = rng.choice((0, 0, 15, 30, 45))
    text = str(hour % 12 or 12) + (f":{minute:02d}" if minute else "")
    return f"{text} {'am' if hour < 12 else 'pm'}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}  # fmt: skip


def _arithmetic(node: ast.AST) -> Callable[[dict], int]:
    """A function of the slots computing the parsed ``calc`` expression ``node``, which may
    hold only int literals, slot names (read as ints), ``+ - * //`` and parentheses."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        op, left, right = _OPERATORS[type(node.op)], _arithmetic(node.left), _arithmetic(node.right)
        return lambda s: op(left(s), right(s))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return lambda s: node.value
    if isinstance(node, ast.Name):
        return lambda s: int(s[node.id])
    raise ValueError(
        f"calc takes ints, slot names, + - * // and parentheses, not {ast.unparse(node)!r}"
    )


def _bound(value: int | str) -> Callable[[dict], int]:
    """A ``num`` bound: an int, or the name of an earlier slot holding one."""
    return (lambda s: int(s[value])) if isinstance(value, str) else (lambda s: int(value))


_SAMPLER_OPTIONS = {
    "pick": {"slice"}, "num": set(), "clock": set(), "other": {"than"}, "rows": {"keys"},
    "calc": set(), "ordinal": set(), "format": set(), "switch": {"cases"},
}  # fmt: skip


def _sampler(spec: dict, words: dict[str, list[str]]) -> Sampler:
    """The function ``(rng, slots) -> value`` that ``spec`` describes (see
    ``assets/corpus/README.md``); a ``rows`` sampler returns a dict of slots, others a str."""
    kinds = [k for k in _SAMPLER_OPTIONS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1 or set(spec) - {kinds[0], *_SAMPLER_OPTIONS[kinds[0]]}:
        raise ValueError(f"not a sampler (one of {', '.join(_SAMPLER_OPTIONS)}): {spec!r}")
    kind, arg = kinds[0], spec[kinds[0]]
    if kind == "pick":
        pool = tuple(words[arg] if isinstance(arg, str) else arg)
        pool = pool[slice(*spec.get("slice", [None]))]
        if not pool or not all(isinstance(w, str) for w in pool):
            raise ValueError(f"pick needs a non-empty list of words: {spec!r}")
        return lambda rng, s: rng.choice(pool)
    if kind == "num":
        lo, hi, step = _bound(arg[0]), _bound(arg[1]), int((*arg, 1)[2])
        return lambda rng, s: str(rng.randrange(lo(s), hi(s) + 1, step))
    if kind == "clock":
        lo_hour, hi_hour = arg
        return lambda rng, s: _clock(rng, lo_hour, hi_hour)
    if kind == "other":
        than = spec["than"]
        return _other(_sampler(arg, words), (than,) if isinstance(than, str) else tuple(than))
    if kind == "rows":
        keys, rows = tuple(spec["keys"]), tuple(tuple(row) for row in arg)
        if not rows or any(len(row) != len(keys) for row in rows):
            raise ValueError(f"rows must be non-empty, each with a cell per key of {keys}")
        return lambda rng, s: dict(zip(keys, rng.choice(rows), strict=True))
    if kind == "calc":
        try:
            calc = _arithmetic(ast.parse(arg, mode="eval").body)
        except SyntaxError as e:
            raise ValueError(f"calc {arg!r} is not an expression") from e
        return lambda rng, s: str(calc(s))
    if kind == "ordinal":
        return lambda rng, s: _ordinal(int(s[arg]))
    if kind == "format":
        return lambda rng, s: arg.format_map(s)
    cases = [(case.get("at_least"), _sampler(case["draw"], words)) for case in spec["cases"]]
    if not cases or cases[-1][0] is not None:
        raise ValueError(f"switch on {arg!r} must end with a case without at_least")
    return lambda rng, s: next(d for n, d in cases if n is None or int(s[arg]) >= n)(rng, s)


def _other(sampler: Sampler, keys: tuple[str, ...]) -> Sampler:
    """Like ``sampler`` but different from the already drawn slot(s) ``keys``."""

    def sample(rng: random.Random, s: dict) -> Any:
        taken = {s[k] for k in keys}
        for _ in range(100):
            value = sampler(rng, s)
            if value not in taken:
                return value
        raise RuntimeError(f"could not draw a value different from slots {keys}")

    return sample


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front (by sound for the few words where spelling lies)."""
    word = phrase.lower()
    vowel = word[:1] in "aeiou" and not word.startswith(("one", "uni", "use", "eu"))
    return f"{'an' if vowel or word.startswith(('hour', 'honest')) else 'a'} {phrase}"


class _Slots(dict):
    """Slot values for ``str.format_map``: ``{a_item}`` is ``item`` with its article and
    ``{item_cap}`` is ``item`` capitalised (for a slot that starts a sentence)."""

    def __missing__(self, key: str) -> str:
        if key.startswith("a_") and key[2:] in self:
            return _article(self[key[2:]])
        if key.endswith("_cap") and key[:-4] in self:
            value = self[key[:-4]]
            return value[:1].upper() + value[1:]
        raise KeyError(f"template uses undefined slot {key!r}")


@dataclasses.dataclass(frozen=True)
class _Scene:
    """A scene of ``scenes.json`` with its samplers built; ``endings`` holds ``(turns, summary
    sentence)`` pairs."""

    topic: str
    slots: dict[str, Sampler]
    turns: tuple[Alt, ...]
    summary: Alt
    endings: tuple[tuple[tuple[Alt, ...], str], ...]
    greet: bool
    casual: bool


_SCENE_KEYS = {"topic", "greet", "casual", "slots", "turns", "summary", "endings"}


def _alt(value: Any) -> Alt:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"a template must be a str or a non-empty list of str, not {value!r}")
    return value


def _scene(raw: dict, words: dict[str, list[str]]) -> _Scene:
    """The `_Scene` that ``raw``, an entry of ``scenes.json``, describes."""
    if set(raw) - _SCENE_KEYS:
        raise ValueError(f"unknown keys {sorted(set(raw) - _SCENE_KEYS)}")
    slots = {}
    for name, spec in raw["slots"].items():
        try:
            slots[name] = _sampler(spec, words)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"slot {name!r}: {_reason(e)}") from e
    endings = tuple((tuple(map(_alt, e["turns"])), e["summary"]) for e in raw.get("endings", ()))
    turns, summary = tuple(map(_alt, raw["turns"])), _alt(raw["summary"])
    greet, casual = bool(raw.get("greet", True)), bool(raw.get("casual", False))
    return _Scene(str(raw["topic"]), slots, turns, summary, endings, greet, casual)


def _reason(error: Exception) -> str:
    return f"missing key {error.args[0]!r}" if isinstance(error, KeyError) else str(error)


def _load_scenes() -> tuple[_Scene, ...]:
    """The scenes of ``scenes.json``, with the word lists of ``words.json``."""
    words = _read_json("words.json")
    for name, pool in words.items():
        if not isinstance(pool, list) or not all(isinstance(w, str) for w in pool):
            raise ValueError(f"{DATA_DIR / 'words.json'}: {name!r} must be a list of strings")
    scenes = []
    for i, raw in enumerate(_read_json("scenes.json")):
        try:
            scenes.append(_scene(raw, words))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            topic = raw.get("topic") if isinstance(raw, dict) else None
            where = f"{DATA_DIR / 'scenes.json'}: scene {i} ({topic!r})"
            raise ValueError(f"{where}: {_reason(e)}") from e
    return tuple(scenes)


SCENES: tuple[_Scene, ...] = _load_scenes()
TOPICS: tuple[str, ...] = tuple(scene.topic for scene in SCENES)
_PHRASES: dict[str, list] = _read_json("phrases.json")
_PHRASE_KEYS = (
    "openers", "casual_openers", "closing_chain", "casual_closing_chain", "rude_appositives",
    "rude_openers", "rude_closers",
)  # fmt: skip
if set(_PHRASE_KEYS) - set(_PHRASES):
    raise ValueError(f"{DATA_DIR / 'phrases.json'}: needs the keys {', '.join(_PHRASE_KEYS)}")


def _choose(rng: random.Random, alt: Alt) -> str:
    return alt if isinstance(alt, str) else rng.choice(alt)


def _draw_slots(scene: _Scene, rng: random.Random) -> _Slots:
    slots = _Slots()
    for name, sampler in scene.slots.items():
        value = sampler(rng, slots)
        if isinstance(value, dict):  # a sampler that binds several slots (``rows``)
            slots.update(value)
        else:
            slots[name] = value
    return slots


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
    ``summary``, ``topic``, ``is_toxic_variant`` and, when that is True, ``toxic_summary``.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    # An explicit integer mix rather than hash(): str hashes are salted per process.
    rng = random.Random(seed * 1_000_003 + index)
    scene = SCENES[rng.randrange(len(SCENES))]
    slots = _draw_slots(scene, rng)
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
