"""Prompts in, completions out: encoding limits, batching, and `t5x-lite generate`."""

import csv
import io
import json
import logging

import numpy as np
import pytest

from t5x_lite import checkpoint, completion, config, corpus, decoding, main, models


def test_long_prompts_are_truncated_or_rejected(tok, tiny_t5, caplog):
    model = tiny_t5
    text = corpus.splits()["test"][0]["dialogue"]
    full = tok.encode(text)
    with caplog.at_level(logging.WARNING):
        (ids,), n = completion.encode_prompts(model, tok, [text], max_input_length=20)
    assert n == 1 and "prompt 0 has" in caplog.text
    assert ids == full[:19] + [tok.eos_id]  # encoder-decoder: the start, still ending in EOS
    decoder = models.build(config.get_preset("decoder-tiny"), seed=0)
    (ids,), _ = completion.encode_prompts(decoder, tok, [text], max_input_length=20)
    assert ids == tok.encode(text, add_eos=False)[-20:]  # decoder-only: the end, no EOS
    with pytest.raises(ValueError, match=f"prompt 0 has {len(full)} tokens"):
        completion.encode_prompts(model, tok, [text], max_input_length=20, on_long_prompt="error")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        completion.encode_prompts(model, tok, ["hi", "  "], max_input_length=20)


def test_batched_completions_equal_one_prompt_at_a_time(tok, tiny_t5):
    model = tiny_t5
    texts = ["Summarize: the bus was late.", "Hello", "How much is a ticket to Boston?"]
    ids, _ = completion.encode_prompts(model, tok, texts, max_input_length=64)
    batched = completion.complete(model, tok, ids, batch_size=2, max_new_tokens=7)
    for row, got in zip(ids, batched, strict=True):
        tokens, logprobs = decoding.generate(model, np.array([row]), max_new_tokens=7)
        tokens, logprobs = np.asarray(tokens)[0].tolist(), np.asarray(logprobs)[0]
        n = tokens.index(1) + 1 if 1 in tokens else 7
        assert got.tokens == tokens[:n]
        assert got.text == tok.decode(tokens[: n - 1] if 1 in tokens else tokens)
        np.testing.assert_allclose(got.logprob, logprobs[:n].sum(), rtol=1e-5)


def test_generate_command(tok, tiny_t5, tmp_path, capsys, monkeypatch):
    model = tiny_t5
    ckpt = checkpoint.save_model(tmp_path / "ckpt", model)
    texts = ["Summarize: the bus was late.", "Hello"]
    ids, _ = completion.encode_prompts(model, tok, texts, max_input_length=512)
    want = [c.text for c in completion.complete(model, tok, ids, max_new_tokens=5)]
    flags = ["generate", "--model", str(ckpt), "--max-new-tokens", "5"]

    assert main.main([*flags, "--prompt", texts[0], "--prompt", texts[1]]) == 0
    assert capsys.readouterr().out.splitlines() == [f"[{i}] {w}" for i, w in enumerate(want)]

    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n\n")
    main.main([*flags, "--prompts-file", str(tmp_path / "p.txt"), "--jsonl"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == texts and [r["completion"] for r in rows] == want

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    main.main([*flags, "--prompts-file", str(tmp_path / "p.jsonl"), "--field", "text"])
    assert capsys.readouterr().out.splitlines() == [f"[{i}] {w}" for i, w in enumerate(want)]
    with pytest.raises(KeyError, match="no field 'dialogue'.*it has \\['text'\\]"):
        main.main([*flags, "--prompts-file", str(tmp_path / "p.jsonl")])
    # A CSV's prompts are its --field column, one per row, the header not among them.
    with open(tmp_path / "p.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "dialogue"], *enumerate(texts)])
    main.main([*flags, "--prompts-file", str(tmp_path / "p.csv"), "--field", "dialogue"])
    assert capsys.readouterr().out.splitlines() == [f"[{i}] {w}" for i, w in enumerate(want)]

    monkeypatch.setattr("sys.stdin", io.StringIO(texts[1] + "\n"))
    main.main(flags)
    assert capsys.readouterr().out.splitlines() == [want[1]]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(ValueError, match="no prompts"):
        main.main(flags)


def test_generate_command_checks_flags_before_loading(tmp_path):
    missing = str(tmp_path / "no-model")  # the flag error comes first, not "no model at"
    with pytest.raises(ValueError, match=r"--top-p must be in \(0, 1\]"):
        main.main(["generate", "--model", missing, "--prompt", "hi", "--top-p", "0"])
    with pytest.raises(ValueError, match="--num-beams must be >= 1"):
        main.main(["generate", "--model", missing, "--prompt", "hi", "--num-beams", "0"])
    argv = ["icl", "--model", missing, "--max-new-tokens", "5", "--min-new-tokens", "9"]
    with pytest.raises(ValueError, match=r"--min-new-tokens must be in \[0, --max-new-tokens=5\]"):
        main.main(argv)


def test_generate_caps_max_new_tokens_at_the_models_length(tiny_t5, tmp_path, capsys, caplog):
    ckpt = checkpoint.save_model(tmp_path / "ckpt", tiny_t5)
    flags = ["generate", "--model", str(ckpt), "--prompt", "Hello", "--jsonl"]
    with caplog.at_level(logging.WARNING, logger="t5x_lite.main"):
        assert main.main([*flags, "--max-new-tokens", "1000000"]) == 0
    assert "--max-new-tokens 1000000 is more than the tokenizer's model_max_length, 512" in (
        caplog.text
    )
    assert json.loads(capsys.readouterr().out)["num_tokens"] <= 512
