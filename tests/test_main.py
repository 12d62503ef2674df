"""`t5x-lite` end to end: each command once in a fresh process (one CPU device), on tiny models,
checked against references no one here wrote (transformers' PyTorch T5, sentencepiece's model
file) where one exists; the flags' wiring and one-line errors in process.

The models are built once per module: a random HF T5 directory with its own tokenizer, a second
tokenizer for `--tokenizer`, and a `t5x-lite train` workdir after two steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest
import torch
import transformers
from hf_reference import save_random_t5
from test_train import run_inprocess

from t5x_lite import checkpoint, completion, config, corpus, main, models
from t5x_lite import tokenizer as tk

ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
CONSOLE_SCRIPT = Path(sys.executable).parent / "t5x-lite"
PROMPTS = ["#Person1#: Hello, where is the bus station?", "Summarize: the train was late."]


def t5x_lite(*args) -> subprocess.CompletedProcess:
    """The installed `t5x-lite` console script (or `python -m t5x_lite`), run to completion."""
    cmd = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "t5x_lite"]
    result = subprocess.run(
        [*cmd, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def texts(root):
    """The embedded corpus's first dialogues, a text per line."""
    path = root / "texts.txt"
    rows = corpus.splits()["train"][:300]
    path.write_text("\n".join(r["dialogue"].replace("\n", " ") for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def hf_dir(root, texts):
    """A random HF T5 directory (vocabulary 300) with its own 300-id tokenizer; and the model."""
    tk.train(texts, root / "hf", vocab_size=200)
    ref = save_random_t5(
        root / "hf", vocab_size=300, feed_forward_proj="gated-gelu", tie_word_embeddings=False
    )
    return root / "hf", ref


@pytest.fixture(scope="module")
def other_tok(root, texts):
    """A second tokenizer, as large, that encodes the prompts differently from the directory's."""
    tk.train(texts, root / "other_tok", vocab_size=200, model_type="bpe")
    return root / "other_tok"


@pytest.fixture(scope="module")
def workdir(root):
    """A `t5x-lite train` workdir written here, on 8 devices: t5-tiny, span corruption, two
    steps, the shipped tokenizer."""
    init = checkpoint.save_model(
        root / "init", models.build(config.get_preset("t5-tiny"), seed=0)
    )  # starting from a saved model skips compiling the random init
    overrides = {"train.steps": 2, "checkpoint.every": 1000, "data.eval_split": ""}
    run_inprocess(root / "workdir", **overrides, **{"model.init_from": str(init)})
    return root / "workdir"


def test_memory_command():
    out = t5x_lite(
        "memory",
        "--config.objective.inputs_length=32",
        "--config.train.batch_size=8",
        "--config.model.dtype=bfloat16",
    ).stdout
    hf_config = transformers.T5Config(
        vocab_size=1024,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )  # t5-tiny
    with torch.device("meta"):
        tied = transformers.T5ForConditionalGeneration(hf_config).num_parameters()
    first = out.splitlines()[0]
    # transformers 5 ties T5's head; ours carries its own: one more V x D matrix.
    assert first.startswith(f"t5-tiny: {tied + 1024 * 64:,} parameters ({tied:,} with the LM head")
    assert "(1 devices); inputs 32," in first
    assert "XLA on cpu (compiled train step)" in out
    assert "note: XLA:CPU computes bfloat16 products in float32" in out
    xla_total = [line for line in out.splitlines() if line.strip().startswith("total")][-1]
    assert float(xla_total.split()[1]) > 0
    assert "FLOPs per step: analytic" in out


def test_tokenizer_train_command(tmp_path):
    """Both --field values feed the trainer; --model-type bpe reaches sentencepiece."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    rows = [
        {"dialogue": f"#Person1#: Hi {i}, is the bus late? ¤", "summary": f"A bus {i} §"}
        for i in range(200)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--input", data, "--field", "dialogue", "--field", "summary"]
    result = t5x_lite(*args, "--vocab-size", 60, "--out", out, "--model-type", "bpe")
    assert result.stdout.strip() == f"wrote {out}: 160 ids (60 pieces + 100 sentinels)"
    proto = pb.ModelProto()
    proto.ParseFromString((out / "spiece.model").read_bytes())
    assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert len(proto.pieces) == 60
    pieces = {p.piece for p in proto.pieces}
    assert "¤" in pieces and "§" in pieces  # a character of each field


def test_convert_command_with_architecture(hf_dir, root):
    """A T5ForConditionalGeneration directory converted as `--architecture encoder_only`: its
    encoder, as transformers computes it, and its tokenizer."""
    path, ref = hf_dir
    t5x_lite(
        "convert", "--from-hf", path, "--to", root / "encoder", "--architecture", "encoder_only"
    )
    model = checkpoint.load_model(root / "encoder")
    assert isinstance(model, models.EncoderOnly)
    ids = np.random.default_rng(0).integers(2, 300, (2, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        expected = ref.encoder(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    chex.assert_trees_all_close(np.asarray(model.encode(ids, mask)), expected, atol=1e-4)
    copied = root / "encoder" / "tokenizer" / "spiece.model"
    assert copied.read_bytes() == (path / "spiece.model").read_bytes()


def test_generate_command_matches_transformers(hf_dir, other_tok):
    """Greedy completions of a HF directory with `--tokenizer`: transformers' `generate` on the
    prompts as sentencepiece encodes them, its tokens, text and summed log-probabilities."""
    import sentencepiece as spm

    path, ref = hf_dir
    args = ["generate", "--model", path, "--tokenizer", other_tok, "--max-new-tokens", 6]
    result = t5x_lite(*args, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS

    sp = spm.SentencePieceProcessor(model_file=str(other_tok / "spiece.model"))
    tok = tk.load(other_tok)
    for prompt, row in zip(PROMPTS, rows, strict=True):
        ids = torch.tensor([sp.encode(prompt) + [sp.eos_id()]])
        with torch.no_grad():
            out = ref.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        tokens = out.sequences[0, 1:].tolist()  # after the decoder start token
        if 1 in tokens:
            tokens = tokens[: tokens.index(1) + 1]
        logprob = sum(
            torch.log_softmax(logits[0], -1)[t].item()
            for logits, t in zip(out.logits, tokens, strict=False)
        )
        assert row["num_tokens"] == len(tokens)
        assert row["completion"] == tok.decode([t for t in tokens if t != 1])
        np.testing.assert_allclose(row["logprob"], logprob, rtol=1e-4)


def test_icl_command_on_a_training_workdir(workdir, tmp_path):
    """A workdir written on 8 devices, read by a process with one, in bfloat16."""
    args = ["icl", "--model", workdir, "--dtype", "bfloat16", "--num-examples", 2]
    args += ["--shots", "0,1", "--max-new-tokens", 4, "--batch-size", 2, "--out", tmp_path]
    result = t5x_lite(*args)
    rows = [json.loads(line) for line in (tmp_path / "icl.jsonl").read_text().splitlines()]
    assert [r["shots"] for r in rows] == [0, 1]
    assert all(r["num_examples"] == 2 and r["max_new_tokens"] == 4 for r in rows)
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| shots | ROUGE-1 |") and len(table) == 4
    assert [line.split("|")[8].strip() for line in table[2:]] == ["2", "2"]  # examples


def test_generate_on_a_workdir_honours_dtype(workdir, capsys):
    """--dtype bfloat16 on a workdir: the bfloat16 model's completions, not the float32 one's."""
    argv = ["generate", "--model", str(workdir), "--dtype", "bfloat16", "--jsonl"]
    assert main.main([*argv, "--max-new-tokens", "5", "--prompt", PROMPTS[0]]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tok = tk.load(corpus.DEFAULT_TOKENIZER_DIR)  # the run's tokenizer.path: the shipped one

    def completed(dtype):
        model = checkpoint.load_model(workdir / "checkpoints", dtype=dtype)
        ids, _ = completion.encode_prompts(model, tok, PROMPTS[:1], max_input_length=512)
        (done,) = completion.complete(model, tok, ids, max_new_tokens=5)
        return done

    bf16, f32 = completed("bfloat16"), completed("float32")
    assert (row["completion"], row["num_tokens"]) == (bf16.text, len(bf16.tokens))
    np.testing.assert_allclose(row["logprob"], bf16.logprob, rtol=1e-6)
    assert abs(bf16.logprob - f32.logprob) > 1e-4  # the check can tell the two apart


def test_bad_input_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["t5x-lite", *argv])
        with pytest.raises(SystemExit) as exit_:
            main.run()
        return exit_.value.code, capsys.readouterr().err

    code, err = run("generate", "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert code == 2 and err.startswith("t5x-lite: error: no model at") and "Traceback" not in err
    code, err = run("convert", "--from-hf", "a", "--to-hf", "b")
    assert code == 2 and "convert goes --from-hf DIR --to DIR" in err
    code, err = run("icl", "--model", "m", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err

    # An error raised inside a library, not explained by us, keeps its traceback.
    def fails_inside_a_library(argv=None):
        json.loads("{")

    monkeypatch.setattr(main, "main", fails_inside_a_library)
    with pytest.raises(json.JSONDecodeError):
        main.run()
