"""Training objectives: how token streams become model examples, and how they are scored.

    import objectives
    objective = objectives.get("span_corruption")

Each objective module exports the host-side `preprocess(...)` (numpy, per document) and, for the
train loop: `ARCHITECTURE` (the model assembly it trains), `fields(input_field, target_field)`
(record fields to tokenize), `make_stages(tokenizer, ...)` (its grain stages: packing, noising,
padding), `loss_fn(model, batch, *, z_loss, label_smoothing) -> (loss, metrics)`,
`num_tokens(batch)` and `describe_example(model, tokenizer, batch)`.

    span_corruption   T5 pre-training: random spans -> sentinels in inputs, spans in targets
    causal_lm         next-token prediction over documents packed into fixed-length rows
    masked_lm         BERT masking: ~15% of tokens selected, 80/10/10 mask/random/keep
    seq2seq           supervised inputs -> targets (fine-tuning)

All randomness comes from a `numpy.random.Generator` (grain's `random_map` seeds one per
example), so a pipeline seeded once is reproducible and resumable.
"""

import importlib
from types import ModuleType

NAMES = ("span_corruption", "causal_lm", "masked_lm", "seq2seq")


def get(name: str) -> ModuleType:
    """The objective module called `name`."""
    if name not in NAMES:
        raise ValueError(
            f"objective.name={name!r} is not supported; expected one of {', '.join(NAMES)}"
        )
    return importlib.import_module(f"objectives.{name}")
