"""Analytic FLOPs against the matrix products the model really traces, and the peak-FLOP/s
presets behind the logged MFU."""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from t5x_lite import config, flops, models

S, T = 12, 8


def traced_matmul_flops(fn, *args) -> float:
    """2 x (multiply-adds) of every dot_general in fn's jaxpr, nested jaxprs included: the
    dense products XLA is asked to compute, counted without looking at `flops`."""

    def walk(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                out = eqn.outvars[0].aval.shape
                total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        total += walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        total += walk(sub)
        return total

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def _forward(name, **overrides):
    """(config, (B=1) forward function of token ids, its arguments) in eval mode."""
    model = models.build(config.get_preset(name, **overrides), seed=0)
    model.eval()
    graphdef, state = nnx.split(model)
    x, y = jnp.ones((1, S), jnp.int32), jnp.ones((1, T), jnp.int32)
    if model.config.architecture == "encoder_decoder":
        return model.config, lambda s, x, y: nnx.merge(graphdef, s)(x, y), (state, x, y)
    return model.config, lambda s, x: nnx.merge(graphdef, s)(x), (state, x)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("t5-tiny", {}),  # gated-gelu, untied head
        ("t5-tiny", dict(feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=3)),
        ("decoder-tiny", {}),
        ("encoder-tiny", {}),
    ],
)
def test_forward_flops_count_every_product(name, overrides):
    """Equal to the traced products, except that the analytic count takes half of the causal
    T x T scores (what a causal kernel computes) where the dense product does them all."""
    cfg, fn, args = _forward(name, **overrides)
    traced = traced_matmul_flops(fn, *args)
    if cfg.architecture == "encoder_decoder":
        analytic = flops.forward_flops_per_example(cfg, inputs_length=S, targets_length=T)
        causal_len, causal_layers = T, cfg.decoder_layers
    elif cfg.architecture == "decoder_only":
        analytic = flops.forward_flops_per_example(cfg, inputs_length=S)
        causal_len, causal_layers = S, cfg.num_layers
    else:
        analytic = flops.forward_flops_per_example(cfg, inputs_length=S)
        causal_len, causal_layers = 0, 0
    # QK^T and AV: 2 products x 2 FLOPs x N x H per (query, key) pair; half the pairs skipped
    skipped = causal_layers * 2 * 2 * cfg.num_heads * cfg.d_kv * causal_len * causal_len / 2
    assert analytic == pytest.approx(traced - skipped, rel=1e-12)
    train = flops.train_flops_per_example(cfg, inputs_length=S, targets_length=T)
    assert train == pytest.approx(
        3 * flops.forward_flops_per_example(cfg, inputs_length=S, targets_length=T)
    )


def test_t5_small_forward_by_hand():
    """t5-small (relu, tied), 512 input and 128 target tokens, counted from the shapes."""
    d, f, n, h, v, layers = 512, 2048, 8, 64, 32128, 6
    s, t = 512, 128
    encoder = layers * (2 * s * d * n * h * 4 + 2 * 2 * s * s * n * h + 2 * s * d * f * 2)
    decoder = layers * (
        2 * t * d * n * h * 4  # self-attention q, k, v, o
        + 2 * 2 * t * (t / 2) * n * h  # causal scores and values
        + 2 * d * n * h * (2 * t + 2 * s)  # cross-attention q, o over T; k, v over S
        + 2 * 2 * t * s * n * h  # cross-attention scores and values
        + 2 * t * d * f * 2  # relu MLP
    )
    head = 2 * t * d * v
    got = flops.forward_flops_per_example(
        config.get_preset("t5-small"), inputs_length=s, targets_length=t
    )
    assert got == pytest.approx(encoder + decoder + head, rel=1e-12)


class _Device:
    def __init__(self, kind):
        self.device_kind = kind


@pytest.mark.parametrize(
    "kind, peak",
    [  # device_kind as JAX reports it; dense bf16 FLOP/s from the vendors' data sheets
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),  # v5e
        ("TPU v5", 459e12),  # v5p
        ("TPU v6 lite", 918e12),  # v6e
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
    ],
)
def test_peak_flops_presets(monkeypatch, kind, peak):
    monkeypatch.setattr(jax, "devices", lambda *a: [_Device(kind)])
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda **kw: pytest.fail("measured"))
    assert flops.peak_flops_per_device() == peak
    assert flops.peak_flops_per_device(123.0) == 123.0  # a configured peak wins


def test_unknown_device_measures_a_matmul(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda *a: [_Device("Some Accelerator 9000")])
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda **kw: 7.0)
    assert flops.peak_flops_per_device() == 7.0
    monkeypatch.undo()
    measured = flops.measure_matmul_peak(n=128, repeats=2)
    assert 1e6 < measured < 1e15  # FLOP/s of this CPU: positive and finite
