"""The researcher's own-data journey end to end, on a JSONL corpus this test writes: train a
tokenizer, pre-train a model sized from it, fine-tune from that workdir with eval on a held-out
file, generate from another directory, export to Hugging Face and read the export back with
transformers, whose greedy output must equal ours token for token."""

import json
import logging
import os
import subprocess
import sys

import chex
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from test_train import logged, run_inprocess, tiny_overrides

import objectives
from t5x_lite import checkpoint, corpus, main, tokenizer, train


def _corpus(n: int) -> list[dict]:
    """Embedded-corpus dialogues, each with a line of made-up place names: a vocabulary wide
    enough for 2,000 pieces."""
    rng = np.random.default_rng(0)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    rows = []
    for r in corpus.generate(n):
        places = " and ".join("".join(rng.choice(syllables, 3)).title() for _ in range(3))
        dialogue = f"{r['dialogue']}\n#Person1#: I flew via {places}."
        rows.append({"dialogue": dialogue, "summary": r["summary"]})
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
def test_own_corpus_to_hugging_face_and_back(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    rows = _corpus(2400)
    _write_jsonl(tmp_path / "train.jsonl", rows[:2200])
    _write_jsonl(tmp_path / "valid.jsonl", rows[2200:])

    # 1. A 2,000-piece tokenizer on the corpus (2,100 ids with the sentinels).
    argv = ["tokenizer", "train", "--input", "train.jsonl", "--field", "dialogue"]
    assert main.main([*argv, "--field", "summary", "--vocab-size", "2000", "--out", "tok"]) == 0
    tok = tokenizer.load("tok")
    assert tok.vocab_size == 2100

    # 2. Pre-train three layers sized from it: no vocabulary flag, eval off (one file) and said.
    data = {"data.source": "jsonl", "data.path": "train.jsonl", "train.steps": 6}
    with caplog.at_level(logging.INFO, logger="t5x_lite.train"):
        run_inprocess("pt", **data, **{"tokenizer.path": "tok", "model.num_layers": 3})
    assert "eval is off: data.path=train.jsonl is one file" in caplog.text
    assert tokenizer.load("pt/tokenizer").checksum == tok.checksum  # the workdir keeps it

    # 3. Fine-tune from the workdir: its tokenizer comes along; eval on the held-out file.
    finetune = {
        "model.init_from": "pt",
        "objective.name": "seq2seq",
        "objective.targets_length": 16,
        "data.eval_path": "valid.jsonl",
        "train.eval_every": 3,
        "checkpoint.every": 3,
    }
    # The state fine-tuning starts from holds the pre-trained weights, read into its shardings.
    config = objectives.load_config(None, tiny_overrides(**data, **finetune))
    program = train.make_program(config, objectives.get("seq2seq"), vocab_size=tok.vocab_size)
    start, _ = nnx.merge(program.graphdef, train.init_state(program, config))
    chex.assert_trees_all_equal(
        checkpoint.params_of(start), checkpoint.params_of(checkpoint.load_model("pt/checkpoints"))
    )
    run_inprocess("ft", **data, **finetune)
    assert [r["step"] for r in logged("ft") if "eval_loss" in r] == [3, 6]
    assert tokenizer.load("ft/tokenizer").checksum == tok.checksum

    # 4. Generate from another working directory (a fresh process).
    (tmp_path / "elsewhere").mkdir()
    prompts = [rows[2300]["dialogue"], rows[2301]["dialogue"]]
    cmd = [sys.executable, "-m", "t5x_lite", "generate", "--model", str(tmp_path / "ft")]
    result = subprocess.run(
        [*cmd, "--prompt", prompts[0], "--prompt", prompts[1], "--max-new-tokens", "8", "--jsonl"],
        cwd=tmp_path / "elsewhere",
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = [json.loads(line) for line in result.stdout.splitlines()]

    # 5. Export the workdir; transformers loads model and tokenizer without a warning.
    assert main.main(["convert", "--from", "ft", "--to-hf", "hf"]) == 0
    transformers.logging.set_verbosity_warning()
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
        hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf")
    # transformers >= 5 forces T5Config.tie_word_embeddings to True and reads the saved False
    # as "do not scale the decoder output"; for any untied (v1.1 / Flan) checkpoint, Google's
    # included, it then notes that it keeps lm_head apart. That note is the one warning allowed.
    untied_note = "both are present in the checkpoints with different values, so we will NOT tie"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [w for w in warnings if untied_note not in w] == [], warnings
    assert len(hf_tok) == tok.vocab_size
    for prompt, row in zip(prompts, ours, strict=True):
        ids = hf_tok(prompt).input_ids
        assert ids == tok.encode(prompt)
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=8, do_sample=False, num_beams=1
            )
        theirs = out[0, 1:].tolist()  # after the decoder start token
        theirs = theirs[: theirs.index(1) + 1] if 1 in theirs else theirs
        np.testing.assert_array_equal(row["tokens"], theirs)
        assert row["completion"] == hf_tok.decode(theirs, skip_special_tokens=True)
