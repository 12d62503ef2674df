"""Mesh construction, the logical-axis rules, and training on a sharded mesh (8 fake devices)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from t5x_lite import config, models

REPO = Path(__file__).resolve().parent.parent


def _specs(rules_name, mesh_sizes=(2, 2, 2)):
    mesh = mesh_lib.make_mesh(*mesh_sizes)
    state = nnx.state(nnx.eval_shape(lambda: models.build(config.get_preset("t5-tiny"))))
    shardings = rules_lib.state_shardings(state, mesh, rules_lib.get_rules(rules_name))
    return {"/".join(map(str, p)): s.spec for p, s in nnx.to_flat_state(shardings)}


@pytest.mark.parametrize(
    "rules,expected",
    [
        (
            "dp",
            {
                "shared/embedding": P(None, None),
                "lm_head/kernel": P(None, None),
                "encoder/layers/0/self_attn/q": P(None, None, None),
            },
        ),
        (
            "fsdp",
            {
                "shared/embedding": P(None, "fsdp"),
                "lm_head/kernel": P("fsdp", None),
                "encoder/layers/0/self_attn/q": P("fsdp", None, None),
                "encoder/layers/0/self_attn/o": P(None, None, "fsdp"),
                "decoder/layers/1/mlp/wi_0/kernel": P("fsdp", None),
                "encoder/final_norm/scale": P("fsdp"),
                "encoder/relative_bias/embedding": P(None, None),
            },
        ),
        (
            "fsdp_tp",
            {
                "shared/embedding": P("tensor", "fsdp"),
                "lm_head/kernel": P("fsdp", "tensor"),
                "encoder/layers/0/self_attn/q": P("fsdp", "tensor", None),
                "encoder/layers/0/self_attn/o": P("tensor", None, "fsdp"),
                "decoder/layers/1/mlp/wi_0/kernel": P("fsdp", "tensor"),
                "decoder/layers/1/mlp/wo/kernel": P("tensor", "fsdp"),
                "decoder/layers/0/cross_attn/k": P("fsdp", "tensor", None),
                "encoder/relative_bias/embedding": P(None, "tensor"),
            },
        ),
    ],
)
def test_partition_specs_per_preset(rules, expected):
    specs = _specs(rules)
    for name, spec in expected.items():
        assert specs[name] == spec, name


def test_mesh_sizes():
    mesh = mesh_lib.make_mesh(-1, 2, 1)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(ValueError, match=r"multiply to 12, but there are 8 devices"):
        mesh_lib.make_mesh(3, 2, 2)
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        mesh_lib.make_mesh(-1, 3, 1)


def test_axis_not_dividing_a_parameter_is_named():
    with pytest.raises(
        ValueError,
        match=r"mesh axis 'tensor' \(size 8\) does not divide "
        r"parameter .*_attn/\w of shape \(64, 4, 16\)",
    ):
        _specs("fsdp_tp", (1, 1, 8))


def test_batch_not_divisible():
    with pytest.raises(ValueError, match=r"train.batch_size=6 .* data-parallel size 4"):
        rules_lib.check_batch(6, mesh_lib.make_mesh(2, 2, 2))


def train_on_devices(workdir, devices, steps, **overrides):
    """`t5x-lite train` in a subprocess with `devices` fake CPU devices; its logged metrics."""
    args = {
        "objective.inputs_length": 32,
        "train.batch_size": 8,
        "train.steps": steps,
        "train.log_every": 1,
        "train.eval_every": 0,  # no eval (0: never; any other value also evaluates at the end)
        "train.progress_bar": False,
        "checkpoint.every": 5,
        "checkpoint.async_save": False,
        "model.dropout_rate": 0.0,
        **overrides,
    }
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    cmd = [sys.executable, "-m", "t5x_lite", "train", "--workdir", str(workdir)]
    cmd += [f"--config.{k}={v}" for k, v in args.items()]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """10 steps on one device: what the sharded runs below must reproduce."""
    return train_on_devices(tmp_path_factory.mktemp("one_device"), 1, 10)


def test_sharded_mesh_matches_one_device(tmp_path, one_device):
    cube = train_on_devices(
        tmp_path / "cube",
        8,
        10,
        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "mesh.rules": "fsdp_tp"},
    )
    np.testing.assert_allclose(
        [r["loss"] for r in cube], [r["loss"] for r in one_device], rtol=1e-4
    )


def test_restore_onto_a_different_mesh(tmp_path, one_device):
    reference = one_device
    train_on_devices(tmp_path / "run", 8, 5, **{"mesh.data": 1, "mesh.fsdp": 8})
    resumed = train_on_devices(
        tmp_path / "run",
        4,
        10,
        **{"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 2, "mesh.rules": "fsdp_tp"},
    )
    assert [r["step"] for r in resumed] == list(range(1, 11))
    np.testing.assert_allclose(
        [r["loss"] for r in resumed], [r["loss"] for r in reference], rtol=1e-3
    )
    assert jax.device_count() == 8  # the test process itself keeps its 8 fake devices


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """2 processes x 2 CPU devices (gloo) train like 1 process x 4 devices, and save together."""
    single = train_on_devices(
        tmp_path / "single", 4, 6, **{"mesh.data": 2, "mesh.fsdp": 2, "data.num_shards": 2}
    )
    port = _free_port()
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    args = {
        "objective.inputs_length": 32,
        "train.batch_size": 8,
        "train.steps": 6,
        "train.log_every": 1,
        "train.eval_every": 0,  # no eval (0: never; any other value also evaluates at the end)
        "train.progress_bar": False,
        "checkpoint.every": 3,
        "checkpoint.async_save": False,
        "model.dropout_rate": 0.0,
        "mesh.data": 2,
        "mesh.fsdp": 2,
        "data.num_shards": 2,  # each process reads one of two disjoint shards
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "t5x_lite",
                "train",
                "--workdir",
                str(tmp_path / "multi"),
                "--coordinator_address",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--initialization_timeout",
                "120",
                *[f"--config.{k}={v}" for k, v in args.items()],
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    multi = [
        json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in multi] == list(range(1, 7))
    from t5x_lite import checkpoint

    assert checkpoint.latest_step(tmp_path / "multi" / "checkpoints") == 6
    # Two shards either way: the same global batches, so the same losses.
    np.testing.assert_allclose([r["loss"] for r in multi], [r["loss"] for r in single], rtol=1e-5)


def test_unreachable_coordinator_times_out(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "t5x_lite",
            "train",
            "--workdir",
            str(tmp_path),
            "--coordinator_address",
            f"127.0.0.1:{_free_port()}",
            "--num_processes",
            "2",
            "--process_id",
            "1",
            "--initialization_timeout",
            "5",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 2
    assert "could not join the job through 127.0.0.1" in result.stderr


def test_activation_constraint_follows_the_rules():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    x = jax.numpy.ones((8, 4, 64))
    f = jax.jit(lambda x: rules_lib.constrain(x * 2, ("batch", "length", "embed")))
    with rules_lib.activation_sharding(mesh, rules_lib.get_rules("fsdp_tp")):
        out = f(x)
    want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), None, None))
    assert out.sharding.is_equivalent_to(want, 3)  # embed's fsdp is taken by the batch
    assert rules_lib.constrain(x, ("batch", "length", "embed")) is x  # no mesh: identity


def test_kv_cache_follows_the_rules():
    mesh = mesh_lib.make_mesh(2, 2, 2)
    model = models.build(config.get_preset("t5-tiny"))
    with rules_lib.activation_sharding(mesh, rules_lib.get_rules("fsdp_tp")):
        cache = jax.jit(lambda: model.init_cache(8, 16))()
    want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp"), "tensor", None, None))
    assert cache.layers[0].k.sharding.is_equivalent_to(want, 4)
    scanned = models.build(config.get_preset("t5-tiny", scan_layers=True))
    with rules_lib.activation_sharding(mesh, rules_lib.get_rules("fsdp_tp")):
        cache = jax.jit(lambda: scanned.init_cache(8, 16))()
    want = jax.sharding.NamedSharding(mesh, P(None, ("data", "fsdp"), "tensor", None, None))
    assert cache.layers.k.sharding.is_equivalent_to(want, 5)  # (layers, B, N, L, H)


def test_scanned_parameters_add_a_replicated_layers_axis():
    """With model.scan_layers each block parameter gains a leading `layers` axis of size
    num_layers, replicated; its other axes shard as the unrolled parameter's do."""
    cfg = config.get_preset("t5-tiny", scan_layers=True, num_layers=3)
    params = nnx.state(nnx.eval_shape(lambda: models.build(cfg)), nnx.Param)
    mesh = mesh_lib.make_mesh(2, 2, 2)
    shardings = rules_lib.state_shardings(params, mesh, rules_lib.get_rules("fsdp_tp"))
    stacked = 0
    for (path, var), (_, sharding) in zip(
        nnx.to_flat_state(params), nnx.to_flat_state(shardings), strict=True
    ):
        names, shape = var.get_metadata()["out_sharding"], var.get_value().shape
        if "layers" in path:
            assert names[0] == "layers" and shape[0] == 3, (path, names, shape)
            assert sharding.spec == P(None, *EXPECTED_SPECS[names[1:]][1]), path
            stacked += 1
        else:
            assert sharding.spec == EXPECTED_SPECS[names][1], path
    assert stacked == 9 + 14  # encoder: attention 4 + 2 norms + 3 mlp; the decoder adds 4 + 1


# ----------------------------------------------------------------------------- every preset

# The config field each logical axis name denotes: the independent check of every label.
AXIS_SIZE = {
    "vocab": "vocab_size",
    "embed": "d_model",
    "mlp": "d_ff",
    "heads": "num_heads",
    "kv": "d_kv",
    "relpos_buckets": "relative_attention_num_buckets",
    "classes": "num_labels",
}

# Partition specs derived by hand from RULES, as (fsdp, fsdp_tp): fsdp puts "fsdp" on the embed
# axis; fsdp_tp adds "tensor" on heads / mlp / vocab. dp replicates every parameter.
EXPECTED_SPECS = {
    ("vocab", "embed"):          (P(None, "fsdp"),       P("tensor", "fsdp")),
    ("embed", "vocab"):          (P("fsdp", None),       P("fsdp", "tensor")),
    ("embed", "mlp"):            (P("fsdp", None),       P("fsdp", "tensor")),
    ("mlp", "embed"):            (P(None, "fsdp"),       P("tensor", "fsdp")),
    ("embed", "heads", "kv"):    (P("fsdp", None, None), P("fsdp", "tensor", None)),
    ("heads", "kv", "embed"):    (P(None, None, "fsdp"), P("tensor", None, "fsdp")),
    ("embed",):                  (P("fsdp"),             P("fsdp")),
    ("relpos_buckets", "heads"): (P(None, None),         P(None, "tensor")),
    ("embed", "classes"):        (P("fsdp", None),       P("fsdp", None)),
    ("classes",):                (P(None),               P(None)),
}  # fmt: skip


def _shallow(cfg):
    """The preset with two layers per stack. Tracing a model's init costs time quadratic in its
    parameter count (flax's Variable.set_value asks each tracer for its sharding), and every
    layer is built by the same `Block` call, so depth adds no new parameter kind."""
    return cfg.replace(num_layers=min(cfg.num_layers, 2), num_decoder_layers=None)


@pytest.fixture(scope="module")
def abstract_params():
    """{preset: (its config, its parameters as shapes)}, never initialised."""
    out = {}
    for name, cfg in config.PRESETS.items():
        cfg = _shallow(cfg)
        out[name] = cfg, nnx.state(nnx.eval_shape(lambda cfg=cfg: models.build(cfg)), nnx.Param)
    return out


def test_every_parameter_axis_name_denotes_its_size(abstract_params):
    """Each dimension of each parameter of each preset carries a known logical name, and its
    size is the config field that name stands for (a mislabelled axis fails here)."""
    for name, (cfg, params) in abstract_params.items():
        flat = nnx.to_flat_state(params)
        assert len(flat) > 10, name
        for path, var in flat:
            where = f"{name}: {'/'.join(map(str, path))}"
            names = var.get_metadata().get("out_sharding")
            shape = var.get_value().shape
            assert names is not None and len(names) == len(shape), (where, names, shape)
            for axis, size in zip(names, shape, strict=True):
                assert axis in AXIS_SIZE, (where, names)
                assert size == getattr(cfg, AXIS_SIZE[axis]), (where, names, shape)
            assert names in EXPECTED_SPECS, (where, names)


@pytest.mark.parametrize("rules_name", ["dp", "fsdp", "fsdp_tp"])
def test_every_parameter_spec_follows_the_rules(abstract_params, rules_name):
    mesh = mesh_lib.make_mesh(2, 2, 2)
    rules = rules_lib.get_rules(rules_name)
    for name, (_, params) in abstract_params.items():
        shardings = rules_lib.state_shardings(params, mesh, rules)
        for (path, var), (_, sharding) in zip(
            nnx.to_flat_state(params), nnx.to_flat_state(shardings), strict=True
        ):
            names = var.get_metadata()["out_sharding"]
            if rules_name == "dp":
                want = P(*[None] * len(names))
            else:
                want = EXPECTED_SPECS[names][("fsdp", "fsdp_tp").index(rules_name)]
            assert sharding.spec == want, (name, path, sharding.spec)
            assert sharding.mesh == mesh


def test_fraction_sharded_under_fsdp(abstract_params):
    """fsdp shards exactly the parameters with an embed axis; for T5 that is all but the
    relative position tables."""
    mesh = mesh_lib.make_mesh(1, 8, 1)
    rules = rules_lib.get_rules("fsdp")
    for name, (_, params) in abstract_params.items():
        flat = nnx.to_flat_state(params)
        total = sum(v.get_value().size for _, v in flat)
        with_embed = sum(
            v.get_value().size for _, v in flat if "embed" in v.get_metadata()["out_sharding"]
        )
        got = rules_lib.fraction_sharded(params, rules_lib.state_shardings(params, mesh, rules))
        assert got == pytest.approx(with_embed / total, rel=1e-12), name
        if name.startswith(("t5-", "flan-t5-")):
            assert got >= 0.98, (name, got)
    dp = rules_lib.state_shardings(params, mesh, rules_lib.get_rules("dp"))
    assert rules_lib.fraction_sharded(params, dp) == 0.0


def test_optimizer_state_is_sharded_like_its_parameter():
    """AdamW's moments get their parameter's spec (ZeRO: optimizer state sharded too)."""
    mesh = mesh_lib.make_mesh(2, 2, 2)
    cfg = config.get_preset("t5-tiny")
    model, opt = nnx.eval_shape(
        lambda: (lambda m: (m, nnx.Optimizer(m, optax.adamw(1e-3), wrt=nnx.Param)))(
            models.build(cfg)
        )
    )
    state = nnx.state((model, opt))
    specs = {
        tuple(path): s.spec
        for path, s in nnx.to_flat_state(
            rules_lib.state_shardings(state, mesh, rules_lib.get_rules("fsdp_tp"))
        )
    }
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    checked = 0
    for path, _ in params:
        for moment in ("mu", "nu"):
            opt_path = next(
                p for p in specs if p[0] == 1 and moment in p and p[-len(path) :] == tuple(path)
            )
            assert specs[opt_path] == specs[(0, *path)] != P(), (path, moment)
            checked += 1
    assert checked == 2 * len(params)


class _SliceDevice:
    """A real CPU device that also says which slice it is in (CPU devices have no slices)."""

    def __init__(self, device, slice_index):
        self._device, self.slice_index = device, slice_index

    def __getattr__(self, name):
        return getattr(self._device, name)


@pytest.mark.parametrize("fsdp", [2, 4])
def test_dcn_data_splits_the_data_axis_over_slices(fsdp):
    """Two slices of 4 devices (even and odd ids, so that listing order alone does not group
    them), dcn_data=2: each half of the data axis is one slice, so only data-parallel gradient
    reductions cross the slow links."""
    devices = [_SliceDevice(d, d.id % 2) for d in jax.devices()]
    mesh = mesh_lib.make_mesh(-1, fsdp, 1, dcn_data=2, devices=devices)
    assert dict(mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1}
    grid = mesh.devices
    assert sorted(d.id for d in grid.flat) == list(range(8))  # every device once
    half = grid.shape[0] // 2
    assert {d.slice_index for d in grid[:half].flat} == {0}
    assert {d.slice_index for d in grid[half:].flat} == {1}
    with pytest.raises(ValueError, match="dcn_data=3 does not divide mesh.data=4"):
        mesh_lib.make_mesh(-1, 2, 1, dcn_data=3, devices=devices)
