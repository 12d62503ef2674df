"""Masks and the attention kernel against naive references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import attention


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
