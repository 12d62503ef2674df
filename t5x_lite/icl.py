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


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> list[dict[str, float]]:
    """ROUGE-1/2/L/Lsum F-measure x 100 of each prediction against its reference, or against
    several (the best-matching one per ROUGE type, as rouge-score's `score_multi` scores)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; they pair up"
        )
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out = []
    for prediction, reference in zip(predictions, references, strict=True):
        targets = [reference] if isinstance(reference, str) else list(reference)
        # Line breaks only matter to rougeLsum; the other types tokenize them away.
        scores = scorer.score_multi(
            list(map(split_sentences, targets)), split_sentences(prediction)
        )
        out.append({name: 100.0 * scores[name].fmeasure for name in ROUGE_TYPES})
    return out


def rouge(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure x 100 of `predictions` against `references` (a string,
    or a list of strings scored as in `rouge_per_example`, per prediction)."""
    if not predictions:
        raise ValueError("rouge needs at least one prediction")
    scores = rouge_per_example(predictions, references)
    return {name: float(np.mean([x[name] for x in scores])) for name in ROUGE_TYPES}


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, its default 13a tokenization) of `predictions` against one
    reference each, or several (a record with fewer repeats its first, which changes nothing)."""
    import sacrebleu

    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    streams = max(len(r) for r in refs)
    padded = [r + [r[0]] * (streams - len(r)) for r in refs]
    return float(
        sacrebleu.corpus_bleu(list(predictions), [list(s) for s in zip(*padded, strict=True)]).score
    )


def score_generation(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    template: str | prompts.Template,
    input_field: str,
    target_field: str,
    max_length: int = 512,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> dict[str, float]:
    """Zero-shot generation on `records` (`input_field`'s text in `template`), scored against
    `target_field`: ROUGE-1/2/L/Lsum, BLEU, the number of examples and how many inputs were
    cut to fit `max_length`, as fine-tuning's evaluation reports them (greedy decoding)."""
    template = prompts.get_template(template)
    queries = []
    for record in records:
        for name in (input_field, target_field):
            if record.get(name) is None:
                have = sorted(k for k in record if not k.startswith("_"))
                raise KeyError(
                    f"record {record.get('_position', '?')} has no field {name!r} (input field "
                    f"{input_field!r}, target field {target_field!r}); it has {have}"
                )
        queries.append(
            {
                template.truncate_field: record[input_field],
                template.target_field: record[target_field],
                "_position": record.get("_position"),
            }
        )
    quiet = logging.getLogger(prompts.__name__)  # one line per cut input is too many here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        (row,) = evaluate(
            model,
            tokenizer,
            queries,
            shots=[0],
            pool=queries[:1],
            template=template,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    finally:
        quiet.setLevel(level)
    return {k: row[k] for k in (*ROUGE_TYPES, "bleu", "num_examples", "num_truncated")}


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
    target_fields: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per k in `shots`: ROUGE of the k-shot predictions and how the prompts fared.

    Row keys: `shots`, `rouge1`, `rouge2`, `rougeL`, `rougeLsum` (F x 100, mean over the scored
    examples; None if every prompt was skipped), `bleu` (corpus BLEU), `mean_shots_fit`,
    `num_examples` (scored), `num_truncated`, `num_skipped`, then the template and generation
    settings, and `examples`: per scored record its `position`, `prediction`, `references`
    and ROUGE.
    `pool` defaults to `records` (each query excluded from its own shots). `target_fields`
    (default: the template's `target_field`) name the query records' references; several are
    scored as multi-reference ROUGE. Shots always answer with the template's `target_field`.
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
    target_fields = list(target_fields or [template.target_field])
    for record in records:  # fail early, naming the record, if it lacks a field
        template.render(record, with_answer=False)
        for name in target_fields:
            if record.get(name) is None:
                have = sorted(k for k in record if not k.startswith("_"))
                raise KeyError(
                    f"record {record.get('_position', '?')} has no reference field {name!r} "
                    f"(target fields {target_fields}); it has {have}"
                )
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
        "target_fields": target_fields,
    }
    generation = {k: v for k, v in settings.items() if k in decoding.FLAGS}

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
            references = [[str(r[f]) for f in target_fields] for _, r in kept]
            scores = rouge_per_example(predictions, references)
            row |= {n: float(np.mean([x[n] for x in scores])) for n in ROUGE_TYPES}
            row["bleu"] = bleu(predictions, references)
            row["mean_shots_fit"] = float(np.mean([p.num_shots_used for p, _ in kept]))
            row["examples"] = [
                {"position": r.get("_position"), "prediction": text, "references": refs, **score}
                for (_, r), text, refs, score in zip(
                    kept, predictions, references, scores, strict=True
                )
            ]
        else:
            log.warning("%d-shot: every prompt was skipped (over max_length=%d)", k, max_length)
            row |= dict.fromkeys((*ROUGE_TYPES, "bleu")) | {"mean_shots_fit": None, "examples": []}
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
    data: str,
    *,
    split: str = "test",
    num_examples: int | None = None,
    shots_from: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """(records to evaluate, pool to draw shots from) for `data`.

    `data="embedded"`: the first `num_examples` of the corpus split. Otherwise a file (any
    format `t5x_lite.data` reads), a directory of `{split}.jsonl` files or a path with
    `{split}`: its first `num_examples` records of `split`. Shots come from `shots_from` (a
    file) if given, else the training split (`train`); a single file has none, so its own
    records are the pool (each query excluded from its shots), with a warning.
    """
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")

    def read(path: str, split: str) -> list[dict]:
        source = "embedded" if path == "embedded" else "jsonl"
        spec = data_lib.DataSpec(
            source=source, path="" if source == "embedded" else path, split=split
        )
        return data_lib.read_records(spec)

    records = read(data, split)
    if shots_from:
        pool = data_lib.read_file(shots_from)
    elif data == "embedded" or not data_lib.is_single_file(data):
        pool = read(data, "train")
    else:
        log.warning(
            "shots come from %s itself (each query excluded): it is one file, with no training "
            "split; pass --shots-from TRAIN_FILE to draw them from training data",
            data,
        )
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
        ("bleu", "BLEU"),
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
    """Write `icl.md` (settings line + table), `icl.jsonl` (one row per k) and
    `predictions.jsonl` (one line per k and example) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "icl.md"
    header = f"In-context learning ({describe_settings(rows[0])})\n\n" if rows else ""
    markdown.write_text(header + format_table(rows) + "\n", encoding="utf-8")
    jsonl = out_dir / "icl.jsonl"
    summary = [{k: v for k, v in row.items() if k != "examples"} for row in rows]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in summary), encoding="utf-8")
    lines = [
        json.dumps({"shots": row["shots"], **example}, ensure_ascii=False) + "\n"
        for row in rows
        for example in row.get("examples", [])
    ]
    (out_dir / "predictions.jsonl").write_text("".join(lines), encoding="utf-8")
    return markdown, jsonl


def eval_command(args, model, tok) -> None:
    """`t5x-lite eval`: one Markdown row of generation scores for `model` (and `args.adapter`);
    a training workdir's template and fields are the defaults."""
    from t5x_lite import adapters, conversion

    if args.adapter:
        model = adapters.load(model, args.adapter)
    trained = {}
    workdir = conversion.workdir_of(args.model)
    if workdir is not None:
        trained = json.loads((workdir / "config.json").read_text()).get("data", {})
    template = args.template or trained.get("template") or "summarize"
    records, _ = load_records(args.data, split=args.split, num_examples=args.num_examples)
    scores = score_generation(
        model,
        tok,
        records,
        template=template,
        input_field=args.input_field or trained.get("input_field", "dialogue"),
        target_field=args.target_field or trained.get("target_field", "summary"),
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    print("| model | adapter | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | BLEU | examples |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    cells = [f"{scores[k]:.2f}" for k in (*ROUGE_TYPES, "bleu")]
    print(
        f"| {args.model} | {args.adapter or '-'} | {' | '.join(cells)} | {scores['num_examples']} |"
    )
