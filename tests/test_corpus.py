"""Tests for t5x_lite.corpus: determinism, DialogSum format, toxic fraction, splits, variety,
summary faithfulness, the data files and their errors, and the shipped tokenizer."""

import json
import re
import string

import pytest

from t5x_lite import config, corpus, scenes

TURN_RE = re.compile(r"#Person([12])#: \S")


@pytest.fixture(scope="module")
def data():
    return corpus.splits()


def _salient(summary: str) -> list[str]:
    """Numbers, and capitalised words that do not start a sentence (names, places, days)."""
    out = re.findall(r"\d+", summary.replace("#Person1#", "").replace("#Person2#", ""))
    for sentence in re.split(r"(?<=[.!?])\s+", summary):
        for word in sentence.split()[1:]:
            out += [w for w in re.findall(r"\b[A-Z][a-z]+\b", word) if w != "Person"]
    return out


def test_deterministic_and_independent_of_count():
    first = corpus.generate(60, seed=3)
    assert first == corpus.generate(60, seed=3)
    assert corpus.generate(25, seed=3) == first[:25]
    assert corpus.make_record(41, seed=3) == first[41]
    assert corpus.generate(60, seed=4) != first
    assert corpus.generate(0) == []
    with pytest.raises(ValueError):
        corpus.generate(-1)


def test_record_format(data):
    fields = {"fname", "dialogue", "summary", "topic", "is_toxic_variant", "noisy_summary"}
    for i, r in enumerate(data["train"]):
        assert set(r) - {"toxic_summary"} == fields
        assert r["fname"] == f"embedded_{i:05d}"
        lines = r["dialogue"].split("\n")
        assert corpus.MIN_TURNS <= len(lines) <= corpus.MAX_TURNS
        for j, line in enumerate(lines):
            match = TURN_RE.match(line)
            assert match and match.group(1) == str(j % 2 + 1), (r["fname"], line)
        assert r["summary"].strip() and r["topic"].strip()
        assert "#Person" in r["summary"]
        text = r["dialogue"] + r["summary"] + r.get("toxic_summary", "")
        assert "{" not in text and "}" not in text and "  " not in text


def test_toxic_fraction_is_exact():
    assert corpus.TOXIC_FRACTION == 0.2
    records = corpus.generate(103)
    for n in range(len(records) + 1):
        assert sum(r["is_toxic_variant"] for r in records[:n]) == round(n * 0.2)
    for r in records:
        assert r["is_toxic_variant"] == ("toxic_summary" in r)
        assert r["noisy_summary"] == r.get("toxic_summary", r["summary"])


def test_toxic_summary_is_rude_version_of_summary(data):
    toxic = [r for r in data["train"] if r["is_toxic_variant"]]
    assert len(toxic) == 400
    for r in toxic:
        rude, summary = r["toxic_summary"], r["summary"]
        assert rude != summary
        assert any(w in rude.lower() for w in corpus.INSULT_WORDS), rude
        assert not any(w in summary.lower() for w in corpus.INSULT_WORDS)
        # Same content, other tone: every number and name of the summary is kept.
        assert all(t in rude for t in _salient(summary))


def test_splits_disjoint_and_sized(data):
    assert {k: len(v) for k, v in data.items()} == corpus.SPLIT_SIZES
    names = [set(r["fname"] for r in v) for v in data.values()]
    assert sum(len(n) for n in names) == len(set().union(*names)) == 2400
    assert data["validation"][0] == corpus.make_record(2000)
    for split in ("validation", "test"):
        assert sum(r["is_toxic_variant"] for r in data[split]) == 40
    # Callers get copies: editing a record must not leak into the next call.
    data_again = corpus.splits()
    data_again["train"][0]["summary"] = "changed"
    assert corpus.splits()["train"][0]["summary"] != "changed"


def test_variety(data):
    train = data["train"]
    assert len(corpus.TOPICS) == len(set(corpus.TOPICS)) >= 40
    casual = {scene.topic for scene in corpus.SCENES if scene.casual}
    no_greeting = {scene.topic for scene in corpus.SCENES if not scene.greet}
    assert {"weather", "apology"} <= casual and {"haircut", "tech support"} <= no_greeting
    assert len({r["topic"] for r in train}) >= 40
    assert len({r["dialogue"] for r in train}) >= 0.9 * len(train)
    assert len({r["summary"] for r in train}) >= 0.9 * len(train)
    lengths = {len(r["dialogue"].split("\n")) for r in train}
    assert lengths == set(range(corpus.MIN_TURNS, corpus.MAX_TURNS + 1))


def test_summary_slots_come_from_dialogue(data):
    for r in data["train"]:
        salient = _salient(r["summary"])
        assert salient, r["summary"]
        missing = [t for t in salient if t not in r["dialogue"]]
        assert not missing, (missing, r["summary"], r["dialogue"])


def test_write_jsonl(tmp_path):
    records = corpus.generate(7)
    path = corpus.write_jsonl(records, tmp_path / "sub" / "c.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records


def test_shipped_tokenizer(tok, data):
    assert tok.vocab_size == 1024 == config.get_preset("t5-tiny").vocab_size
    assert tok.sp_vocab_size == 924
    assert tok.sentinel_id(0) == 1023
    texts = [r["dialogue"] for r in data["test"]] + [r["summary"] for r in data["test"]]
    ids = [i for text in texts for i in tok.encode(text)]
    assert ids.count(tok.unk_id) / len(ids) < 0.01
    dialogue = data["test"][0]["dialogue"]
    # T5's nmt_nfkc normaliser turns newlines into spaces.
    assert tok.decode(tok.encode(dialogue)) == dialogue.replace("\n", " ")


def _defined_slots(name: str, spec: dict) -> set[str]:
    """The slots a sampler of scenes.json sets: its own name, or the keys of its rows."""
    if "switch" in spec:
        return set().union(*(_defined_slots(name, case["draw"]) for case in spec["cases"]))
    return set(spec["keys"]) if "rows" in spec else {name}


def _used_slots(template: str) -> set[str]:
    """The slots a template names; ``{a_x}`` and ``{x_cap}`` name ``x``."""
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    return {f.removeprefix("a_").removesuffix("_cap") for f in fields}


def _read_slots(spec: dict) -> set[str]:
    """The earlier slots a sampler of scenes.json reads."""
    if "calc" in spec:
        return set(re.findall(r"[A-Za-z_]\w*", spec["calc"]))
    if "format" in spec:
        return _used_slots(spec["format"])
    if "other" in spec:
        return set(spec["than"]) | _read_slots(spec["other"])
    if "switch" in spec:
        return {spec["switch"]}.union(*(_read_slots(case["draw"]) for case in spec["cases"]))
    bounds = {b for b in spec.get("num", []) if isinstance(b, str)}
    return bounds | ({spec["ordinal"]} if "ordinal" in spec else set())


def test_data_files_load_and_templates_use_defined_slots():
    raw = json.loads((scenes.DATA_DIR / "scenes.json").read_text(encoding="utf-8"))
    words = json.loads((scenes.DATA_DIR / "words.json").read_text(encoding="utf-8"))
    assert [scene["topic"] for scene in raw] == list(corpus.TOPICS)
    assert words["WEEKDAYS"][0] == "Monday" and len(words["NAMES"]) == 50
    for scene in raw:
        defined: set[str] = set()
        for name, spec in scene["slots"].items():
            assert _read_slots(spec) <= defined, (scene["topic"], name, spec)
            defined |= _defined_slots(name, spec)
        templates = [scene["summary"], *scene["turns"]]
        for ending in scene.get("endings", []):
            templates += [ending["summary"], *ending["turns"]]
        templates += [v["format"] for v in scene["slots"].values() if "format" in v]
        for alt in templates:
            for template in [alt] if isinstance(alt, str) else alt:
                undefined = _used_slots(template) - defined
                assert not undefined, (scene["topic"], template, undefined)


def test_rude_phrases_each_hold_an_insult():
    phrases = json.loads((scenes.DATA_DIR / "phrases.json").read_text(encoding="utf-8"))
    for key in ("rude_appositives", "rude_openers", "rude_closers"):
        for phrase in phrases[key]:
            assert any(w in phrase.lower() for w in corpus.INSULT_WORDS), phrase


def test_calc_is_arithmetic_only():
    words = {"N": ["a"]}
    calc = scenes.sampler({"calc": "(p1 + p2) // 10 * 10 - 3"}, words)
    assert calc(None, {"p1": "17", "p2": "5"}) == "17"
    for expr in ("__import__('os').getcwd()", "p1 ** 2", "p1.real", "'a' * 3", "1 +"):
        with pytest.raises(ValueError, match="calc"):
            scenes.sampler({"calc": expr}, words)


def test_malformed_data_files_are_named(tmp_path):
    (tmp_path / "words.json").write_text('{"N": "abc"}')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'words.json'}: 'N' must be")):
        scenes.load_scenes(tmp_path)
    (tmp_path / "words.json").write_text('{"N": ["a"],')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'words.json'}: not valid JSON")):
        scenes.load_scenes(tmp_path)


@pytest.mark.parametrize(
    ("scene", "message"),
    [
        ({"topic": "t", "slots": {"x": {"pick": "NOPE"}}}, "slot 'x': missing key 'NOPE'"),
        ({"topic": "t", "slots": {"x": {"num": [1, 2], "pick": "N"}}}, "slot 'x': not a sampler"),
        ({"topic": "t", "slots": {"x": {"clock": [1, 2], "step": 3}}}, "slot 'x': not a sampler"),
        ({"topic": "t", "slots": {"x": {"rows": [["a"]], "keys": ["a", "b"]}}}, "slot 'x': rows"),
        ({"topic": "t", "slots": {}, "turns": ["hi"]}, "missing key 'summary'"),
        ({"topic": "t", "slots": {}, "turns": [[]], "summary": "s"}, "a template must be"),
        ({"topic": "t", "slot": {}}, "unknown keys \\['slot'\\]"),
    ],
)
def test_malformed_scene_names_file_scene_and_key(tmp_path, scene, message):
    (tmp_path / "words.json").write_text(json.dumps({"N": ["a", "b"]}))
    (tmp_path / "scenes.json").write_text(
        json.dumps([{"topic": "ok", "slots": {}, "turns": ["a"], "summary": "b"}, scene])
    )
    where = re.escape(f"{tmp_path / 'scenes.json'}: scene 1 ('t'): ")
    with pytest.raises(ValueError, match=where + message):
        scenes.load_scenes(tmp_path)
