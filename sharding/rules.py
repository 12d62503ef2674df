"""One table from logical axis names to mesh axes, with presets `dp`, `fsdp`, `fsdp_tp`.

    rules = RULES["fsdp_tp"]
    spec = logical_to_spec(("embed", "mlp"), rules)          # P("fsdp", "tensor")
    shardings = state_shardings(nnx.state(model), mesh, rules)
    batch = batch_sharding(mesh)                             # leading dim over data x fsdp

Parameter names (set once in `t5x_lite/layers.py`): vocab, embed, mlp, heads, kv,
relpos_buckets, classes. Activations use batch / length / embed the same way. The batch is
split over ("data", "fsdp"): FSDP shards parameters but each device still sees its own slice
of the batch. A mesh axis that does not divide a dimension is an error naming the parameter.
"""

from __future__ import annotations

import contextlib
import math

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


RULES: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    # Pure data parallelism: every parameter replicated.
    "dp": {},
    # ZeRO-3 style: parameters and optimizer state sharded along d_model over `fsdp`.
    "fsdp": {"embed": "fsdp"},
    # FSDP along d_model plus Megatron-style tensor parallelism over heads / mlp / vocab.
    "fsdp_tp": {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "vocab": "tensor"},
}


def get_rules(name: str) -> dict:
    if name not in RULES:
        raise ValueError(
            f"mesh.rules={name!r} is not supported; expected one of {', '.join(RULES)}"
        )
    return RULES[name]


def logical_to_spec(names, rules: dict) -> PartitionSpec:
    """Logical axis names -> PartitionSpec; a mesh axis is used at most once per array."""
    rules = {"batch": BATCH_AXES, **rules}
    used, out = set(), []
    for name in names:
        axis = rules.get(name)
        axes = axis if isinstance(axis, tuple) else (axis,)
        if axis is not None and used.intersection(axes):
            axis, axes = None, ()
        used.update(a for a in axes if a is not None)
        out.append(axis)
    return PartitionSpec(*out)


# The mesh and rules that `constrain` applies while a step is traced (None: no constraints).
_ACTIVE: list[tuple[jax.sharding.Mesh, dict]] = []


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: dict):
    """Within this context, `constrain` pins activations to the mesh by the same rules."""
    _ACTIVE.append((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.pop()


def under(mesh: jax.sharding.Mesh, rules: dict, fn):
    """`fn` traced with activation sharding constraints for `mesh` and `rules` (jit it)."""

    def traced(*args):
        with activation_sharding(mesh, rules):
            return fn(*args)

    return traced


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """`with_sharding_constraint` by logical names (e.g. batch, length, embed) if a mesh is
    active; the identity otherwise, so models run unchanged outside `train`."""
    if not _ACTIVE or x.ndim != len(names):
        return x
    mesh, rules = _ACTIVE[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))


def _spec_for(path, variable, mesh, rules) -> PartitionSpec:
    names = variable.get_metadata().get("out_sharding")
    value = variable.get_value()
    shape = getattr(value, "shape", ())
    if not names or len(names) != len(shape):  # e.g. Adafactor's factored moments, counters
        return PartitionSpec()
    spec = logical_to_spec(names, rules)
    is_param = "opt_state" not in path
    axes = []
    for dim, axis in zip(shape, spec, strict=True):
        size = (
            1
            if axis is None
            else math.prod(mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))
        )
        if dim % size:
            if is_param:
                raise ValueError(
                    f"mesh axis {axis!r} (size {size}) does not divide parameter "
                    f"{'/'.join(map(str, path))} of shape {tuple(shape)} (logical axes {names})"
                )
            axis = None  # optimizer statistics with a reduced dim (Adafactor): replicate it
        axes.append(axis)
    spec = PartitionSpec(*axes)
    return spec


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: dict) -> nnx.State:
    """A State of NamedShardings matching `state` (parameters, optimizer state, rng state)."""
    flat = nnx.to_flat_state(state)
    return nnx.from_flat_state(
        [(path, NamedSharding(mesh, _spec_for(path, var, mesh, rules))) for path, var in flat]
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    size = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % size:
        raise ValueError(
            f"train.batch_size={global_batch} is not divisible by the data-parallel size "
            f"{size} (mesh.data={mesh.shape['data']} x mesh.fsdp={mesh.shape['fsdp']})"
        )


def fraction_sharded(state: nnx.State, shardings: nnx.State) -> float:
    """Fraction of parameter elements that are split across devices (MaxText's check)."""
    total = sharded = 0
    for (_, var), (_, sharding) in zip(
        nnx.to_flat_state(state), nnx.to_flat_state(shardings), strict=True
    ):
        size = getattr(var.get_value(), "size", 0)
        total += size
        if any(axis is not None for axis in sharding.spec):
            sharded += size
    return sharded / max(total, 1)
