"""Training objectives: how token streams become model examples, and how they are scored.

    import objectives
    objective = objectives.get("span_corruption")         # an `Objective`
    options = objective.options(inputs_length=512)        # its validated `Config`
    stages, max_tokens = objective.make_stages(tok, options, seed=0)
    loss, metrics = objective.loss_fn(model, batch, z_loss=1e-4, label_smoothing=0.0)

Each objective is one module of this package that ends with `register(Objective(...))`: its
`Config` dataclass (the keys of the run config's `objective` block besides `name`, `z_loss` and
`label_smoothing`), the model assembly it trains, and the functions the train loop calls. A new
objective is its module, a recipe under `configs/` and a test; nothing else changes.

    span_corruption   T5 pre-training: random spans -> sentinels in inputs, spans in targets
    causal_lm         next-token prediction over documents packed into fixed-length rows
    masked_lm         BERT masking: ~15% of tokens selected, 80/10/10 mask/random/keep
    seq2seq           supervised inputs -> targets (fine-tuning)

All randomness comes from a `numpy.random.Generator` (grain's `random_map` seeds one per
example), so a pipeline seeded once is reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

# Keys of the run config's `objective` block that every objective shares (the loss's options).
COMMON_KEYS = ("name", "z_loss", "label_smoothing")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The contract between an objective and the train loop.

    name: the `objective.name` that selects it.
    architecture: the model assembly it trains (`ModelConfig.architecture`).
    config: a frozen dataclass of its options, with defaults.
    fields(input_field, target_field) -> {feature: record field} to tokenize.
    make_stages(tokenizer, options, *, seed) -> (grain stages, max tokens a record may keep).
    loss_fn(model, batch, *, z_loss, label_smoothing) -> (loss, metrics).
    num_tokens(batch) -> the real (non-padding) tokens a batch holds, for throughput.
    describe_example(model, tokenizer, batch) -> text showing one example and the model's output.
    """

    name: str
    architecture: str
    config: type
    fields: Callable[[str, str], dict[str, str]]
    make_stages: Callable[..., tuple[Callable, int]]
    loss_fn: Callable[..., tuple[Any, dict]]
    num_tokens: Callable[[dict], int]
    describe_example: Callable[..., str]

    def options(self, **values) -> Any:
        """Its `config` from `values` (the `objective` block without the common keys); a key it
        does not have is a ValueError naming the objective and its keys."""
        known = [f.name for f in dataclasses.fields(self.config)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"objective {self.name!r} has no option {', '.join(map(repr, unknown))}; its "
                f"options: {', '.join(known)} (and {', '.join(COMMON_KEYS[1:])} for the loss)"
            )
        return self.config(**values)

    def defaults(self) -> dict:
        return dataclasses.asdict(self.config())


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add `objective` under its name (each objective module calls this once)."""
    _REGISTRY[objective.name] = objective
    return objective


def names() -> tuple[str, ...]:
    """Every objective module in this package."""
    return tuple(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> Objective:
    """The objective called `name` (its module imported on first use)."""
    if name not in names():
        raise ValueError(
            f"objective.name={name!r} is not supported; expected one of {', '.join(names())}"
        )
    importlib.import_module(f"{__name__}.{name}")
    return _REGISTRY[name]


def load_config(spec: str | None, overrides: list[str]):
    """The run config of `spec` (`configs/X.py[:arg]`, None: the default) with `overrides`
    applied, its `objective` block holding exactly the named objective's keys: the keys a recipe
    leaves out take the objective's defaults, and `--config.objective.name=X` switches the block
    to X's keys (those both objectives have keep their values) before the other overrides, so
    that `--config.objective.<key>` accepts X's keys and names the others unknown."""
    from t5x_lite import run_config

    config = run_config.load(spec)
    name = run_config.override_value(overrides, "objective.name") or config.objective.name
    objective = get(name)
    block = config.objective.to_dict()
    unknown = sorted(set(block) - set(COMMON_KEYS) - set(objective.defaults()))
    if unknown and name == config.objective.name:
        objective.options(**{k: block[k] for k in unknown})  # raises, naming the objective
    kept = {k: v for k, v in block.items() if k in COMMON_KEYS or k in objective.defaults()}
    config.objective = type(config.objective)({**objective.defaults(), **kept, "name": name})
    run_config.apply_overrides(config, overrides)
    return config
