"""Run configs: load `configs/X.py[:arg]`, apply `--config.key=value` overrides, reject typos.

    config = from_command_line("configs/t5_span_corruption.py:size=small",
                               ["--config.train.steps=100", "--config.model.dtype=bfloat16"])

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. With no file,
the embedded default (`configs/t5_span_corruption.py`, tiny) is used. Overrides are parsed as
Python literals where possible and must keep the field's type; an unknown key is an error that
lists the valid keys closest to it. The ConfigDict stops at `train.py`: library code receives
plain values and frozen dataclasses.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
from pathlib import Path

import ml_collections

DEFAULT_CONFIG = "configs.t5_span_corruption"


def _load_module(spec: str):
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        if not path.exists():
            # `configs/X.py` also resolves to the installed package outside a checkout.
            packaged = Path(__file__).resolve().parent.parent / spec
            if not packaged.exists():
                raise FileNotFoundError(f"config file {spec} does not exist")
            path = packaged
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        source = str(path)
    else:
        module = importlib.import_module(spec)
        source = spec
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {source} defines no get_config(arg) function")
    return module


def load(spec: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict of `path.py[:arg]` (or the embedded default when `spec` is None)."""
    spec = spec or DEFAULT_CONFIG
    path, _, arg = spec.partition(":")
    config = _load_module(path).get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"get_config in {path} returned {type(config).__name__}, "
            "expected an ml_collections.ConfigDict"
        )
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            keys += flat_keys(value, name + ".")
        else:
            keys.append(name)
    return keys


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def set_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set dotted `key` from its command-line text, keeping the field's type."""
    valid = flat_keys(config)
    if key not in valid:
        near = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
        section = key.rsplit(".", 1)[0] + "."
        near += [k for k in valid if k.startswith(section) and k not in near][:8]
        raise KeyError(
            f"unknown config key {key!r}; valid keys near it: {', '.join(near) or '(none)'}"
            + ("" if near else f"; all keys: {', '.join(valid)}")
        )
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    current = node[leaf]
    value = _parse_value(text)
    if isinstance(current, str):
        value = text  # strings stay verbatim (paths like 1e-3 or 'None' are strings here)
    elif isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--config.{key}={text}: expected true or false")
    elif isinstance(current, float) and isinstance(value, int):
        value = float(value)
    elif current is not None and not isinstance(value, type(current)):
        raise ValueError(
            f"--config.{key}={text}: expected a {type(current).__name__} "
            f"(the default is {current!r})"
        )
    node[leaf] = value


def apply_overrides(config: ml_collections.ConfigDict, args: list[str]) -> None:
    """Apply `--config.a.b=value` (or `--config.a.b value`) arguments in order."""
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise ValueError(
                f"unrecognized argument {arg!r}; overrides look like --config.train.steps=100"
            )
        body = arg[len("--config.") :]
        if "=" in body:
            key, text = body.split("=", 1)
        elif i + 1 < len(args):
            key, text = body, args[i + 1]
            i += 1
        else:
            raise ValueError(f"{arg} has no value; write --config.{body}=VALUE")
        set_override(config, key, text)
        i += 1


def override_value(args: list[str], key: str) -> str | None:
    """The text the last `--config.<key>=...` (or `--config.<key> ...`) in `args` gives, if any."""
    value, flag = None, f"--config.{key}"
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
        elif arg == flag and i + 1 < len(args):
            value = args[i + 1]
    return value


def from_command_line(spec: str | None, overrides: list[str]) -> ml_collections.ConfigDict:
    config = load(spec)
    apply_overrides(config, overrides)
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
