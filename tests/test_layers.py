"""The dense products: `Dense` and the tied `Embed.attend` compute numpy's product in the compute
dtype, and a library that intercepts `jnp.einsum` and Flax's `promote_dtype` (qwix's int8
post-training quantization) reaches every weight product of a model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from flax import nnx

from t5x_lite import config, layers, models


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_and_tied_embedding_products_equal_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 24), dtype=np.float32)
    kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    dense = layers.Dense(24, 40, ("embed", "mlp"), stddev=1.0, use_bias=True, **kw)
    dense.bias[...] = jnp.asarray(rng.standard_normal(40), jnp.float32)
    embed = layers.Embed(40, 24, **kw)
    y, logits = dense(jnp.asarray(x)), embed.attend(jnp.asarray(x))
    assert y.dtype == dtype and logits.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    want = x @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...])
    chex.assert_trees_all_close(np.asarray(y, np.float32), want, rtol=tol, atol=tol * 10)
    want = x @ np.asarray(embed.embedding[...]).T
    chex.assert_trees_all_close(np.asarray(logits, np.float32), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_qwix_int8_quantizes_every_weight_product(preset):
    """qwix's PTQ swaps every kernel it sees multiplied for int8 values and scales: all q/k/v/o,
    MLP and LM-head kernels (a weight cast inside a module hides its product from qwix), and the
    quantized model's logits stay close to the float model's."""
    model = models.build(config.get_preset(preset), seed=0)
    model.eval()
    ids = jax.random.randint(jax.random.key(0), (2, 8), 3, 1000)
    args = (ids, ids[:, :5]) if preset == "t5-tiny" else (ids,)
    rules = [qwix.QtRule(module_path=".*", weight_qtype="int8")]
    quantized = qwix.quantize_model(model, qwix.PtqProvider(rules), *args)

    def kernels(state):
        return {
            jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)
            if any(f"['{n}']" in jax.tree_util.keystr(path) for n in ("q", "k", "v", "o"))
            or "kernel" in jax.tree_util.keystr(path)
        }

    products = [p for p in kernels(nnx.state(model, nnx.Param)) if "classifier" not in p]
    after = kernels(nnx.state(quantized))
    assert products and len(after) == 2 * len(products)  # each kernel: int8 values + scales
    for path in products:
        name = path.removesuffix(".value")
        assert after[f"{name}['array']['qvalue'].value"].dtype == jnp.int8, path
    ref, got = model(*args), quantized(*args)
    assert float(jnp.max(jnp.abs(got - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
