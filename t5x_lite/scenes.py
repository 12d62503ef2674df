"""The scene files of the embedded corpus (``assets/corpus/*.json``): read, check, build.

``assets/corpus/README.md`` describes the format. A scene's ``slots`` are sampler specs
(``{"pick": "NAMES"}``, ``{"clock": [17, 21]}``, ``{"calc": "p1 + p2"}``, ...); `sampler`
turns one into a function ``(rng, slots) -> value``. `load_scenes` reads and checks every
scene, naming the file, the scene and the key of the first mistake; `t5x_lite.corpus` draws
the records from what it returns.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import operator
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "assets" / "corpus"

Alt = str | tuple[str, ...]  # one template, or alternative phrasings of it
Sampler = Callable[[random.Random, dict], Any]

PHRASE_KEYS = (
    "openers", "casual_openers", "closing_chain", "casual_closing_chain", "rude_appositives",
    "rude_openers", "rude_closers",
)  # fmt: skip


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e


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


def sampler(spec: dict, words: dict[str, list[str]]) -> Sampler:
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
        return _other(sampler(arg, words), (than,) if isinstance(than, str) else tuple(than))
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
    cases = [(case.get("at_least"), sampler(case["draw"], words)) for case in spec["cases"]]
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


class Slots(dict):
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
class Scene:
    """A scene of ``scenes.json`` with its samplers built; ``endings`` holds ``(turns, summary
    sentence)`` pairs."""

    topic: str
    slots: dict[str, Sampler]
    turns: tuple[Alt, ...]
    summary: Alt
    endings: tuple[tuple[tuple[Alt, ...], str], ...]
    greet: bool
    casual: bool

    def draw_slots(self, rng: random.Random) -> Slots:
        """Every slot's value, drawn in the order the scene defines them."""
        slots = Slots()
        for name, sample in self.slots.items():
            value = sample(rng, slots)
            if isinstance(value, dict):  # a sampler that binds several slots (``rows``)
                slots.update(value)
            else:
                slots[name] = value
        return slots


_SCENE_KEYS = {"topic", "greet", "casual", "slots", "turns", "summary", "endings"}


def _alt(value: Any) -> Alt:
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"a template must be a str or a non-empty list of str, not {value!r}")
    return value


def _scene(raw: dict, words: dict[str, list[str]]) -> Scene:
    """The `Scene` that ``raw``, an entry of ``scenes.json``, describes."""
    if set(raw) - _SCENE_KEYS:
        raise ValueError(f"unknown keys {sorted(set(raw) - _SCENE_KEYS)}")
    slots = {}
    for name, spec in raw["slots"].items():
        try:
            slots[name] = sampler(spec, words)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"slot {name!r}: {_reason(e)}") from e
    endings = tuple((tuple(map(_alt, e["turns"])), e["summary"]) for e in raw.get("endings", ()))
    turns, summary = tuple(map(_alt, raw["turns"])), _alt(raw["summary"])
    greet, casual = bool(raw.get("greet", True)), bool(raw.get("casual", False))
    return Scene(str(raw["topic"]), slots, turns, summary, endings, greet, casual)


def _reason(error: Exception) -> str:
    return f"missing key {error.args[0]!r}" if isinstance(error, KeyError) else str(error)


def load_scenes(data_dir: Path = DATA_DIR) -> tuple[Scene, ...]:
    """The scenes of ``data_dir/scenes.json``, with the word lists of ``words.json``."""
    words = _read_json(data_dir / "words.json")
    for name, pool in words.items():
        if not isinstance(pool, list) or not all(isinstance(w, str) for w in pool):
            raise ValueError(f"{data_dir / 'words.json'}: {name!r} must be a list of strings")
    scenes = []
    for i, raw in enumerate(_read_json(data_dir / "scenes.json")):
        try:
            scenes.append(_scene(raw, words))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            topic = raw.get("topic") if isinstance(raw, dict) else None
            where = f"{data_dir / 'scenes.json'}: scene {i} ({topic!r})"
            raise ValueError(f"{where}: {_reason(e)}") from e
    return tuple(scenes)


def load_phrases(data_dir: Path = DATA_DIR) -> dict[str, list]:
    """The generic turns and rude phrases of ``data_dir/phrases.json``."""
    phrases = _read_json(data_dir / "phrases.json")
    if not isinstance(phrases, dict) or set(PHRASE_KEYS) - set(phrases):
        raise ValueError(f"{data_dir / 'phrases.json'}: needs the keys {', '.join(PHRASE_KEYS)}")
    return phrases
