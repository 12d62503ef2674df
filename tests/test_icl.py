"""The ICL evaluation: ROUGE against rouge-score itself, the batching pipeline, the CLI."""

import json

import numpy as np
import pytest
from rouge_score import rouge_scorer

from t5x_lite import checkpoint, config, corpus, decoding, icl, main, models, prompts

ROW_KEYS = {
    "shots", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "mean_shots_fit", "num_examples",
    "num_truncated", "num_skipped", "template", "max_length", "max_new_tokens", "min_new_tokens",
    "temperature",
    "top_k", "top_p", "num_beams", "length_penalty", "seed", "target_fields", "examples",
}  # fmt: skip
ECHO = prompts.Template("echo", "{summary}", "", truncate_field="summary")


def test_rouge_matches_rouge_score():
    predictions = [
        "The cats are sitting on the mat. A dog ran away!",
        "Person1 wants to buy a ticket to Boston for tomorrow.",
        "Nothing in common here",
        "The dog ran home. The cat sat down.",  # rougeLsum sees the sentences apart: 100
    ]
    references = [
        "The cat sat on the mat. Then the dog ran off quickly.",
        "#Person1# buys a train ticket to Boston. It leaves tomorrow morning.",
        "Completely different words entirely.",
        "The cat sat down. The dog ran home.",
    ]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    # rougeLsum wants one sentence per line; written out by hand here.
    lines = lambda text: text.replace(". ", ".\n").replace("! ", "!\n")
    pairs = list(zip(predictions, references, strict=True))
    want = {
        name: 100 * np.mean([scorer.score(r, p)[name].fmeasure for p, r in pairs])
        for name in ("rouge1", "rouge2", "rougeL")
    }
    want["rougeLsum"] = 100 * np.mean(
        [scorer.score(lines(r), lines(p))["rougeLsum"].fmeasure for p, r in pairs]
    )
    got = icl.rouge(predictions, references)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
    assert 0 < got["rouge1"] < 100 and got["rougeLsum"] > got["rougeL"]  # a non-trivial case
    assert icl.rouge(["a b c"], ["a b c"]) == dict.fromkeys(want, 100.0)
    with pytest.raises(ValueError, match="pair up"):
        icl.rouge(["a"], ["a", "b"])


def test_split_sentences():
    assert icl.split_sentences(" Hi there. How are you?  Fine!\nOK ") == (
        "Hi there.\nHow are you?\nFine!\nOK"
    )
    assert icl.split_sentences("3.5 dollars, e.g.x") == "3.5 dollars, e.g.x"


def _echo_generate(calls):
    """A stand-in for decoding.generate whose 'model' repeats its input (then EOS, pads)."""

    def generate(model, input_ids, *, attention_mask, max_new_tokens, eos_id, pad_id, **kw):
        input_ids = np.asarray(input_ids)
        calls.append((input_ids.shape, np.asarray(attention_mask), input_ids))
        out = np.full((input_ids.shape[0], max_new_tokens), pad_id, np.int32)
        width = min(input_ids.shape[1], max_new_tokens)
        out[:, :width] = input_ids[:, :width]
        return out, np.zeros(out.shape, np.float32)

    return generate


def test_evaluate_batches_pads_and_keeps_order(tok, tiny_t5, monkeypatch):
    calls = []
    monkeypatch.setattr(decoding, "generate", _echo_generate(calls))
    records = corpus.splits()["test"][:5]
    rows = icl.evaluate(
        tiny_t5, tok, records, shots=[0], template=ECHO, max_new_tokens=128, batch_size=2
    )
    # Every prediction is its own reference, so only a pipeline that kept rows apart and in
    # order (and cut them at EOS) scores 100.
    assert [rows[0][k] for k in icl.ROUGE_TYPES] == [100.0] * 4
    assert (rows[0]["num_examples"], rows[0]["num_skipped"]) == (5, 0)
    assert len(calls) == 3
    for shape, mask, input_ids in calls:
        assert shape[0] == 2  # a short last batch is filled up to the same shape
        np.testing.assert_array_equal(mask, input_ids != tok.pad_id)  # right-padded
        assert (mask[:, 0] == 1).all() and (np.diff(mask, axis=1) <= 0).all()


def test_evaluate_decoder_only_prompts_leave_room_and_lack_eos(tok, monkeypatch):
    calls = []
    monkeypatch.setattr(decoding, "generate", _echo_generate(calls))
    model = models.build(config.get_preset("decoder-tiny"), seed=0)
    records = corpus.splits()["test"][:3]
    icl.evaluate(model, tok, records, shots=[0], max_length=100, max_new_tokens=30)
    (_, mask, input_ids), *_ = calls
    lengths = mask.sum(axis=1)
    assert (lengths <= 100 - 30).all() and (lengths >= 100 - 30 - 3).all()  # truncated to fit
    assert (input_ids[np.arange(len(lengths)), lengths - 1] != tok.eos_id).all()


def test_evaluate_counts_skipped(tok, tiny_t5, monkeypatch):
    monkeypatch.setattr(decoding, "generate", _echo_generate([]))
    records = corpus.splits()["test"][:4]
    lengths = [len(tok.encode(r["summary"])) for r in records]
    limit = sorted(lengths)[1]  # the two shortest fit (ties may let more through)
    rows = icl.evaluate(
        tiny_t5,
        tok,
        records,
        shots=[0],
        template=ECHO,
        max_length=limit,
        max_new_tokens=128,
        on_overflow="skip",
    )
    skipped = sum(n > limit for n in lengths)
    assert (rows[0]["num_skipped"], rows[0]["num_examples"]) == (skipped, 4 - skipped)
    assert rows[0]["rouge1"] == 100.0
    rows = icl.evaluate(
        tiny_t5, tok, records, shots=[0], template=ECHO, max_length=3, on_overflow="skip"
    )
    assert rows[0]["num_skipped"] == 4 and rows[0]["rouge1"] is None
    assert "| 0 | - | - |" in icl.format_table(rows)


def test_evaluate_tiny_t5(tok, tiny_t5):
    records = corpus.splits()["test"][:3]
    rows = icl.evaluate(
        tiny_t5,
        tok,
        records,
        shots=(0, 1),
        pool=corpus.splits()["train"][:20],
        max_new_tokens=8,
        batch_size=2,
    )
    assert [r["shots"] for r in rows] == [0, 1]
    for row in rows:
        assert set(row) == ROW_KEYS
        for name in icl.ROUGE_TYPES:
            assert 0.0 <= row[name] <= 100.0
        assert 0 <= row["mean_shots_fit"] <= row["shots"]
        assert (row["num_examples"], row["num_skipped"]) == (3, 0)
        assert row["template"] == "summarize" and row["temperature"] == 0.0
    assert rows[0]["mean_shots_fit"] == 0
    table = icl.format_table(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("| shots | ROUGE-1 |")


def test_evaluate_rejects_missing_target(tok, tiny_t5):
    record = {"dialogue": "#Person1#: Hi.", "_position": "d.jsonl:1"}
    with pytest.raises(KeyError, match="d.jsonl:1 has no reference field 'summary'"):
        icl.evaluate(tiny_t5, tok, [record], shots=[0], pool=corpus.splits()["train"][:2])


def test_load_records_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"dialogue": f"#Person1#: Hi {i}.", "summary": f"Greeting {i}."} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, pool = icl.load_records(str(path), num_examples=2)
    assert [r["summary"] for r in records] == ["Greeting 0.", "Greeting 1."]
    assert len(pool) == 4
    path.write_text(json.dumps(rows[0]) + "\n{broken\n")
    with pytest.raises(ValueError, match="d.jsonl:2"):
        icl.load_records(str(path))
    with pytest.raises(ValueError, match="shots must be"):
        icl.parse_shots("0,x")
    assert icl.parse_shots("0,1,4") == [0, 1, 4]


def test_cli_writes_table(tmp_path, tiny_t5, capsys):
    ckpt = checkpoint.save_model(tmp_path / "ckpt", tiny_t5)
    out = tmp_path / "icl"
    argv = ["icl", "--model", str(ckpt), "--num-examples", "2", "--shots", "0,1"]
    argv += ["--max-new-tokens", "8", "--batch-size", "2", "--out", str(out)]
    assert main.main(argv) == 0
    rows = [json.loads(line) for line in (out / "icl.jsonl").read_text().splitlines()]
    assert [r["shots"] for r in rows] == [0, 1] and rows[0]["num_examples"] == 2
    markdown = (out / "icl.md").read_text()
    assert "| shots | ROUGE-1 |" in markdown and "template=summarize" in markdown
    printed = capsys.readouterr().out
    assert "| shots | ROUGE-1 |" in printed and str(out / "icl.md") in printed
    with pytest.raises(FileNotFoundError, match="t5x-lite train"):
        main.main(["icl", "--model", str(tmp_path / "missing")])


def test_several_references_score_the_best_match_per_type():
    """Multi-reference ROUGE is, per type, the best of the single-reference scores (what
    rouge-score's `score_multi` computes), here against rouge-score's single `score`."""
    scorer = rouge_scorer.RougeScorer(list(icl.ROUGE_TYPES), use_stemmer=True)
    prediction = "The cat sat on the mat. The dog ran."
    references = ["A cat sat on a mat.", "The dog ran away. A cat sat.", "Nothing alike"]
    got = icl.rouge_per_example([prediction], [references])[0]
    for name in icl.ROUGE_TYPES:
        best = max(
            scorer.score(icl.split_sentences(r), icl.split_sentences(prediction))[name].fmeasure
            for r in references
        )
        np.testing.assert_allclose(got[name], 100 * best, rtol=1e-12, err_msg=name)
    assert icl.rouge([prediction], [references]) == got


def test_templates_by_name_or_format_string():
    bare = prompts.get_template("bare")
    assert bare.render({"dialogue": "Hi", "summary": "S"}, with_answer=True) == "Hi S"
    custom = prompts.get_template("Dialogue: {dialogue}\nSummary:")
    assert custom.render({"dialogue": "Hi"}, with_answer=False) == "Dialogue: Hi\nSummary:"
    assert custom.truncate_field == "dialogue"
    with pytest.raises(ValueError, match="a name .* or a format string with {field}"):
        prompts.get_template("sumarize")


def test_cli_multi_reference_shots_from_training_and_predictions(tmp_path, tiny_t5, caplog):
    ckpt = checkpoint.save_model(tmp_path / "ckpt", tiny_t5)
    train = [{k: r[k] for k in ("dialogue", "summary")} for r in corpus.splits()["train"][:20]]
    test = [
        {"dialogue": r["dialogue"], **{f"summary{i}": f"{r['summary']} ({i})" for i in (1, 2, 3)}}
        for r in corpus.splits()["test"][:3]
    ]
    for name, rows in (("train", train), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "icl"
    argv = ["icl", "--model", str(ckpt), "--data", str(tmp_path / "test.jsonl"), "--shots", "0,1"]
    argv += ["--target-field", "summary1,summary2,summary3", "--template", "{dialogue} Summary:"]
    argv += ["--shots-from", str(tmp_path / "train.jsonl"), "--max-new-tokens", "4"]
    assert main.main([*argv, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["shots"], r["position"]) for r in rows] == [
        (k, f"{tmp_path / 'test.jsonl'}:{i + 1}") for k in (0, 1) for i in range(3)
    ]
    assert rows[0]["references"] == [test[0][f"summary{i}"] for i in (1, 2, 3)]
    for row in rows:
        want = icl.rouge_per_example([row["prediction"]], [row["references"]])[0]
        assert {k: row[k] for k in icl.ROUGE_TYPES} == want
    summary = [json.loads(line) for line in (out / "icl.jsonl").read_text().splitlines()]
    assert "examples" not in summary[0] and summary[0]["target_fields"][0] == "summary1"

    # One file and no --shots-from: its own records lend the shots, and the log says so.
    with caplog.at_level("WARNING", logger="t5x_lite.icl"):
        records, pool = icl.load_records(str(tmp_path / "train.jsonl"), split="test")
    assert pool == records and "pass --shots-from TRAIN_FILE" in caplog.text
