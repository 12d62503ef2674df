"""FLAN-style prompt templates and a few-shot prompt builder that respects a token budget.

    tmpl = prompts.get_template("summarize")
    shots = prompts.select_shots(pool, 2, seed=0, exclude=query)      # never the query itself
    p = prompts.build_prompt(tmpl, query, shots, tok, max_length=512)
    p.ids, p.num_shots_used, p.truncated                              # p.ids never exceeds 512

A prompt is the shots (each its input followed by its answer), then the query's input, joined
by the template's separator. Shots are tried in order and kept when the whole prompt still fits
`max_length` tokens (counted with the model's tokenizer, EOS included); one that does not fit is
dropped and the next one tried. A query too long on its own is truncated (its `truncate_field`
is cut), refused, or marked skipped, per `on_overflow`. For decoder-only models the generated
tokens share the window: pass their number as `max_new_tokens` and the prompt keeps room for them.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import string
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

ON_OVERFLOW = ("truncate", "error", "skip")


@dataclasses.dataclass(frozen=True)
class Template:
    """How a record becomes a prompt: named `{field}`s in `input_format` and `answer_format`.

    A shot renders as `input_format + answer_format`, the query as `input_format` alone; shots
    and query are joined by `separator`. `truncate_field` is the long text cut when the query
    does not fit; `target_field` holds the reference answer an evaluation compares against.
    """

    name: str
    input_format: str
    answer_format: str
    separator: str = "\n\n\n"
    truncate_field: str = "dialogue"
    target_field: str = "summary"

    def __post_init__(self):
        if self.truncate_field not in self.fields(with_answer=False):
            raise ValueError(
                f"template {self.name!r}: truncate_field {self.truncate_field!r} is not a field "
                f"of its input_format {self.input_format!r}"
            )

    def fields(self, *, with_answer: bool) -> list[str]:
        formats = [self.input_format] + ([self.answer_format] if with_answer else [])
        return [f for fmt in formats for _, f, _, _ in string.Formatter().parse(fmt) if f]

    def render(self, record: Mapping[str, Any], *, with_answer: bool) -> str:
        for field in self.fields(with_answer=with_answer):
            if field not in record or record[field] is None:
                have = sorted(k for k in record if not k.startswith("_"))
                raise KeyError(
                    f"template {self.name!r} needs field {field!r}, but record "
                    f"{_describe(record)} has only {have}"
                )
        text = self.input_format.format_map(record)
        return text + self.answer_format.format_map(record) if with_answer else text


TEMPLATES = {
    t.name: t
    for t in (
        # FLAN's dialogsum templates (Longpre et al. 2023, flan/v2/templates.py).
        Template(
            "summarize",
            "Summarize the following conversation.\n\n{dialogue}\n\nSummary:",
            " {summary}",
        ),
        Template(
            "summarize_short",
            "{dialogue}\n\nBriefly summarize that dialogue.",
            "\n{summary}",
        ),
        # The input as it is: for a model fine-tuned on raw inputs (seq2seq without a prompt).
        Template("bare", "{dialogue}", " {summary}"),
        Template(
            "sentiment",
            "Classify this review: {text}\nSentiment:",
            " {label}",
            separator="\n\n",
            truncate_field="text",
            target_field="label",
        ),
    )
}


def get_template(template: str | Template) -> Template:
    """A `Template` by name from `TEMPLATES`, or from a format string such as
    "Dialogue: {dialogue}\nSummary:" (its first field is the one cut to fit; shots answer with
    " {summary}"). A `Template` passes through."""
    if isinstance(template, Template):
        return template
    if template in TEMPLATES:
        return TEMPLATES[template]
    fields = (
        [f for _, f, _, _ in string.Formatter().parse(template) if f] if "{" in template else []
    )
    if not fields:
        raise ValueError(
            f"unknown template {template!r}: give a name ({', '.join(TEMPLATES)}) or a format "
            "string with {field} placeholders"
        )
    return Template(template, template, " {summary}", truncate_field=fields[0])


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A built prompt: `ids == tokenizer.encode(text)`, at most the token budget long."""

    text: str
    ids: list[int]
    num_shots_requested: int
    num_shots_used: int  # shots that fit, the first ones in order that did
    truncated: bool  # the query's truncate_field was cut to fit
    skipped: bool  # on_overflow="skip" and the query alone did not fit; text and ids are empty


def build_prompt(
    template: str | Template,
    query_record: Mapping[str, Any],
    shots: Sequence[Mapping[str, Any]],
    tokenizer,
    *,
    max_length: int,
    max_new_tokens: int = 0,
    on_overflow: str = "truncate",
    add_eos: bool = True,
) -> Prompt:
    """The prompt for `query_record` with as many of `shots` as fit in the token budget.

    The budget is `max_length - max_new_tokens` tokens (`max_new_tokens` > 0 for decoder-only
    models, whose output shares the window). `add_eos` as in `Tokenizer.encode`: an encoder's
    input ends with EOS; a decoder-only prompt must not (EOS ends a document there).
    If the query alone is over budget, `on_overflow` says what happens: "truncate" cuts the
    template's `truncate_field` (and logs a warning), "error" raises ValueError, "skip" returns
    an empty prompt with `skipped=True`.
    """
    template = get_template(template)
    if on_overflow not in ON_OVERFLOW:
        raise ValueError(
            f"on_overflow must be one of {', '.join(ON_OVERFLOW)}, got {on_overflow!r}"
        )
    budget = max_length - max_new_tokens
    if max_new_tokens < 0 or budget < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
            f"max_length={max_length}"
        )
    encode = lambda text: tokenizer.encode(text, add_eos=add_eos)
    query = template.render(query_record, with_answer=False)
    ids = encode(query)
    if len(ids) > budget:
        if on_overflow == "error":
            raise ValueError(
                f"the prompt for record {_describe(query_record)} is {len(ids)} tokens with no "
                f"shots, but the window is {budget} (max_length={max_length}, "
                f"max_new_tokens={max_new_tokens}); raise max_length (--max-length) or truncate "
                "(on_overflow=truncate, --on-overflow truncate)"
            )
        if on_overflow == "skip":
            return Prompt("", [], len(shots), 0, truncated=False, skipped=True)
        query, ids = _truncate_query(template, query_record, tokenizer, budget, add_eos)
        return Prompt(query, ids, len(shots), 0, truncated=True, skipped=False)

    used: list[str] = []
    for shot in shots:
        rendered = template.render(shot, with_answer=True)
        candidate_ids = encode(template.separator.join([*used, rendered, query]))
        if len(candidate_ids) <= budget:
            used.append(rendered)
            ids = candidate_ids
    text = template.separator.join([*used, query])
    return Prompt(text, ids, len(shots), len(used), truncated=False, skipped=False)


def _truncate_query(
    template: Template, record: Mapping[str, Any], tokenizer, budget: int, add_eos: bool
) -> tuple[str, list[int]]:
    """The query with its truncate_field cut to the most tokens that keep it within budget.

    Tokenization is not additive across the cut, so this binary-searches the number of the
    field's tokens kept, re-encoding the whole prompt each time; only tested lengths are kept.
    """
    field = template.truncate_field
    pieces = tokenizer.encode(str(record[field]), add_eos=False)

    def attempt(n: int) -> tuple[str, list[int]]:
        cut = dict(record, **{field: tokenizer.decode(pieces[:n])})
        text = template.render(cut, with_answer=False)
        return text, tokenizer.encode(text, add_eos=add_eos)

    best = attempt(0)
    if len(best[1]) > budget:
        raise ValueError(
            f"template {template.name!r} alone takes {len(best[1])} tokens with an empty "
            f"{field!r}, more than the window of {budget}; raise max_length"
        )
    lo, hi = 0, len(pieces)  # attempt(lo) fits; the full field (hi) did not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text, ids = attempt(mid)
        if len(ids) <= budget:
            lo, best = mid, (text, ids)
        else:
            hi = mid
    log.warning(
        "record %s: the prompt did not fit %d tokens even with no shots; cut %r from %d to %d "
        "tokens",
        _describe(record),
        budget,
        field,
        len(pieces),
        lo,
    )
    return best


def select_shots(
    pool: Sequence[Mapping[str, Any]],
    k: int,
    *,
    seed: int,
    exclude: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> list[Mapping[str, Any]]:
    """`k` records drawn without replacement from `pool`, the same for the same `seed`.

    Records equal to `exclude` (a record, or a list of them: the query) are never drawn;
    equality ignores private keys such as `_position`, so a copy of the query is excluded too.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if exclude is None:
        excluded = []
    elif isinstance(exclude, Mapping):
        excluded = [_content(exclude)]
    else:
        excluded = [_content(r) for r in exclude]
    candidates = [r for r in pool if _content(r) not in excluded]
    if k > len(candidates):
        raise ValueError(
            f"cannot draw {k} shots from a pool of {len(candidates)} records "
            f"({len(pool) - len(candidates)} excluded as the query)"
        )
    return random.Random(seed).sample(candidates, k)


def _content(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _describe(record: Mapping[str, Any]) -> str:
    return str(record.get("_position") or record.get("fname") or "<unnamed>")
