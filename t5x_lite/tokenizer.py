"""T5 SentencePiece tokenizer: encode/decode text with T5's id conventions, train, save, load.

Ids follow T5 exactly: pad=0, eos=1, unk=2, then the SentencePiece pieces, then 100 sentinels
with ``<extra_id_0>`` at the highest id (``vocab_size - 1``). Saved directories use the Hugging
Face T5 layout (``spiece.model`` + ``tokenizer_config.json``), so ``transformers`` can read them.

    tok = load("path/to/spiece.model")             # or a directory holding spiece.model
    ids = tok.encode("Thank you <extra_id_0> me")  # ends with EOS (id 1)
    tok = train("data.jsonl", "out/tok", vocab_size=8000, field=["dialogue", "summary"])
    tok = corpus.train_tokenizer("out/tok")   # the shipped one, retrained on the embedded corpus
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_SENTINELS = 100
DEFAULT_MODEL_MAX_LENGTH = 512

SPM_FILENAMES = ("spiece.model", "tokenizer.model")
CONFIG_FILENAME = "tokenizer_config.json"
SPECIAL_TOKENS_FILENAME = "special_tokens_map.json"

_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")
_PADDING_MODES = ("longest", "max_length", "do_not_pad")

PathLike = str | os.PathLike


def _sentinel_token(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """A SentencePiece model plus ``extra_ids`` sentinel ids appended after its pieces."""

    def __init__(
        self,
        sp_model: spm.SentencePieceProcessor,
        *,
        extra_ids: int = NUM_SENTINELS,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        source: str = "<in-memory model>",
    ):
        if not isinstance(extra_ids, int) or isinstance(extra_ids, bool) or extra_ids < 0:
            raise ValueError(f"extra_ids must be a non-negative int, got {extra_ids!r}")
        _check_t5_special_ids(sp_model, source)
        self._sp = sp_model
        self._extra_ids = extra_ids
        self.model_max_length = int(model_max_length)
        self.source = source

    def __repr__(self) -> str:
        return (
            f"Tokenizer(source={self.source!r}, sp_vocab_size={self.sp_vocab_size}, "
            f"extra_ids={self._extra_ids})"
        )

    @property
    def sp_model(self) -> spm.SentencePieceProcessor:
        return self._sp

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def sp_vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def num_sentinels(self) -> int:
        return self._extra_ids

    @property
    def vocab_size(self) -> int:
        return self.sp_vocab_size + self._extra_ids

    @property
    def checksum(self) -> str:
        """SHA-256 of the SentencePiece model and the sentinel count: equal exactly when two
        tokenizers map text to the same ids."""
        digest = hashlib.sha256(self._sp.serialized_model_proto())
        digest.update(str(self._extra_ids).encode())
        return digest.hexdigest()

    def sentinel_id(self, i: int) -> int:
        """Id of ``<extra_id_{i}>``; sentinels count down from the top of the vocabulary."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"sentinel index must be an int, got {type(i).__name__}")
        if not 0 <= i < self._extra_ids:
            if self._extra_ids == 0:
                raise ValueError(f"sentinel index {i} is invalid: this tokenizer has no sentinels")
            raise ValueError(
                f"sentinel index {i} out of range: allowed range is 0..{self._extra_ids - 1} "
                f"(this tokenizer has {self._extra_ids} extra ids)"
            )
        return self.vocab_size - 1 - int(i)

    def is_sentinel(self, token_id: int) -> bool:
        return self.sp_vocab_size <= int(token_id) < self.vocab_size

    def _sentinel_index(self, token_id: int) -> int:
        return self.vocab_size - 1 - token_id

    # ---------------------------------------------------------------- encoding

    def encode(
        self, text: str, *, add_eos: bool = True, max_length: int | None = None
    ) -> list[int]:
        """Token ids for ``text``; literal ``<extra_id_N>`` markers become sentinel ids.

        Each chunk between markers is encoded separately, which is also what transformers'
        T5Tokenizer does (every chunk gets its own leading "▁"). Literal ``</s>``, ``<pad>`` and
        ``<unk>`` are encoded as plain text, as in T5/seqio, so data cannot inject an EOS.
        With ``max_length`` the ids are cut to that length, keeping EOS last when ``add_eos``.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        ids: list[int] = []
        pos = 0
        for match in _SENTINEL_RE.finditer(text):
            ids.extend(self._encode_plain(text[pos : match.start()]))
            ids.append(self._marker_to_id(match))
            pos = match.end()
        ids.extend(self._encode_plain(text[pos:]))
        if add_eos:
            ids.append(EOS_ID)
        if max_length is not None and len(ids) > max_length:
            ids = _truncate(ids, max_length, add_eos)
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int) if text else []

    def _marker_to_id(self, match: re.Match[str]) -> int:
        digits = match.group(1)
        index = int(digits)
        # A marker we cannot map is almost always a data bug (wrong extra_ids, or a typo such as
        # a zero-padded index); silently spelling it out as pieces would hide it.
        if str(index) != digits or index >= self._extra_ids:
            raise ValueError(
                f"text contains {match.group(0)!r} but this tokenizer only has sentinels "
                f"<extra_id_0>..<extra_id_{self._extra_ids - 1}>"
            )
        return self.sentinel_id(index)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        padding: str = "longest",
        add_eos: bool = True,
    ) -> dict[str, Any]:
        """Encode ``texts`` into right-padded int32 arrays.

        Returns ``input_ids`` and ``attention_mask`` of shape [B, L] (L = longest row, or
        ``max_length`` with ``padding="max_length"``) and ``num_truncated``, the number of texts
        cut by ``max_length``. With ``padding="do_not_pad"`` the two arrays are lists of 1-D int32
        arrays, since rows differ in length.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of str, got a single str")
        if padding not in _PADDING_MODES:
            raise ValueError(f"padding must be one of {_PADDING_MODES}, got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError('padding="max_length" requires max_length')
        rows: list[list[int]] = []
        num_truncated = 0
        for text in texts:
            ids = self.encode(text, add_eos=add_eos)
            if max_length is not None and len(ids) > max_length:
                num_truncated += 1
                ids = _truncate(ids, max_length, add_eos)
            rows.append(ids)
        if padding == "do_not_pad":
            return {
                "input_ids": [np.asarray(r, dtype=np.int32) for r in rows],
                "attention_mask": [np.ones(len(r), dtype=np.int32) for r in rows],
                "num_truncated": num_truncated,
            }
        width = max_length if padding == "max_length" else max((len(r) for r in rows), default=0)
        input_ids = np.full((len(rows), width), PAD_ID, dtype=np.int32)
        attention_mask = np.zeros((len(rows), width), dtype=np.int32)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = row
            attention_mask[b, : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "num_truncated": num_truncated,
        }

    # ---------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text for ``ids``. Sentinels always render as ``<extra_id_N>``.

        Pad and EOS are dropped when ``skip_special_tokens`` (else rendered as ``<pad>``/``</s>``).
        A sentinel that follows text gets a space before it, so span-corruption strings such as
        ``"Thank you <extra_id_0> me"`` round-trip through encode/decode.
        """
        out: list[str] = []
        run: list[int] = []
        last_is_text = False  # whether out ends with decoded text (not a special marker)

        def flush() -> None:
            nonlocal last_is_text
            if not run:
                return
            text = self._sp.decode(run)
            # sentencepiece drops the word-initial "▁" of the first piece; restore it as a space
            # when the run continues earlier output, so "<extra_id_0> me" keeps its space.
            if text and out and self._sp.id_to_piece(run[0]).startswith("▁"):
                text = " " + text
            if text:
                out.append(text)
                last_is_text = True
            run.clear()

        for raw in ids:
            token_id = int(raw)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"token id {token_id} is out of range for vocab size {self.vocab_size} "
                    f"(valid ids: 0..{self.vocab_size - 1})"
                )
            if token_id < self.sp_vocab_size and token_id not in (PAD_ID, EOS_ID):
                run.append(token_id)
                continue
            flush()
            if token_id >= self.sp_vocab_size:
                marker = _sentinel_token(self._sentinel_index(token_id))
                # encode() drops the space before a marker; T5 writes one there.
                out.append(" " + marker if last_is_text and not out[-1][-1].isspace() else marker)
            elif not skip_special_tokens:
                out.append(self._sp.id_to_piece(token_id))
            else:
                continue
            last_is_text = False
        flush()
        return "".join(out)

    def decode_batch(self, ids_2d: Iterable[Iterable[int]]) -> list[str]:
        """Decode each row up to (not including) its first EOS; pads are dropped."""
        out = []
        for row in ids_2d:
            row_ids = [int(i) for i in row]
            if EOS_ID in row_ids:
                row_ids = row_ids[: row_ids.index(EOS_ID)]
            out.append(self.decode(row_ids, skip_special_tokens=True))
        return out

    # ---------------------------------------------------------------- saving

    def save(self, directory: PathLike) -> Path:
        """Write ``spiece.model``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        The layout is Hugging Face's T5 one, so ``load(directory)`` and
        ``transformers.T5Tokenizer.from_pretrained(directory)`` both read it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SPM_FILENAMES[0]).write_bytes(self._sp.serialized_model_proto())
        special = {
            "eos_token": self._sp.id_to_piece(EOS_ID),
            "pad_token": self._sp.id_to_piece(PAD_ID),
            "unk_token": self._sp.id_to_piece(UNK_ID),
            "additional_special_tokens": [_sentinel_token(i) for i in range(self._extra_ids)],
        }
        config = {
            "tokenizer_class": "T5Tokenizer",
            "extra_ids": self._extra_ids,
            "model_max_length": self.model_max_length,
            **special,
        }
        _write_json(directory / CONFIG_FILENAME, config)
        _write_json(directory / SPECIAL_TOKENS_FILENAME, special)
        return directory


def _truncate(ids: list[int], max_length: int, add_eos: bool) -> list[int]:
    return ids[: max_length - 1] + [EOS_ID] if add_eos else ids[:max_length]


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_t5_special_ids(sp: spm.SentencePieceProcessor, source: str) -> None:
    got = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    want = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID}
    if got != want:
        layout = ", ".join(f"{k}={v}" for k, v in got.items())
        first = ", ".join(f"{i}={sp.id_to_piece(i)!r}" for i in range(min(3, sp.get_piece_size())))
        raise ValueError(
            f"SentencePiece model {source} is not T5-compatible: T5 needs pad=0, eos=1, unk=2, "
            f"but this model has {layout} (-1 = absent; first pieces: {first}). "
            "Train it with pad_id=0, eos_id=1, unk_id=2, bos_id=-1 (see tokenizer.train)."
        )


# -------------------------------------------------------------------- loading


def _extra_ids_from_config(config: dict[str, Any]) -> int:
    listed = 0
    for token in config.get("additional_special_tokens") or []:
        content = token.get("content") if isinstance(token, dict) else token
        if isinstance(content, str) and _SENTINEL_RE.fullmatch(content):
            listed += 1
    extra_ids = config.get("extra_ids")
    # Some hub configs say extra_ids=0 and list the sentinels as special tokens instead.
    if not extra_ids and listed:
        return listed
    return NUM_SENTINELS if extra_ids is None else int(extra_ids)


def load(path: PathLike) -> Tokenizer:
    """Load a tokenizer from a SentencePiece ``.model`` file or a directory with ``spiece.model``.

    A directory may also hold ``tokenizer.model`` instead; ``extra_ids`` and ``model_max_length``
    come from its ``tokenizer_config.json`` when present (default: 100 sentinels, 512).
    """
    path = Path(path)
    expected = (
        "expected a SentencePiece .model file or a directory containing "
        f"{' or '.join(SPM_FILENAMES)}"
    )
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {str(path)!r} does not exist; {expected}")
    config: dict[str, Any] = {}
    if path.is_dir():
        model_file = next((path / n for n in SPM_FILENAMES if (path / n).is_file()), None)
        if model_file is None:
            if (path / "tokenizer.json").is_file():
                raise FileNotFoundError(
                    f"{str(path)!r} holds only tokenizer.json (a Hugging Face fast tokenizer), but "
                    f"a SentencePiece model file is needed: {' or '.join(SPM_FILENAMES)}"
                )
            raise FileNotFoundError(
                f"no SentencePiece model in directory {str(path)!r}; {expected}"
            )
        config_file = path / CONFIG_FILENAME
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_file} is not valid JSON: {e}") from e
    else:
        model_file = path
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(model_file))
    except (OSError, RuntimeError) as e:
        raise ValueError(
            f"{str(model_file)!r} is not a SentencePiece model ({e}); {expected}"
        ) from e
    max_len = config.get("model_max_length")
    if not isinstance(max_len, int | float):
        max_len = DEFAULT_MODEL_MAX_LENGTH
    return Tokenizer(
        sp,
        extra_ids=_extra_ids_from_config(config),
        model_max_length=int(max_len),
        source=str(model_file),
    )


# -------------------------------------------------------------------- training


def _sample(texts: Iterable[str], k: int, seed: int) -> list[str]:
    # Seeded reservoir sampling keeps memory at O(k) for big corpora; the sample is put back in
    # file order so the trainer sees the same sequence for the same inputs.
    rng = random.Random(seed)
    heap: list[tuple[float, int, str]] = []
    for i, text in enumerate(texts):
        key = rng.random()
        if len(heap) < k:
            heapq.heappush(heap, (key, i, text))
        elif key > heap[0][0]:
            heapq.heapreplace(heap, (key, i, text))
    return [text for _, _, text in sorted(heap, key=lambda item: item[1])]


def train(
    input_path: PathLike,
    out_dir: PathLike,
    *,
    vocab_size: int,
    field: str | Sequence[str] | None = None,
    model_type: str = "unigram",
    max_sentences: int = 1_000_000,
    character_coverage: float = 1.0,
    seed: int = 0,
    num_threads: int = 1,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> Tokenizer:
    """Train a T5-style SentencePiece model, save it to ``out_dir`` and return it loaded.

    ``input_path`` is a file `t5x_lite.data.read_file` reads (``.txt``: one text per line;
    ``.jsonl``, ``.json``, ``.csv``, ``.parquet``: records); ``field`` names the text field, or a
    list of fields whose texts are all used (e.g. ``["dialogue", "summary"]``). ``vocab_size`` is
    the number of SentencePiece pieces, including pad/eos/unk; the 100 sentinels come on top, so
    the model vocabulary is ``vocab_size + 100``. At most ``max_sentences`` texts are used,
    sampled with ``seed``.

    The model mirrors T5's spiece.model: pad=0, eos=1, unk=2, no BOS, nmt_nfkc normalisation
    (newlines and tabs become spaces, as in T5). Only ``model_type="unigram"`` (T5's) tokenizes
    the same in transformers' T5Tokenizer, which always runs a Unigram model; our own encode
    is right for any type. With one thread (the default) the same inputs and ``seed`` give a
    byte-identical model; more threads train faster.
    """
    from t5x_lite import data

    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"training corpus {str(input_path)!r} does not exist")
    if vocab_size < 4:
        raise ValueError(
            f"vocab_size must be at least 4 (pad, eos, unk + 1 piece), got {vocab_size}"
        )
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
    texts = _sample(data.read_texts(input_path, field, flag="field"), max_sentences, seed)
    if not texts:
        raise ValueError(f"training corpus {input_path} has no non-empty texts")

    # Dialogue fields span several lines. At encode time nmt_nfkc turns "\n" into a space, so
    # train on that same view rather than leave raw newlines inside trainer sentences.
    texts = [re.sub(r"[\r\n]+", " ", t) for t in texts]
    longest = max(len(t.encode("utf-8")) for t in texts)

    spm.set_random_generator_seed(seed)
    model = _BytesSink()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            normalization_rule_name="nmt_nfkc",
            input_sentence_size=0,
            shuffle_input_sentence=False,
            # The default (4192 bytes) silently drops long texts such as whole dialogues.
            max_sentence_length=max(4192, longest + 1),
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece training on {input_path} failed ({len(texts)} texts, "
            f"vocab_size={vocab_size}): {e}"
        ) from e
    sp = spm.SentencePieceProcessor()
    sp.load_from_serialized_proto(model.data)
    tok = Tokenizer(sp, model_max_length=model_max_length, source=str(input_path))
    out = tok.save(out_dir)
    return load(out)


class _BytesSink:
    """``model_writer`` target for SentencePieceTrainer: keeps the model in memory."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data
