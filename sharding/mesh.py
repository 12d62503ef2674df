"""The device mesh from `mesh.data`, `mesh.fsdp`, `mesh.tensor` (one of them may be -1).

    mesh = make_mesh(data=-1, fsdp=1, tensor=1)          # every device data-parallel
    mesh = make_mesh(data=2, fsdp=2, tensor=2)           # 8 devices

Axes are ("data", "fsdp", "tensor") with Auto axis types, so `jax.jit` propagates shardings
from the annotated inputs and outputs. With `dcn_data > 1` (multi-slice / multi-node) the data
axis is split so that its outer factor spans the slow links between slices and everything
else stays inside a slice (`mesh_utils.create_hybrid_device_mesh`).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils

AXES = ("data", "fsdp", "tensor")


def resolve_sizes(sizes: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fill the one -1 axis with the remaining devices; check the product is the device count."""
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    for k, v in sizes.items():
        if v != -1 and v < 1:
            raise ValueError(f"mesh.{k}={v}: expected a positive size or -1")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh sizes {sizes} fix {fixed} devices, which does not divide the "
                f"{num_devices} devices available"
            )
        sizes = dict(sizes, **{free[0]: num_devices // fixed})
    product = math.prod(sizes.values())
    if product != num_devices:
        raise ValueError(
            f"mesh sizes {sizes} multiply to {product}, but there are {num_devices} devices; "
            "set one axis to -1 to use the rest"
        )
    return sizes


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, *, dcn_data: int = 1, devices=None
) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_sizes({"data": data, "fsdp": fsdp, "tensor": tensor}, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if dcn_data > 1:
        if sizes["data"] % dcn_data:
            raise ValueError(f"mesh.dcn_data={dcn_data} does not divide mesh.data={sizes['data']}")
        ici = (sizes["data"] // dcn_data, sizes["fsdp"], sizes["tensor"])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices=devices)
    elif len(devices) == len(jax.devices()):
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    else:
        grid = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))
