"""Tests for t5x_lite.tokenizer, checked against transformers' T5Tokenizer on the same files.

transformers 5.x has no sentencepiece-backed T5 class: ``T5Tokenizer`` is the `tokenizers`-backed
one, and it only converts ``spiece.model`` when built with ``from_pretrained(directory)``.
"""

import csv
import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from t5x_lite import corpus
from t5x_lite import tokenizer as tk

transformers = pytest.importorskip("transformers")

SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "ri", "go", "ba", "ne"]
NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
VERBS = ["likes", "wants", "needs", "buys", "sells", "sees", "finds", "makes", "brings", "cooks"]
THINGS = ["apples", "books", "a car", "the house", "coffee", "tea", "music", "pizza", "flowers"]
SP_VOCAB = 400


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS + [_word(rng) for _ in range(3)])
        dialogue = (
            f"#Person1#: Hi {b}, do you {rng.choice(VERBS)} {thing}?\n"
            f"#Person2#: Yes {a}, I {rng.choice(VERBS)} {_word(rng)} {_word(rng)} "
            f"{rng.randint(0, 99)} times a week!\n#Person1#: Why? {_word(rng).capitalize()}."
        )
        summary = f"{b} {rng.choice(VERBS)} {thing} and {_word(rng)}."
        out.append({"id": len(out), "dialogue": dialogue, "summary": summary})
    return out


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.jsonl"
    _write_jsonl(corpus, _records(600))
    tok = tk.train(corpus, root / "out", vocab_size=SP_VOCAB, field=["dialogue", "summary"])
    return tok, root


@pytest.fixture(scope="module")
def tok(trained):
    return trained[0]


@pytest.fixture(scope="module")
def out_dir(trained):
    return trained[1] / "out"


@pytest.fixture(scope="module")
def hf(out_dir):
    return transformers.T5Tokenizer.from_pretrained(str(out_dir))


# Texts that both tokenizers must agree on. Several use sentencepiece's normalisation (extra
# spaces, newlines, full-width letters) and characters outside the trained vocab (-> unk).
TEXTS = [
    "Hi Bob, do you like coffee?",
    "#Person1#: Hi.\n#Person2#: Hello.",
    "  lots   of\tspace  ",
    "Ｆｕｌｌ width and unknown chars: zqx ✓ 日本",
    "",
    "Thank you <extra_id_0> me to your party <extra_id_1> week.",
    "<extra_id_0> for inviting <extra_id_1> last <extra_id_2>",
    "Hello<extra_id_0>world",
    "Hi <extra_id_0>. Bob <extra_id_99>",
    "a <extra_id_3><extra_id_4>   <extra_id_5> b",
    "<extra_id_7>",
    "  <extra_id_0>  ",
]


def test_special_ids_and_vocab_size(tok, hf):
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2)
    assert tok.sp_vocab_size == SP_VOCAB
    assert tok.num_sentinels == 100
    assert tok.vocab_size == SP_VOCAB + 100 == len(hf)


def test_sentinels_match_transformers(tok, hf):
    assert tok.sentinel_id(0) == tok.vocab_size - 1
    assert tok.sentinel_id(99) == tok.vocab_size - 100
    expected = hf.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert [tok.sentinel_id(i) for i in range(100)] == expected
    assert all(tok.is_sentinel(i) for i in expected)
    assert not any(tok.is_sentinel(i) for i in (0, 1, 2, SP_VOCAB - 1, tok.vocab_size))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok, hf, text):
    assert tok.encode(text) == hf(text).input_ids
    assert tok.encode(text, add_eos=False) == hf(text, add_special_tokens=False).input_ids


def test_encode_matches_transformers_on_random_strings(tok, hf):
    # Mixes whitespace variants, characters sentencepiece normalises or does not know, literal
    # "▁" and sentinel markers in every arrangement.
    atoms = ["a", "Bob", "Hi", " ", "  ", "\n", "\t", ".", "#", "?", "é", "Ｆ", "½", "日", "ﬁ"]
    atoms += ["\u00a0", "\u3000", "\u200b", "▁", "<", ">", "_", "12", "<extra_id_0>"]
    atoms += ["<extra_id_42>", "<extra_id_99>"]
    rng = random.Random(1234)
    texts = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 12))) for _ in range(300)]
    assert [tok.encode(t) for t in texts] == [hf(t).input_ids for t in texts]


@pytest.mark.parametrize("max_length", [1, 3, 8])
def test_truncation_matches_transformers(tok, hf, max_length):
    text = TEXTS[5]
    ours = tok.encode(text, max_length=max_length)
    ref = hf(text, truncation=True, max_length=max_length).input_ids
    assert ours == ref
    assert ours[-1] == tok.eos_id
    ours = tok.encode(text, add_eos=False, max_length=max_length)
    ref = hf(text, add_special_tokens=False, truncation=True, max_length=max_length).input_ids
    assert ours == ref


def test_literal_special_strings_are_plain_text(tok):
    # Deliberate difference from transformers (which turns a literal "</s>" into EOS): as in
    # T5/seqio, text is spelled out by sentencepiece itself.
    text = "a </s> b <pad>"
    assert tok.encode(text, add_eos=False) == tok.sp_model.encode(text)
    assert tok.eos_id not in tok.encode(text, add_eos=False)


def test_unknown_sentinel_marker_raises(tok):
    with pytest.raises(ValueError, match=r"<extra_id_100>.*<extra_id_99>"):
        tok.encode("x <extra_id_100> y")
    with pytest.raises(ValueError, match="extra_id_07"):
        tok.encode("x <extra_id_07> y")


@pytest.mark.parametrize(
    "text",
    [
        "Hi Bob, do you like coffee?",
        "#Person1#: Hi Eve. #Person2#: Yes, I like tea 42 times a week!",
        "Thank you <extra_id_0> me to your party <extra_id_1> week.",
        "<extra_id_0> for inviting <extra_id_1> last <extra_id_2>",
    ],
)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", [TEXTS[0], TEXTS[1], TEXTS[2]])
def test_decode_matches_transformers_on_plain_text(tok, hf, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_decode_special_tokens(tok):
    ids = tok.encode("Hi Bob") + [0, 0]
    assert tok.decode(ids) == "Hi Bob"
    assert tok.decode(ids, skip_special_tokens=False) == "Hi Bob</s><pad><pad>"
    # sentinels stay visible even when special tokens are skipped
    assert tok.decode([tok.sentinel_id(4), 0]) == "<extra_id_4>"
    assert tok.decode(np.array([tok.sentinel_id(0), 1], dtype=np.int32)) == "<extra_id_0>"


@pytest.mark.parametrize("bad", [lambda t: t.vocab_size, lambda t: t.vocab_size + 7, lambda t: -1])
def test_decode_rejects_out_of_range_ids(tok, bad):
    bad_id = bad(tok)
    with pytest.raises(ValueError, match=rf"{bad_id}.*vocab size {tok.vocab_size}"):
        tok.decode([5, bad_id])


def test_encode_batch_longest_matches_transformers(tok, hf):
    texts = [TEXTS[0], TEXTS[5], "", "Bob"]
    batch = tok.encode_batch(texts)
    ref = hf(texts, padding="longest", return_tensors="np")
    assert batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == np.int32
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["num_truncated"] == 0


def test_encode_batch_max_length_truncates_and_pads(tok, hf):
    texts = [TEXTS[0], TEXTS[5], "", "Bob"]
    max_length = 9
    full_lengths = [len(hf(t).input_ids) for t in texts]
    batch = tok.encode_batch(texts, max_length=max_length, padding="max_length")
    ref = hf(
        texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np"
    )
    assert batch["input_ids"].shape == (4, max_length)
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["num_truncated"] == sum(n > max_length for n in full_lengths) == 2

    longest = tok.encode_batch(["Bob", "Eve"], max_length=max_length)
    assert longest["input_ids"].shape == (2, len(hf("Bob").input_ids))

    ragged = tok.encode_batch(texts, max_length=max_length, padding="do_not_pad")
    assert [len(r) for r in ragged["input_ids"]] == [min(n, max_length) for n in full_lengths]
    assert [r.sum() for r in ragged["attention_mask"]] == [len(r) for r in ragged["input_ids"]]

    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(texts, padding="max_length")
    with pytest.raises(ValueError, match="padding"):
        tok.encode_batch(texts, padding="left")
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")


def test_decode_batch_stops_at_eos(tok, hf):
    texts = ["Hi Bob, do you like coffee?", "Eve likes tea."]
    ids = tok.encode_batch(texts)["input_ids"]
    # junk after EOS (as a model keeps generating) must be ignored
    ids = np.concatenate([ids, np.full((2, 3), 5, dtype=np.int32)], axis=1)
    expected = [hf.decode(hf(t).input_ids, skip_special_tokens=True) for t in texts]
    assert tok.decode_batch(ids) == expected == texts


def _pieces(t: tk.Tokenizer) -> list[str]:
    return [t.sp_model.id_to_piece(i) for i in range(t.sp_vocab_size)]


def test_save_and_reload(tok, out_dir, tmp_path):
    config = json.loads((out_dir / "tokenizer_config.json").read_text())
    assert config["extra_ids"] == 100
    assert config["tokenizer_class"] == "T5Tokenizer"
    assert config["model_max_length"] == 512
    assert (config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert config["additional_special_tokens"] == [f"<extra_id_{i}>" for i in range(100)]
    special = json.loads((out_dir / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "</s>" and len(special["additional_special_tokens"]) == 100

    from_dir = tk.load(out_dir)
    from_file = tk.load(out_dir / "spiece.model")
    hf_layout = tmp_path / "hf_layout"
    hf_layout.mkdir()
    shutil.copy(out_dir / "spiece.model", hf_layout / "tokenizer.model")
    from_tokenizer_model = tk.load(str(hf_layout))
    resaved = tk.load(from_file.save(tmp_path / "resaved"))
    for other in (from_dir, from_file, from_tokenizer_model, resaved):
        assert other.vocab_size == tok.vocab_size
        assert _pieces(other) == _pieces(tok)
        for text in TEXTS:
            assert other.encode(text) == tok.encode(text)
    assert (tmp_path / "resaved" / "spiece.model").read_bytes() == (
        out_dir / "spiece.model"
    ).read_bytes()


def test_extra_ids_from_config(tok, tmp_path):
    small = tk.Tokenizer(tok.sp_model, extra_ids=10)
    small.save(tmp_path)
    loaded = tk.load(tmp_path)
    assert loaded.num_sentinels == 10 and loaded.vocab_size == SP_VOCAB + 10
    ref = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
    assert len(ref) == loaded.vocab_size
    expected = ref.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(10)])
    assert [loaded.sentinel_id(i) for i in range(10)] == expected
    text = "Hi <extra_id_0> coffee <extra_id_9>"
    assert loaded.encode(text) == ref(text).input_ids


def test_training_is_deterministic(trained, tmp_path):
    _, root = trained
    again = tk.train(
        root / "corpus.jsonl", tmp_path, vocab_size=SP_VOCAB, field=["dialogue", "summary"]
    )
    assert (tmp_path / "spiece.model").read_bytes() == (root / "out" / "spiece.model").read_bytes()
    assert _pieces(again) == _pieces(trained[0])


def test_train_on_txt_and_dialogue_handling(tmp_path):
    corpus = tmp_path / "corpus.txt"
    lines = [r["dialogue"].replace("\n", " ") for r in _records(300, seed=1)]
    corpus.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    tok = tk.train(corpus, tmp_path / "out", vocab_size=200, max_sentences=250, seed=3)
    assert tok.sp_vocab_size == 200 and tok.vocab_size == 300
    sp = tok.sp_model
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    # "#" and the digits were seen in training, so the speaker tags contain no unknowns,
    # and a newline reads as a space (as in T5).
    dialogue = "#Person1#: Hi Bob.\n#Person2#: Hello."
    ids = tok.encode(dialogue, add_eos=False)
    assert tok.unk_id not in ids
    assert ids == tok.encode(dialogue.replace("\n", " "), add_eos=False)
    assert tok.decode(ids) == dialogue.replace("\n", " ")


def test_train_bpe(trained, tmp_path):
    """model_type="bpe": a BPE model with T5's special ids; our encode is sentencepiece's own,
    with sentinels on top and EOS appended."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    _, root = trained
    tok = tk.train(
        root / "corpus.jsonl",
        tmp_path,
        vocab_size=SP_VOCAB,
        field=["dialogue", "summary"],
        model_type="bpe",
    )
    proto = pb.ModelProto()
    proto.ParseFromString((tmp_path / "spiece.model").read_bytes())
    assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert tk.load(tmp_path).vocab_size == tok.vocab_size == SP_VOCAB + 100
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    text = "Hi Bob, do you like coffee? Yes, I like tea 42 times a week!"
    assert tok.encode(text) == sp.encode(text) + [1]
    assert tok.decode(tok.encode(text)) == text
    with_sentinels = "Thank you <extra_id_0> me to your party <extra_id_1> week."
    ids = tok.encode(with_sentinels)
    assert tok.sentinel_id(0) in ids and tok.sentinel_id(1) in ids
    assert tok.decode(ids) == with_sentinels


def test_max_sentences_sample_is_seeded_and_in_file_order():
    texts = [f"text {i}" for i in range(1000)]
    sample = tk._sample(iter(texts), 50, seed=0)
    assert len(sample) == 50 and len(set(sample)) == 50
    assert sample == sorted(sample, key=texts.index)
    assert sample == tk._sample(iter(texts), 50, seed=0)
    assert sample != tk._sample(iter(texts), 50, seed=1)
    assert tk._sample(iter(texts[:10]), 50, seed=0) == texts[:10]


# ------------------------------------------------------------------------- bad input


def test_sentinel_id_out_of_range(tok):
    for bad in (100, -1):
        with pytest.raises(ValueError, match=rf"{bad}.*0\.\.99"):
            tok.sentinel_id(bad)


def test_load_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "spiece.model"
    with pytest.raises(FileNotFoundError, match="nope") as err:
        tk.load(missing)
    assert str(missing) in str(err.value)
    assert ".model" in str(err.value) and "spiece.model" in str(err.value)


def test_load_dir_with_only_fast_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="SentencePiece model file is needed"):
        tk.load(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        tk.load(tmp_path)


def test_load_rejects_non_t5_sentencepiece_ids(tmp_path):
    # sentencepiece's own defaults: unk=0, bos=1, eos=2, no pad
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(r["dialogue"] for r in _records(200)),
        model_prefix=str(tmp_path / "plain"),
        vocab_size=100,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    with pytest.raises(ValueError, match=r"pad=0, eos=1, unk=2.*pad=-1, eos=2, unk=0"):
        tk.load(tmp_path / "plain.model")


def test_load_rejects_non_sentencepiece_file(tmp_path):
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bogus.model"):
        tk.load(bogus)


def test_train_malformed_jsonl_names_file_and_line(tmp_path):
    corpus = tmp_path / "bad.jsonl"
    good = json.dumps({"dialogue": "hello"})
    corpus.write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        tk.train(corpus, tmp_path / "out", vocab_size=50, field="dialogue")


def test_train_missing_field_names_field_line_and_fields(tmp_path):
    corpus = tmp_path / "c.jsonl"
    _write_jsonl(corpus, [{"dialogue": "a", "summary": "b"}, {"dialogue": "c", "topic": "d"}])
    with pytest.raises(KeyError) as err:
        tk.train(corpus, tmp_path / "out", vocab_size=50, field=["dialogue", "summary"])
    msg = str(err.value)
    assert "'summary'" in msg and "c.jsonl:2" in msg and "'topic'" in msg


def test_train_empty_corpus_names_file(tmp_path):
    for name, content in [("empty.txt", "\n  \n"), ("empty.jsonl", json.dumps({"t": " "}))]:
        corpus = tmp_path / name
        corpus.write_text(content)
        field = "t" if name.endswith("jsonl") else None
        with pytest.raises(ValueError, match=name):
            tk.train(corpus, tmp_path / "out", vocab_size=50, field=field)


def test_train_vocab_too_large_is_a_clear_error(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a b c\nb c a\n")
    with pytest.raises(ValueError, match=r"tiny\.txt.*vocab_size=5000"):
        tk.train(corpus, tmp_path / "out", vocab_size=5000)


SHIPPED_FILES = ("spiece.model", "tokenizer_config.json", "special_tokens_map.json")


def test_train_embedded_gives_the_shipped_tokenizer(tmp_path):
    """Retraining on the embedded corpus gives the shipped bytes; fails when the corpus data
    changes without `t5x-lite tokenizer train-embedded`."""
    tok = corpus.train_tokenizer(tmp_path)
    assert (tok.sp_vocab_size, tok.vocab_size) == (924, 1024)
    for name in SHIPPED_FILES:
        shipped = (corpus.DEFAULT_TOKENIZER_DIR / name).read_bytes()
        assert (tmp_path / name).read_bytes() == shipped, name


def test_train_embedded_command(tmp_path):
    cmd = [sys.executable, "-m", "t5x_lite", "tokenizer", "train-embedded", "--out", tmp_path]
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote {tmp_path}: 1024 ids (924 pieces + 100 sentinels)"
    shipped = (corpus.DEFAULT_TOKENIZER_DIR / "spiece.model").read_bytes()
    assert (tmp_path / "spiece.model").read_bytes() == shipped


def test_train_reads_every_record_format_alike(tmp_path):
    """The same texts from JSONL, CSV and parquet (`data.read_file`) give the same model bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"dialogue": r["dialogue"], "n": i} for i, r in enumerate(_records(60, seed=2))]
    _write_jsonl(tmp_path / "c.jsonl", rows)
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["dialogue", "n"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    models = []
    for ext in ("jsonl", "csv", "parquet"):
        tk.train(tmp_path / f"c.{ext}", tmp_path / ext, vocab_size=100, field="dialogue")
        models.append((tmp_path / ext / "spiece.model").read_bytes())
    assert models[0] == models[1] == models[2]
    with pytest.raises(ValueError, match=r"c\.parquet\[row 0\]: field 'n' \(field\) must be a str"):
        tk.train(tmp_path / "c.parquet", tmp_path / "x", vocab_size=100, field="n")
