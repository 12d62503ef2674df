"""Masks and the attention kernel against naive references: Python loops over (batch, query,
key) for the masks and their composition in the models, numpy softmax attention for the kernel,
`KVCache.update` against numpy writes. Property tests draw the data (hypothesis)
at fixed shapes, so each jitted variant compiles once."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from t5x_lite import attention
from t5x_lite.cache import DecodingCache, KVCache


class MaskTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_masks_match_python_loops(self):
        seg = jnp.array([[1, 1, 2, 2, 2, 0]])
        got = self.variant(attention.segment_mask)(seg, seg)[0, 0]
        want = [[seg[0, q] == seg[0, k] and seg[0, k] != 0 for k in range(6)] for q in range(6)]
        chex.assert_trees_all_equal(np.asarray(got), np.array(want))

        pos = jnp.arange(5)
        causal = self.variant(attention.causal_mask)(pos + 2, jnp.arange(8))[0, 0]
        want = [[k <= q + 2 for k in range(8)] for q in range(5)]
        chex.assert_trees_all_equal(np.asarray(causal), np.array(want))

        prefix = self.variant(attention.prefix_mask)(jnp.array([[1, 1, 0]]))[0, 0]
        chex.assert_trees_all_equal(
            np.asarray(prefix), np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
        )

    def test_combine_masks(self):
        a = jnp.array([[[[True, False]]]])
        b = jnp.array([[[[True, True]]]])
        chex.assert_trees_all_equal(attention.combine_masks(a, None, b), a)
        assert attention.combine_masks(None, None) is None


def _naive_attention(q, k, v, bias, mask):
    b, t, n, h = q.shape
    out = np.zeros_like(q)
    for bi in range(b):
        for ni in range(n):
            for ti in range(t):
                scores = np.array(
                    [
                        q[bi, ti, ni] @ k[bi, si, ni] + bias[0, ni, ti, si]
                        if mask[bi, 0, ti, si]
                        else -np.inf
                        for si in range(k.shape[1])
                    ]
                )
                w = np.exp(scores - scores.max())
                w /= w.sum()
                out[bi, ti, ni] = w @ v[bi, :, ni]
    return out


def test_dot_product_attention_matches_loop():
    g = np.random.default_rng(0)
    q, k, v = (g.normal(size=(2, 3, 2, 4)).astype(np.float32) for _ in range(3))
    k, v = np.concatenate([k, k[:, :1]], 1), np.concatenate([v, v[:, :1]], 1)
    bias = g.normal(size=(1, 2, 3, 4)).astype(np.float32)
    mask = np.ones((2, 1, 3, 4), bool)
    mask[1, 0, :, 3] = False
    got = _attend(q, k, v, bias, mask)
    chex.assert_trees_all_close(np.asarray(got), _naive_attention(q, k, v, bias, mask), atol=1e-5)


def test_kv_cache_update_writes_at_the_index():
    """`KVCache.update` writes a step's keys/values (B, N, T, H) at positions index.. and keeps
    the rest."""
    cache = KVCache.zeros(2, 6, 3, 4, jnp.float32)  # batch 2, 6 positions, 3 heads, head dim 4
    g = np.random.default_rng(2)
    k, v = (g.normal(size=(2, 3, 2, 4)).astype(np.float32) for _ in range(2))
    new = jax.jit(cache.update)(k, v, jnp.int32(3))
    want_k, want_v = np.zeros((2, 3, 6, 4), np.float32), np.zeros((2, 3, 6, 4), np.float32)
    want_k[:, :, 3:5], want_v[:, :, 3:5] = k, v
    chex.assert_trees_all_equal(np.asarray(new.k), want_k)
    chex.assert_trees_all_equal(np.asarray(new.v), want_v)
    assert new.length == 6


# ----------------------------------------------------------------------------- properties

B, T, S = 3, 6, 7  # fixed shapes: each jitted variant compiles once, then runs on drawn data


def _settings(n):
    """Few examples (the suite's time budget), no deadline, no example database in the repo."""
    return settings(max_examples=n, deadline=None, database=None)


def _bools(shape):
    return hnp.arrays(np.bool_, shape)


def _ints(shape, lo, hi):
    return hnp.arrays(np.int32, shape, elements=st.integers(lo, hi))


def _full(mask, shape):
    """A (broadcastable) mask at its full shape, as numpy."""
    return np.broadcast_to(np.asarray(mask), shape)


def _loop(batch, queries, keys, rule):
    """The naive mask: a (batch, 1, queries, keys) array whose [b, 0, t, s] is rule(b, t, s)."""
    out = np.zeros((batch, 1, queries, keys), bool)
    for b, t, s in itertools.product(range(batch), range(queries), range(keys)):
        out[b, 0, t, s] = rule(b, t, s)
    return out


class MaskPropertyTest(chex.TestCase):
    """Each mask against a Python loop over (batch, query, key), on drawn padding, positions,
    segments and prefixes."""

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(valid=_bools((B, S)))
    def test_key_padding_mask(self, valid):
        got = self.variant(attention.key_padding_mask)(jnp.asarray(valid))
        chex.assert_trees_all_equal(np.asarray(got), _loop(B, 1, S, lambda b, t, s: valid[b, s]))

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(q_pos=_ints((T,), 0, 12), k_pos=_ints((S,), 0, 12))
    def test_causal_mask(self, q_pos, k_pos):
        got = self.variant(attention.causal_mask)(jnp.asarray(q_pos), jnp.asarray(k_pos))
        want = _loop(1, T, S, lambda b, t, s: k_pos[s] <= q_pos[t])
        chex.assert_trees_all_equal(np.asarray(got), want)

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(q_seg=_ints((B, T), 0, 3), k_seg=_ints((B, S), 0, 3))
    def test_segment_mask(self, q_seg, k_seg):
        got = self.variant(attention.segment_mask)(jnp.asarray(q_seg), jnp.asarray(k_seg))
        want = _loop(B, T, S, lambda b, t, s: q_seg[b, t] == k_seg[b, s] and k_seg[b, s] != 0)
        chex.assert_trees_all_equal(np.asarray(got), want)

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(prefix=_bools((B, T)))
    def test_prefix_mask(self, prefix):
        got = self.variant(attention.prefix_mask)(jnp.asarray(prefix))
        want = _loop(B, T, T, lambda b, i, j: prefix[b, i] and prefix[b, j])
        chex.assert_trees_all_equal(np.asarray(got), want)

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(
        full=_bools((B, 1, T, S)),
        shared=_bools((1, 1, T, S)),
        keys=_bools((B, 1, 1, S)),
        present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    )
    def test_combine_masks(self, full, shared, keys, present):
        masks = [m if p else None for m, p in zip((full, shared, keys), present, strict=True)]
        got = self.variant(_combine_three)(*masks)
        if not any(present):
            assert got is None
            return
        # A mask of size 1 on an axis holds for every index there (broadcasting).
        at = lambda m, b, t, s: m[min(b, m.shape[0] - 1), 0, min(t, m.shape[2] - 1), s]
        want = _loop(B, T, S, lambda b, t, s: all(at(m, b, t, s) for m in masks if m is not None))
        chex.assert_trees_all_equal(_full(got, (B, 1, T, S)), want)

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(30)
    @given(
        valid=_bools((B, T)),
        segments=_ints((B, T), 0, 2),
        prefix=_bools((B, T)),
        present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    )
    def test_model_causal_mask_composition(self, valid, segments, prefix, present):
        """`attention.causal_inputs` (no cache): query i sees key j iff (j <= i, or both are in the
        prefix) and key j is valid (padding mask) / in i's segment and not padding (segments,
        which take precedence)."""
        valid, segments, prefix = (
            x if p else None for x, p in zip((valid, segments, prefix), present, strict=True)
        )
        q, k, got = self.variant(_causal_without_cache)(valid, segments, prefix)

        def sees(b, i, j):
            ok = j <= i or (prefix is not None and prefix[b, i] and prefix[b, j])
            if segments is not None:
                return ok and segments[b, i] == segments[b, j] and segments[b, j] != 0
            return ok and (valid is None or valid[b, j])

        chex.assert_trees_all_equal(_full(got, (B, 1, T, T)), _loop(B, T, T, sees))
        chex.assert_trees_all_equal(np.asarray(q), np.arange(T), np.asarray(k))

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(valid=_bools((B, S)), index=st.integers(0, S - 2), new=st.integers(1, 2))
    def test_model_causal_mask_with_cache(self, valid, index, new):
        """With a cache of S slots and `new` tokens written from slot `index`: query t (at
        position index + t) sees slot s iff s <= index + t and slot s is valid."""
        new = min(new, S - index)
        cache = DecodingCache(jnp.int32(index), [KVCache.zeros(B, S, 2, 4, jnp.float32)])
        q, k, got = self.variant(_causal_with_cache, static_argnums=0)(new, valid, cache)
        want = _loop(B, new, S, lambda b, t, s: s <= index + t and valid[b, s])
        chex.assert_trees_all_equal(_full(got, (B, 1, new, S)), want)
        chex.assert_trees_all_equal(np.asarray(q), index + np.arange(new))
        chex.assert_trees_all_equal(np.asarray(k), np.arange(S))


def _combine_three(a, b, c):
    return attention.combine_masks(a, b, c)


def _causal_without_cache(valid, segments, prefix):
    return attention.causal_inputs(T, valid, segments, prefix, None)


def _causal_with_cache(new, valid, cache):
    return attention.causal_inputs(new, valid, None, None, cache)


def _numpy_attention(q, k, v, bias, mask):
    """softmax(q k^T + bias) v in float64, masked keys at -inf; a row with every key masked
    averages all values (the documented finite fallback)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("btnh,bsnh->bnts", q, k)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        mask = np.broadcast_to(mask, scores.shape)
        scores = np.where(mask, scores, -np.inf)
        scores = np.where(mask.any(-1, keepdims=True), scores, 0.0)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", w, v)


def _attend(q, k, v, bias, mask):
    """dot_product_attention on (B, T, N, H) inputs (the references' layout): it takes and
    returns heads first, (B, N, T, H)."""
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    return jnp.swapaxes(attention.dot_product_attention(q, k, v, bias=bias, mask=mask), 1, 2)


class AttentionPropertyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @_settings(12)
    @given(
        seed=st.integers(0, 2**32 - 1),
        bias_batch=st.sampled_from([0, 1, 2]),  # 0: no bias
        mask_rows=st.sampled_from([0, 1, 11]),  # 0: no mask
    )
    def test_matches_numpy_softmax_attention(self, seed, bias_batch, mask_rows):
        """11 queries against 9 keys, with a shared or per-row bias and a per-query or per-row
        mask, some rows fully masked."""
        g = np.random.default_rng(seed)
        b, t, s, n, h = 2, 11, 9, 2, 4
        q = g.normal(size=(b, t, n, h)).astype(np.float32)
        k, v = (g.normal(size=(b, s, n, h)).astype(np.float32) for _ in range(2))
        bias = g.normal(size=(bias_batch, n, t, s)).astype(np.float32) if bias_batch else None
        mask = None
        if mask_rows:
            mask = g.random((b, 1, mask_rows, s)) < 0.7
            mask[0, 0, -1] = False  # a query (or, per row, every query) with no key to see
        got = self.variant(_attend)(q, k, v, bias, mask)
        chex.assert_trees_all_close(
            np.asarray(got), _numpy_attention(q, k, v, bias, mask), atol=2e-5, rtol=2e-5
        )


# ------------------------------------------------- the projections, against transformers' T5


def _hf_attention(ours: attention.MultiHeadAttention, d_model: int, n: int, h: int):
    """transformers' `T5Attention` holding `ours`'s weights (its q/k/v/o are torch Linears)."""
    import torch
    import transformers
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = transformers.T5Config(d_model=d_model, d_kv=h, num_heads=n, dropout_rate=0.0)
    ref = T5Attention(cfg, has_relative_attention_bias=False).eval()
    with torch.no_grad():
        for name in "qkv":
            w = np.asarray(getattr(ours, name)[...]).reshape(d_model, n * h).T
            getattr(ref, name).weight.copy_(torch.tensor(w))
        ref.o.weight.copy_(torch.tensor(np.asarray(ours.o[...]).reshape(n * h, d_model).T))
    return ref


def _hf_out(ref, x, bias, mask, kv_input=None):
    import torch

    additive = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)
    with torch.no_grad():
        out = ref(
            torch.tensor(x),
            key_value_states=None if kv_input is None else torch.tensor(kv_input),
            position_bias=torch.tensor(bias + additive),
        )[0]
    return out.numpy()


def test_multi_head_attention_matches_transformers():
    """Self- and cross-attention, and a KV-cached decode one token at a time, against HF's
    T5Attention with the same weights, bias and mask."""
    from flax import nnx

    b, t, s, d, n, h = 2, 6, 5, 24, 3, 8
    rng = np.random.default_rng(0)
    ours = attention.MultiHeadAttention(
        d, n, h, dropout_rate=0.0, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
    ref = _hf_attention(ours, d, n, h)
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    bias = rng.normal(size=(1, n, t, t)).astype(np.float32)
    causal = np.tril(np.ones((t, t), bool))[None, None]
    out, cache = ours(jnp.asarray(x), bias=jnp.asarray(bias), mask=jnp.asarray(causal))
    assert cache is None
    expected = _hf_out(ref, x, bias, causal)
    chex.assert_trees_all_close(np.asarray(out), expected, atol=1e-5, rtol=1e-5)

    enc = rng.normal(size=(b, s, d)).astype(np.float32)
    valid = np.arange(s)[None, None, None, :] < np.array([s, 3])[:, None, None, None]
    cross_bias = np.zeros((1, n, t, s), np.float32)
    want = _hf_out(ref, x, cross_bias, valid, kv_input=enc)
    got, _ = ours(jnp.asarray(x), jnp.asarray(enc), mask=jnp.asarray(valid))
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    kv = ours.project_kv(jnp.asarray(enc))  # cross-attention keys/values computed once
    got, _ = ours(jnp.asarray(x), kv=kv, mask=jnp.asarray(valid))
    chex.assert_trees_all_close(np.asarray(got), want, atol=1e-5, rtol=1e-5)

    cache = KVCache.zeros(b, t, n, h, jnp.float32)
    for i in range(t):
        step, cache = ours(
            jnp.asarray(x[:, i : i + 1]),
            bias=jnp.asarray(bias[:, :, i : i + 1]),
            mask=jnp.asarray(np.arange(t) <= i)[None, None, None],
            cache=cache,
            cache_index=jnp.asarray(i),
        )
        chex.assert_trees_all_close(np.asarray(step[:, 0]), expected[:, i], atol=1e-5, rtol=1e-5)
    full = ours.project_kv(jnp.asarray(x))
    chex.assert_trees_all_close((cache.k, cache.v), (full.k, full.v), atol=1e-6, rtol=1e-6)
