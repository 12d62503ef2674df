"""Tests for t5x_lite.corpus: determinism, DialogSum format, toxic fraction, splits, variety,
summary faithfulness, and the shipped tokenizer."""

import json
import re

import pytest

from t5x_lite import config, corpus

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
    fields = {"fname", "dialogue", "summary", "topic", "is_toxic_variant"}
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
    assert corpus._CASUAL | corpus._SELF_GREETING <= set(corpus.TOPICS)  # no stale names
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


def test_shipped_tokenizer_is_up_to_date(tmp_path):
    """Regenerating it (python -m t5x_lite.corpus) gives the shipped bytes; fails when the
    templates change without a rebuild."""
    corpus.build_tokenizer(tmp_path)
    shipped = (corpus.DEFAULT_TOKENIZER_DIR / "spiece.model").read_bytes()
    assert (tmp_path / "spiece.model").read_bytes() == shipped
