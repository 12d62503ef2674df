"""Prompt templates and the few-shot builder: never over budget, shots dropped and counted."""

import logging
import random

import pytest

from t5x_lite import corpus, prompts

SUMMARIZE = "Summarize the following conversation."


@pytest.fixture(scope="module")
def splits():
    return corpus.splits()


def _flan_prompt(query, shots):
    """The FLAN dialogsum prompt written out by hand (shots, then the query)."""
    parts = [f"{SUMMARIZE}\n\n{s['dialogue']}\n\nSummary: {s['summary']}" for s in shots] + [
        f"{SUMMARIZE}\n\n{query['dialogue']}\n\nSummary:"
    ]
    return "\n\n\n".join(parts)


def test_never_exceeds_budget_over_random_budgets(tok, splits):
    rng = random.Random(0)
    for _ in range(60):
        query = rng.choice(splits["test"])
        shots = rng.sample(splits["train"], rng.randint(0, 4))
        max_length = rng.randint(40, 900)
        max_new_tokens = rng.choice([0, 0, 16])
        add_eos = rng.random() < 0.7
        p = prompts.build_prompt(
            "summarize",
            query,
            shots,
            tok,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            add_eos=add_eos,
        )
        assert len(p.ids) <= max_length - max_new_tokens
        assert p.ids == tok.encode(p.text, add_eos=add_eos)
        assert tok.encode(tok.decode(p.ids), add_eos=add_eos) == p.ids  # round trip
        assert (p.ids[-1] == tok.eos_id) == add_eos
        assert p.num_shots_requested == len(shots)
        assert p.text.count(SUMMARIZE) == p.num_shots_used + 1
        assert p.text.count("Summary: ") == p.num_shots_used  # one answer per shot used
        alone = len(tok.encode(_flan_prompt(query, []), add_eos=add_eos))
        assert p.truncated == (alone > max_length - max_new_tokens)
        if p.truncated:
            assert p.num_shots_used == 0


def test_all_shots_fit_exactly_at_their_length(tok, splits):
    query, shots = splits["test"][0], splits["train"][:3]
    n = len(tok.encode(_flan_prompt(query, shots)))
    p = prompts.build_prompt("summarize", query, shots, tok, max_length=n)
    assert p.text == _flan_prompt(query, shots)
    assert (p.num_shots_used, p.truncated, p.skipped) == (3, False, False)
    assert prompts.build_prompt("summarize", query, shots, tok, max_length=n - 1).num_shots_used < 3


def test_shot_that_does_not_fit_is_dropped_and_later_ones_tried(tok, splits):
    query, short_a, short_b = splits["test"][0], splits["train"][0], splits["train"][1]
    long_shot = dict(splits["train"][2], dialogue=" ".join([splits["train"][2]["dialogue"]] * 8))
    fits = len(tok.encode(_flan_prompt(query, [short_a, short_b])))
    assert len(tok.encode(_flan_prompt(query, [short_a, long_shot]))) > fits  # the premise
    p = prompts.build_prompt(
        "summarize", query, [short_a, long_shot, short_b], tok, max_length=fits
    )
    assert (p.num_shots_requested, p.num_shots_used) == (3, 2)
    assert p.text == _flan_prompt(query, [short_a, short_b])


def test_decoder_only_budget_keeps_room_for_generation(tok, splits):
    query, shots = splits["test"][1], splits["train"][:2]
    n = len(tok.encode(_flan_prompt(query, shots), add_eos=False))
    p = prompts.build_prompt(
        "summarize", query, shots, tok, max_length=n + 10, max_new_tokens=10, add_eos=False
    )
    assert p.num_shots_used == 2 and tok.eos_id not in p.ids
    p = prompts.build_prompt(
        "summarize", query, shots, tok, max_length=n + 10, max_new_tokens=11, add_eos=False
    )
    assert p.num_shots_used < 2
    with pytest.raises(ValueError, match="no room"):
        prompts.build_prompt("summarize", query, [], tok, max_length=10, max_new_tokens=10)


def test_query_over_window_is_truncated_with_one_warning(tok, splits, caplog):
    query = splits["test"][3]
    alone = len(tok.encode(_flan_prompt(query, [])))
    max_length = alone // 2
    with caplog.at_level(logging.WARNING, logger="t5x_lite.prompts"):
        p = prompts.build_prompt(
            "summarize", query, splits["train"][:2], tok, max_length=max_length
        )
    assert p.truncated and not p.skipped
    assert max_length - 3 <= len(p.ids) <= max_length  # cut to fit, not far below
    assert (p.num_shots_requested, p.num_shots_used) == (2, 0)
    assert p.text.startswith(f"{SUMMARIZE}\n\n#Person1#:") and p.text.endswith("\n\nSummary:")
    kept = " ".join(p.text[len(SUMMARIZE) : -len("Summary:")].split())
    assert " ".join(tok.decode(tok.encode(query["dialogue"])).split()).startswith(kept)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and query["fname"] in warnings[0].getMessage()


def test_overflow_error_names_record_and_sizes(tok, splits):
    query = splits["test"][3]
    alone = len(tok.encode(_flan_prompt(query, [])))
    with pytest.raises(ValueError) as e:
        prompts.build_prompt("summarize", query, [], tok, max_length=50, on_overflow="error")
    message = str(e.value)
    assert query["fname"] in message and f"is {alone} tokens" in message
    assert "window is 50" in message


def test_overflow_skip(tok, splits):
    p = prompts.build_prompt(
        "summarize", splits["test"][3], splits["train"][:1], tok, max_length=50, on_overflow="skip"
    )
    assert p.skipped and not p.truncated and p.ids == [] and p.num_shots_used == 0
    with pytest.raises(ValueError, match="on_overflow"):
        prompts.build_prompt(
            "summarize", splits["test"][3], [], tok, max_length=50, on_overflow="x"
        )


def test_template_alone_over_window_is_an_error(tok, splits):
    with pytest.raises(ValueError, match="template 'summarize' alone"):
        prompts.build_prompt("summarize", splits["test"][0], [], tok, max_length=5)


def test_missing_field_names_template_field_and_fields(tok, splits):
    record = {"text": "hello", "summary": "hi", "_position": "x.jsonl:3"}
    with pytest.raises(KeyError) as e:
        prompts.build_prompt("summarize", record, [], tok, max_length=100)
    message = str(e.value)
    assert "'summarize'" in message and "'dialogue'" in message and "x.jsonl:3" in message
    assert "['summary', 'text']" in message  # the record's fields, private keys left out
    shot = {"dialogue": "#Person1#: Hi."}  # a shot also needs its answer
    with pytest.raises(KeyError, match="'summary'"):
        prompts.build_prompt("summarize", splits["test"][0], [shot], tok, max_length=500)


def test_templates(tok):
    assert {"summarize", "summarize_short", "sentiment"} <= set(prompts.TEMPLATES)
    review = {"text": "Great phone, battery lasts for days.", "label": "positive"}
    shot = {"text": "Broke after a week.", "label": "negative"}
    p = prompts.build_prompt("sentiment", review, [shot], tok, max_length=200)
    assert p.text == (
        "Classify this review: Broke after a week.\nSentiment: negative\n\n"
        "Classify this review: Great phone, battery lasts for days.\nSentiment:"
    )
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        prompts.get_template("nope")
    with pytest.raises(ValueError, match="truncate_field"):
        prompts.Template("bad", "{a}", " {b}", truncate_field="c")


def test_select_shots_excludes_query_and_is_deterministic(splits):
    pool = splits["train"][:6]
    query = pool[2]
    copy = dict(query, _position="elsewhere.jsonl:9")  # same record read from another place
    draws = [prompts.select_shots([*pool, copy], 5, seed=s, exclude=query) for s in range(30)]
    for draw in draws:
        assert query["fname"] not in [r["fname"] for r in draw]
        assert len({r["fname"] for r in draw}) == 5
    assert prompts.select_shots(pool, 3, seed=7, exclude=query) == prompts.select_shots(
        pool, 3, seed=7, exclude=query
    )
    assert len({tuple(r["fname"] for r in d) for d in draws}) > 1  # the seed matters
    assert prompts.select_shots(pool, 0, seed=0) == []
    with pytest.raises(ValueError, match="cannot draw 6 shots from a pool of 5"):
        prompts.select_shots(pool, 6, seed=0, exclude=query)
