"""`t5x-lite convert` both ways, checked against HF transformers' PyTorch model."""

import subprocess
import sys

import chex
import numpy as np
import torch
import transformers
from hf_reference import save_random_t5

from t5x_lite import checkpoint, main, models
from t5x_lite.tokenizer import train as train_tokenizer


def test_convert_hf_to_native_and_back(tmp_path):
    ref = save_random_t5(
        tmp_path / "hf", vocab_size=120, feed_forward_proj="gated-gelu", tie_word_embeddings=False
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            f"line {i} about {w} and {i * 7}" for i in range(300) for w in ("cats", "dogs", "tea")
        )
    )
    train_tokenizer(corpus, tmp_path / "hf", vocab_size=40)

    assert (
        main.main(["convert", "--from-hf", str(tmp_path / "hf"), "--to", str(tmp_path / "native")])
        == 0
    )
    native = checkpoint.load_model(tmp_path / "native")
    assert isinstance(native, models.EncoderDecoder)
    assert (tmp_path / "native" / "tokenizer" / "spiece.model").exists()

    ids = np.random.default_rng(0).integers(2, 120, (2, 8))
    dec = np.random.default_rng(1).integers(2, 120, (2, 5))
    with torch.no_grad():
        expected = ref(
            input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)
        ).logits.numpy()
    chex.assert_trees_all_close(np.asarray(native(ids, dec)), expected, atol=1e-4, rtol=1e-4)

    assert (
        main.main(
            ["convert", "--from", str(tmp_path / "native"), "--to-hf", str(tmp_path / "back")]
        )
        == 0
    )
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits
    chex.assert_trees_all_close(again.numpy(), expected, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "back" / "spiece.model").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "t5x_lite",
            "convert",
            "--from-hf",
            str(tmp_path / "missing"),
            "--to",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": ""},
    )
    assert result.returncode == 2
    assert "missing" in result.stderr and "config.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_native_checkpoint(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="does not exist: expected an Orbax checkpoint"):
        checkpoint.load_model(tmp_path / "nothing")
