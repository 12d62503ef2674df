"""Masks and the attention kernel against naive references: Python loops over (batch, query,
key) for the masks and their composition in the models, numpy softmax attention for the kernel,
autodiff of plain addition for `add_bias`' gradient. Property tests draw the data (hypothesis)
at fixed shapes, so each jitted variant compiles once."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from t5x_lite import attention, models


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
    got = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    chex.assert_trees_all_close(np.asarray(got), _naive_attention(q, k, v, bias, mask), atol=1e-5)


def test_shared_bias_gradient_sums_over_batch():
    """add_bias' custom gradient (a halving sum) equals the broadcast's autodiff gradient."""
    for batch in (1, 5, 8):
        scores = jax.random.normal(jax.random.key(batch), (batch, 2, 3, 4))
        bias = jax.random.normal(jax.random.key(9), (1, 2, 3, 4))
        w = jax.random.normal(jax.random.key(7), (batch, 2, 3, 4))
        ours = jax.grad(lambda s, b, w=w: (attention.add_bias(s, b) * w).sum(), (0, 1))
        plain = jax.grad(lambda s, b, w=w: ((s + b) * w).sum(), (0, 1))
        chex.assert_trees_all_close(ours(scores, bias), plain(scores, bias), atol=1e-5)


def test_query_blocks_match_loop_and_gradients(monkeypatch):
    """Blocked attention (blocks of 4 queries, a remainder of 3) equals the naive loop, and so
    do its gradients against a single block's."""
    g = np.random.default_rng(1)
    q = g.normal(size=(2, 11, 2, 4)).astype(np.float32)
    k, v = (g.normal(size=(2, 6, 2, 4)).astype(np.float32) for _ in range(2))
    bias = g.normal(size=(1, 2, 11, 6)).astype(np.float32)
    mask = np.ones((2, 1, 11, 6), bool)
    mask[0, 0, :, 4:] = False
    mask[1, 0, 7:, 0] = False

    def loss(q, k, v, bias):
        return (attention.dot_product_attention(q, k, v, bias=bias, mask=mask) ** 2).sum()

    whole = jax.grad(loss, (0, 1, 2, 3))(q, k, v, bias)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    got = attention.dot_product_attention(q, k, v, bias=bias, mask=mask)
    chex.assert_trees_all_close(np.asarray(got), _naive_attention(q, k, v, bias, mask), atol=1e-5)
    chex.assert_trees_all_close(jax.grad(loss, (0, 1, 2, 3))(q, k, v, bias), whole, atol=1e-5)


def test_one_query_heads_first_matches_loop():
    """A decoding step (one query against the caches' heads-first layouts) equals the naive
    loop."""
    g = np.random.default_rng(2)
    for s in (1, 5, 8, 13):
        q = g.normal(size=(3, 1, 2, 4)).astype(np.float32)
        k, v = (g.normal(size=(3, s, 2, 4)).astype(np.float32) for _ in range(2))
        bias = g.normal(size=(1, 2, 1, s)).astype(np.float32)
        mask = np.ones((3, 1, 1, s), bool)
        mask[1, 0, 0, 0] = s == 1  # a masked key (none when it is the only one)
        got = attention.dot_product_attention(
            q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), bias=bias, mask=mask,
            heads_first=True,
        )  # fmt: skip
        want = _naive_attention(q, k, v, bias, mask)
        chex.assert_trees_all_close(np.asarray(got), want, atol=1e-5)


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
        """`models._causal_inputs` (no cache): query i sees key j iff (j <= i, or both are in the
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
        cache = {"index": jnp.int32(index), "layers": [{"v": jnp.zeros((B, 2, S, 4))}]}
        q, k, got = self.variant(_causal_with_cache, static_argnums=0)(new, valid, cache)
        want = _loop(B, new, S, lambda b, t, s: s <= index + t and valid[b, s])
        chex.assert_trees_all_equal(_full(got, (B, 1, new, S)), want)
        chex.assert_trees_all_equal(np.asarray(q), index + np.arange(new))
        chex.assert_trees_all_equal(np.asarray(k), np.arange(S))


def _combine_three(a, b, c):
    return attention.combine_masks(a, b, c)


def _causal_without_cache(valid, segments, prefix):
    return models._causal_inputs(T, valid, segments, prefix, None)


def _causal_with_cache(new, valid, cache):
    return models._causal_inputs(new, valid, None, None, cache)


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


def _attend(q, k, v, bias, mask, heads_first):
    if heads_first:  # the decoding caches' layout: keys (B, N, H, S), values (B, N, S, H)
        k, v = jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))
    return attention.dot_product_attention(q, k, v, bias=bias, mask=mask, heads_first=heads_first)


class AttentionPropertyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @_settings(12)
    @given(
        seed=st.integers(0, 2**32 - 1),
        bias_batch=st.sampled_from([0, 1, 2]),  # 0: no bias
        mask_rows=st.sampled_from([0, 1, attention.QUERY_BLOCK + 3]),  # 0: no mask
        heads_first=st.booleans(),
    )
    def test_matches_numpy_softmax_attention(self, seed, bias_batch, mask_rows, heads_first):
        """131 queries (a block of 128 and one of 3) against 9 keys, in both layouts, with a
        shared or per-row bias and a per-query or per-row mask, some rows fully masked."""
        g = np.random.default_rng(seed)
        b, t, s, n, h = 2, attention.QUERY_BLOCK + 3, 9, 2, 4
        q = g.normal(size=(b, t, n, h)).astype(np.float32)
        k, v = (g.normal(size=(b, s, n, h)).astype(np.float32) for _ in range(2))
        bias = g.normal(size=(bias_batch, n, t, s)).astype(np.float32) if bias_batch else None
        mask = None
        if mask_rows:
            mask = g.random((b, 1, mask_rows, s)) < 0.7
            mask[0, 0, -1] = False  # a query (or, per row, every query) with no key to see
        got = self.variant(_attend, static_argnames="heads_first")(
            q, k, v, bias, mask, heads_first=heads_first
        )
        chex.assert_trees_all_close(
            np.asarray(got), _numpy_attention(q, k, v, bias, mask), atol=2e-5, rtol=2e-5
        )

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(12)
    @given(batch=st.sampled_from([1, 3, 6]), shared=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def test_add_bias_gradient_is_the_broadcast_sum(self, batch, shared, seed):
        """add_bias' custom VJP (a halving sum over the batch, odd remainders included) against
        autodiff of plain addition, for a bias shared by the batch (1, ...) or one per row."""
        keys = jax.random.split(jax.random.key(seed), 3)
        scores = jax.random.normal(keys[0], (batch, 2, 3, 4))
        bias = jax.random.normal(keys[1], (1 if shared else batch, 2, 3, 4))
        w = jax.random.normal(keys[2], (batch, 2, 3, 4))
        ours = self.variant(jax.grad(_weighted_add_bias, (0, 1)))(scores, bias, w)
        plain = jax.grad(lambda s, b: ((s + b) * w).sum(), (0, 1))(scores, bias)
        chex.assert_trees_all_close(ours, plain, atol=1e-5, rtol=1e-5)


def _weighted_add_bias(scores, bias, w):
    return (attention.add_bias(scores, bias) * w).sum()
