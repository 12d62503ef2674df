"""Analytic model FLOPs and a measured matmul peak, for MFU and benchmark tables.

    per_example = train_flops_per_example(cfg, inputs_length=512, targets_length=114)
    peak = measure_matmul_peak()            # FLOP/s of a large float32 matmul on device 0

Counts multiply-adds as 2 FLOPs, matmuls only (norms, softmax, activations are noise), and
training as 3x the forward pass (forward + two backward matmuls). Encoder-decoder: the encoder
over the input tokens, the decoder and LM head over the target tokens, cross-attention keys and
values over the input tokens. Attention scores count the full S x S (encoder) and T x S
(cross); the decoder's causal self-attention counts half of T x T, the work a causal kernel
does (XLA's dense masked version does the full square).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from t5x_lite import models
from t5x_lite.config import ModelConfig


def _mlp(cfg: ModelConfig, tokens: int) -> float:
    matrices = 3 if cfg.is_gated else 2
    return 2.0 * tokens * cfg.d_model * cfg.d_ff * matrices


def _projections(cfg: ModelConfig, q_tokens: int, kv_tokens: int) -> float:
    inner = cfg.num_heads * cfg.d_kv
    return 2.0 * cfg.d_model * inner * (2 * q_tokens + 2 * kv_tokens)  # q, o  and  k, v


def _scores(cfg: ModelConfig, q_tokens: int, kv_tokens: float) -> float:
    return 2.0 * 2 * q_tokens * kv_tokens * cfg.num_heads * cfg.d_kv  # QK^T and AV


def forward_flops_per_example(
    cfg: ModelConfig, *, inputs_length: int, targets_length: int = 0
) -> float:
    """Forward matmul FLOPs for one example (S input tokens, T target tokens), summed over the
    stacks the assembly runs (`models.StackRun`) and its LM head."""
    runs, head_tokens = models.assembly(cfg).stack_runs(cfg, inputs_length, targets_length)
    flops = 2.0 * head_tokens * cfg.d_model * cfg.vocab_size
    for run in runs:
        t = run.tokens
        per_layer = _projections(cfg, t, t) + _scores(cfg, t, t / 2 if run.causal else t)
        per_layer += _mlp(cfg, t)
        if run.cross_tokens:
            per_layer += _projections(cfg, t, run.cross_tokens) + _scores(cfg, t, run.cross_tokens)
        flops += run.layers * per_layer
    return flops


def train_flops_per_example(
    cfg: ModelConfig, *, inputs_length: int, targets_length: int = 0
) -> float:
    return 3.0 * forward_flops_per_example(
        cfg, inputs_length=inputs_length, targets_length=targets_length
    )


def decode_step_bytes(
    cfg: ModelConfig, *, batch: int, inputs_length: int, position: int, bytes_per_value: int = 4
) -> float:
    """Bytes one cached decoding step of an encoder-decoder must read at least: the decoder's
    weights a token goes through (self-attention q, k, v, o; cross-attention q, o, its K/V having
    been projected once; the MLP; the LM head), the self-attention keys/values cached up to
    `position`, and the cross-attention keys/values over `inputs_length` encoder positions."""
    d, inner, layers = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.decoder_layers
    mlp = (3 if cfg.is_gated else 2) * d * cfg.d_ff
    weights = layers * (6 * d * inner + mlp) + cfg.vocab_size * d
    cached = layers * 2 * batch * inner * (position + inputs_length)
    return float(bytes_per_value * (weights + cached))


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul chain on the default device (best of `repeats`)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype) / n**0.5

    @jax.jit
    def chain(a, b):
        for _ in range(4):
            a = a @ b
        return a

    chain(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        chain(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 4 * 2.0 * n**3 / best


# Dense bf16 peak FLOP/s per device by `device_kind` substring (vendor figures, no sparsity).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p's device_kind; after "TPU v5 lite" (v5e), which it is a prefix of
    "TPU v6": 918e12,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


def peak_flops_per_device(configured: float = 0.0) -> float:
    """The configured peak, else the preset for this device kind, else a measured matmul."""
    if configured > 0:
        return configured
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return measure_matmul_peak(n=1024, repeats=3)
