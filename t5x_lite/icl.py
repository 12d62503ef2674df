"""In-context-learning evaluation: k-shot prompts -> generation -> ROUGE against the references.

    model, tok = conversion.load_for_inference("runs/default")
    records, pool = icl.load_records("embedded", split="test", num_examples=32)
    rows = icl.evaluate(model, tok, records, shots=(0, 1, 2), pool=pool)
    print(icl.format_table(rows))                 # one Markdown row per k
    icl.write_results(rows, "runs/icl")           # icl.md and icl.jsonl

Each query gets `max(shots)` shots drawn from `pool` (never the query itself, seeded by `seed`
and the query's index); the k-shot prompt uses the first k of them, so rows differ only in k.
Prompts are built by `t5x_lite.prompts` (at most `max_length` tokens; shots that do not fit are
dropped and counted), right-padded into batches and decoded greedily or sampled by
`decoding.generate`. ROUGE is rouge-score's F-measure x 100 with Porter stemming, averaged over
the examples; for ROUGE-Lsum each sentence goes on its own line, as rouge-score expects.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer

from t5x_lite import completion, decoding, prompts
from t5x_lite import data as data_lib

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? followed by whitespace; existing line breaks also separate.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


def split_sentences(text: str) -> str:
    """`text` with one sentence per line (what rouge-score's rougeLsum splits on)."""
    return "\n".join(s for s in _SENTENCE_BREAK.split(text.strip()) if s)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure x 100 of `predictions` against `references`."""
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; they pair up"
        )
    if not predictions:
        raise ValueError("rouge needs at least one prediction")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        # Line breaks only matter to rougeLsum; the other types tokenize them away.
        scores = scorer.score(split_sentences(reference), split_sentences(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def evaluate(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    shots: Sequence[int] = (0, 1, 2),
    pool: Sequence[Mapping[str, Any]] | None = None,
    template: str | prompts.Template = "summarize",
    max_length: int = 512,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    seed: int = 0,
    on_overflow: str = "truncate",
) -> list[dict[str, Any]]:
    """One row per k in `shots`: ROUGE of the k-shot predictions and how the prompts fared.

    Row keys: `shots`, `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (F x 100, mean over the scored
    examples; None if every prompt was skipped), `mean_shots_fit`, `num_examples` (scored),
    `num_truncated`, `num_skipped`, then the template and generation settings.
    `pool` defaults to `records` (each query excluded from its own shots).
    """
    template = prompts.get_template(template)
    records = list(records)
    shots = [int(k) for k in shots]
    if not records:
        raise ValueError("evaluate needs at least one record")
    if not shots or min(shots) < 0:
        raise ValueError(f"shots must be non-negative shot counts, got {shots}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for record in records:  # fail early, naming the record, if it lacks a field (answer too)
        template.render(record, with_answer=True)
    pool = records if pool is None else list(pool)
    draws = [
        prompts.select_shots(pool, max(shots), seed=seed * 1_000_003 + i, exclude=record)
        for i, record in enumerate(records)
    ]
    continues = model.continues_prompt
    settings = {
        "template": template.name,
        "max_length": max_length,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "num_beams": num_beams,
        "length_penalty": length_penalty,
        "seed": seed,
    }
    generation = {k: settings[k] for k in decoding.FLAGS}

    rows = []
    for k in shots:
        built = [
            prompts.build_prompt(
                template,
                record,
                draw[:k],
                tokenizer,
                max_length=max_length,
                max_new_tokens=max_new_tokens if continues else 0,
                on_overflow=on_overflow,
                add_eos=not continues,
            )
            for record, draw in zip(records, draws, strict=True)
        ]
        kept = [(p, r) for p, r in zip(built, records, strict=True) if not p.skipped]
        row: dict[str, Any] = {"shots": k}
        if kept:
            done = completion.complete(
                model,
                tokenizer,
                [p.ids for p, _ in kept],
                batch_size=batch_size,
                seed=seed,
                **generation,
            )
            predictions = [c.text for c in done]
            references = [str(r[template.target_field]) for _, r in kept]
            row |= rouge(predictions, references)
            row["mean_shots_fit"] = float(np.mean([p.num_shots_used for p, _ in kept]))
        else:
            log.warning("%d-shot: every prompt was skipped (over max_length=%d)", k, max_length)
            row |= dict.fromkeys(ROUGE_TYPES) | {"mean_shots_fit": None}
        row["num_examples"] = len(kept)
        row["num_truncated"] = sum(p.truncated for p in built)
        row["num_skipped"] = sum(p.skipped for p in built)
        rows.append(row | settings)
    return rows


def parse_shots(text: str) -> list[int]:
    """Shot counts from a comma-separated string such as "0,1,2"."""
    try:
        shots = [int(k) for k in text.split(",")]
    except ValueError:
        shots = []
    if not shots or min(shots) < 0:
        raise ValueError(f"shots must be comma-separated counts >= 0 such as 0,1,2, got {text!r}")
    return shots


def load_records(
    data: str, *, split: str = "test", num_examples: int | None = None
) -> tuple[list[dict], list[dict]]:
    """(records to evaluate, pool to draw shots from) for `data`.

    `data="embedded"`: the first `num_examples` of the corpus split, shots from its train split.
    Otherwise a JSONL file (or a directory holding `{split}.jsonl`, as `t5x_lite.data` reads):
    its first `num_examples` records, shots from all of its records.
    """
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if data == "embedded":
        records = data_lib.read_records(data_lib.DataSpec(source="embedded", split=split))
        pool = data_lib.read_records(data_lib.DataSpec(source="embedded", split="train"))
    else:
        records = data_lib.read_records(data_lib.DataSpec(source="jsonl", path=data, split=split))
        pool = records
    return records[:num_examples], pool


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of `evaluate` rows: ROUGE per k and how many shots and prompts fit."""
    columns = [
        ("shots", "shots"),
        ("rouge1", "ROUGE-1"),
        ("rouge2", "ROUGE-2"),
        ("rougeL", "ROUGE-L"),
        ("rougeLsum", "ROUGE-Lsum"),
        ("mean_shots_fit", "shots fit (mean)"),
        ("num_examples", "examples"),
        ("num_truncated", "truncated"),
        ("num_skipped", "skipped"),
    ]
    cell = lambda v: "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[key]) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def describe_settings(row: Mapping[str, Any]) -> str:
    """One line with the template and generation settings of an `evaluate` row."""
    sampling = (
        "greedy"
        if row["temperature"] == 0
        else f"temperature={row['temperature']}, top_k={row['top_k']}, top_p={row['top_p']}"
    )
    beams = f", num_beams={row['num_beams']}" if row["num_beams"] > 1 else ""
    return (
        f"template={row['template']}, max_length={row['max_length']}, "
        f"max_new_tokens={row['max_new_tokens']}, {sampling}{beams}, seed={row['seed']}"
    )


def write_results(rows: Sequence[Mapping[str, Any]], out_dir) -> tuple[Path, Path]:
    """Write `icl.md` (settings line + table) and `icl.jsonl` (one row per k) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "icl.md"
    header = f"In-context learning ({describe_settings(rows[0])})\n\n" if rows else ""
    markdown.write_text(header + format_table(rows) + "\n", encoding="utf-8")
    jsonl = out_dir / "icl.jsonl"
    jsonl.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), encoding="utf-8")
    return markdown, jsonl
