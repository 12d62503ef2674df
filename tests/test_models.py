"""Shapes, dtypes, masks, caches and presets of the three assemblies (tiny configs)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite import config, models, transformer

B, S, T = 2, 9, 6


def tiny(name="t5-tiny", **overrides):
    model = models.build(config.get_preset(name, **overrides), seed=0)
    model.eval()
    return model


def ids(shape, seed=0, vocab=1024):
    return jax.random.randint(jax.random.key(seed), shape, 2, vocab)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encoder_decoder_shapes_and_dtypes(dtype):
    model = tiny(dtype=dtype)
    cfg = model.config
    encoded = model.encode(ids((B, S)))
    chex.assert_shape(encoded, (B, S, cfg.d_model))
    assert encoded.dtype == jnp.dtype(dtype)
    logits = model(ids((B, S)), ids((B, T), 1))
    chex.assert_shape(logits, (B, T, cfg.vocab_size))
    assert logits.dtype == jnp.float32
    chex.assert_tree_all_finite(logits)
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_only_shapes(dtype):
    model = tiny("decoder-tiny", dtype=dtype)
    logits = model(ids((B, T)))
    chex.assert_shape(logits, (B, T, model.config.vocab_size))
    chex.assert_tree_all_finite(logits)
    chex.assert_shape(model.encode(ids((B, T))), (B, T, model.config.d_model))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_encoder_only_shapes(dtype):
    model = tiny("encoder-tiny", dtype=dtype, num_labels=3)
    mask = jnp.ones((B, S), jnp.int32).at[1, 5:].set(0)
    chex.assert_shape(model(ids((B, S)), mask), (B, S, model.config.vocab_size))
    scores = model.classify(ids((B, S)), mask)
    chex.assert_shape(scores, (B, 3))
    chex.assert_tree_all_finite(scores)
    with pytest.raises(NotImplementedError):
        model.init_cache(B, T)


def test_every_parameter_has_logical_axis_names():
    for name in ("t5-tiny", "decoder-tiny", "encoder-tiny"):
        state = nnx.state(tiny(name), nnx.Param)
        for path, var in nnx.to_flat_state(state):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var.value.ndim, path


def test_relu_tied_variant_has_no_lm_head():
    model = tiny(feed_forward_proj="relu", tie_word_embeddings=True)
    assert model.lm_head is None and model.encoder.layers[0].mlp.wi is not None
    chex.assert_shape(model(ids((B, S)), ids((B, T))), (B, T, 1024))


def test_padding_does_not_change_real_positions():
    model = tiny()
    x, y = ids((1, S)), ids((1, T), 1)
    padded = jnp.concatenate([x, jnp.zeros((1, 4), x.dtype)], axis=1)
    mask = jnp.concatenate([jnp.ones((1, S)), jnp.zeros((1, 4))], axis=1)
    chex.assert_trees_all_close(model(padded, y, mask), model(x, y), atol=1e-5)


def test_packed_segments_equal_separate_sequences():
    """Two documents packed in one row with segment ids give their unpacked logits; this fails
    if attention (self or cross) leaks across the segment boundary."""
    model = tiny()
    a_in, a_out, b_in, b_out = ids((1, 5), 1), ids((1, 3), 2), ids((1, 4), 3), ids((1, 3), 4)
    inputs = jnp.concatenate([a_in, b_in], axis=1)
    targets = jnp.concatenate([a_out, b_out], axis=1)
    seg = jnp.array([[1] * 5 + [2] * 4])
    dseg = jnp.array([[1] * 3 + [2] * 3])
    packed = model(inputs, targets, segment_ids=seg, decoder_segment_ids=dseg)
    # Relative positions make absolute offsets irrelevant, so no position reset is needed.
    chex.assert_trees_all_close(packed[:, :3], model(a_in, a_out), atol=1e-5)
    chex.assert_trees_all_close(packed[:, 3:], model(b_in, b_out), atol=1e-5)

    dec = tiny("decoder-tiny")
    tokens = jnp.concatenate([a_in, b_in], axis=1)
    packed = dec(tokens, segment_ids=seg)
    chex.assert_trees_all_close(packed[:, :5], dec(a_in), atol=1e-5)
    chex.assert_trees_all_close(packed[:, 5:], dec(b_in), atol=1e-5)


def test_prefix_lm_sees_the_whole_prefix():
    model = tiny("decoder-tiny")
    x = ids((1, T))
    prefix = jnp.array([[1, 1, 1, 0, 0, 0]])
    changed = x.at[0, 2].set((x[0, 2] + 1) % 1024)
    a, b = model(x, prefix=prefix), model(changed, prefix=prefix)
    # Position 0 is in the prefix and sees token 2 bidirectionally; under a causal mask it can't.
    assert not np.allclose(a[0, 0], b[0, 0])
    chex.assert_trees_all_close(model(x)[0, 0], model(changed)[0, 0])


@pytest.mark.parametrize(
    "name, batch",
    [
        ("t5-tiny", B),
        ("t5-tiny+cross-cache", B),
        ("decoder-tiny", B),
        ("t5-tiny+cross-cache", 1),
        ("decoder-tiny", 1),
        ("decoder-tiny+scan", B),
    ],
)
def test_cached_decoding_equals_full_forward(name, batch):
    preset, *options = name.split("+")
    model = tiny(preset, scan_layers="scan" in options)
    y = ids((batch, T), 5)
    cache = model.init_cache(batch, T + 2)
    if preset == "t5-tiny":
        x = ids((batch, S))
        encoded = model.encode(x)
        full = model.decode(y, encoded)
        if "cross-cache" in options:  # cross-attention K/V projected once, encoded unused
            cache = model.init_cache(batch, T + 2, encoded=encoded)
            encoded = None
        step = lambda tok, cache: model.decode(tok, encoded, cache=cache)
    else:
        full = model(y)
        step = lambda tok, cache: model.decode(tok, cache=cache)
    # a 2-token prefill, then one token at a time
    logits, cache = step(y[:, :2], cache)
    outs = [logits]
    for t in range(2, T):
        logits, cache = step(y[:, t : t + 1], cache)
        outs.append(logits)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, atol=1e-5)
    assert int(cache.index) == T


def test_dropout_only_in_train_mode():
    model = models.build(config.get_preset("t5-tiny", dropout_rate=0.5), seed=0)
    x, y = ids((B, S)), ids((B, T))
    model.train()
    assert not np.allclose(model(x, y), model(x, y))
    model.eval()
    chex.assert_trees_all_close(model(x, y), model(x, y))


def test_shift_right():
    labels = jnp.array([[5, 6, 7], [8, -100, -100]])
    chex.assert_trees_all_equal(models.shift_right(labels), jnp.array([[0, 5, 6], [0, 8, 0]]))


def test_presets_and_errors():
    for name in (
        "t5-small",
        "t5-base",
        "t5-large",
        "t5-v1_1-small",
        "t5-v1_1-base",
        "t5-v1_1-large",
        "flan-t5-small",
        "flan-t5-base",
        "flan-t5-large",
        "decoder-tiny",
        "decoder-small",
        "encoder-tiny",
        "encoder-small",
    ):
        assert config.get_preset(name).d_model > 0
    with pytest.raises(ValueError, match="unknown model preset 't5-huge'.*flan-t5-base"):
        config.get_preset("t5-huge")
    with pytest.raises(ValueError, match="feed_forward_proj='gelu'.*gated-gelu"):
        config.get_preset("t5-tiny", feed_forward_proj="gelu")
    with pytest.raises(ValueError, match="unknown ModelConfig field.*d_modl"):
        config.get_preset("t5-tiny", d_modl=3)


def _visible(prefix_len: int, t: int, j: int) -> bool:
    """Prefix-LM, by definition: position t sees every earlier token, and a prefix token also
    sees the whole prefix (never a token after it)."""
    return j <= t or (t < prefix_len and j < prefix_len)


def test_prefix_lm_attends_exactly_as_defined():
    """Change one token j at a time (rows with different prefix lengths, 0 and full included):
    the logits at position t change iff t sees j by the prefix-LM definition."""
    model = tiny("decoder-tiny")
    lengths = [0, 1, 3, 5, 8]
    b, t_len = len(lengths), 8
    x = ids((b, t_len), 7)
    prefix = jnp.arange(t_len)[None, :] < jnp.array(lengths)[:, None]  # (B, T) is_prefix
    # row 0 unchanged, then one variant per changed position j: ((T + 1) * B, T)
    variants = [x] + [x.at[:, j].set((x[:, j] + 1) % 1024) for j in range(t_len)]
    logits = model(jnp.concatenate(variants), prefix=jnp.tile(prefix, (t_len + 1, 1)))
    logits = np.asarray(logits).reshape(t_len + 1, b, t_len, -1)
    for j in range(t_len):
        diff = np.abs(logits[j + 1] - logits[0]).max(-1)  # (B, T)
        for row, p in enumerate(lengths):
            for t in range(t_len):
                if _visible(p, t, j):
                    assert diff[row, t] > 1e-3, (p, t, j)
                else:
                    assert diff[row, t] < 1e-5, (p, t, j)


def test_classify_mean_pools_real_tokens_only():
    """Pooled head against numpy: mean of `encode` over real positions, times kernel, plus bias;
    and a padded row scores as the same row without padding."""
    model = tiny("encoder-tiny", num_labels=3)
    model.classifier.bias[...] = jax.random.normal(jax.random.key(3), (3,))
    lengths = [9, 4, 1]
    x = ids((len(lengths), S), 2)
    mask = (jnp.arange(S)[None, :] < jnp.array(lengths)[:, None]).astype(jnp.int32)
    x = jnp.where(mask == 1, x, 0)  # pad id beyond the real tokens
    got = np.asarray(model.classify(x, mask))

    hidden = np.asarray(model.encode(x, mask), np.float64)
    kernel = np.asarray(model.classifier.kernel[...], np.float64)
    bias = np.asarray(model.classifier.bias[...], np.float64)
    for row, n in enumerate(lengths):
        want = hidden[row, :n].mean(0) @ kernel + bias
        np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-5)
    alone = model.classify(x[1:2, : lengths[1]])  # the same tokens, no padding, no mask
    np.testing.assert_allclose(got[1], np.asarray(alone)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,remat",
    [
        ("t5-tiny", "full"),
        ("t5-tiny", "dots_saveable"),
        ("decoder-tiny", "dots_with_no_batch_dims_saveable"),
        ("encoder-tiny", "full"),
    ],
)
def test_remat_policies_keep_the_loss_and_gradients(name, remat):
    """`model.remat` only changes what the backward pass recomputes: loss and gradients of a
    training forward (dropout on, the same rng) equal those without remat, to 1e-5."""
    got, want = _loss_and_grads(name, remat), _loss_and_grads(name, "none")
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


@functools.cache
def _loss_and_grads(name, remat):
    cfg = config.get_preset(name, remat=remat, dropout_rate=0.1, num_layers=2)
    model = models.build(cfg, seed=0)
    model.train()
    graphdef, state = nnx.split(model)
    tokens = ids((B, S))

    @jax.jit
    def step(state):
        m = nnx.merge(graphdef, state)
        if name == "t5-tiny":
            loss = lambda m: jnp.mean(jax.nn.log_softmax(m(tokens, ids((B, T), 1)))[..., 5])
        else:
            loss = lambda m: jnp.mean(jax.nn.log_softmax(m(tokens))[..., 5])
        return nnx.value_and_grad(loss)(m)

    return step(state)


def test_an_unknown_remat_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="remat='dots' is not a remat policy; expected one of "):
        config.get_preset("t5-tiny", remat="dots")


@pytest.mark.parametrize("name", ["t5-tiny", "decoder-tiny", "encoder-tiny"])
def test_scanned_layers_equal_the_unrolled_stack(name):
    """`model.scan_layers` stacks each block parameter under a leading layer axis and scans one
    block: the same logits as the unrolled stack it was converted from (1e-5), and the same loss
    and gradients (remat per layer, inside the scan's body)."""
    unrolled = tiny(name, num_layers=3, remat="full")
    scanned = models.with_layout(unrolled, scan_layers=True)
    stack = scanned.encoder if name != "decoder-tiny" else scanned.decoder
    assert stack.layers.mlp.wo.kernel.shape == (3, 128, 64)  # (layers, d_ff, d_model)
    x, y = ids((B, S)), ids((B, T), 1)
    args = (x, y) if name == "t5-tiny" else (x,)
    chex.assert_trees_all_close(scanned(*args), unrolled(*args), atol=1e-5)

    def loss_and_grads(model):
        graphdef, state = nnx.split(model)
        loss = lambda m: jnp.mean(jax.nn.log_softmax(m(*args))[..., 5])
        return jax.jit(lambda s: nnx.value_and_grad(loss)(nnx.merge(graphdef, s)))(state)

    (got, got_grads), (want, want_grads) = loss_and_grads(scanned), loss_and_grads(unrolled)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    got_grads = transformer.stack_layers(nnx.to_pure_dict(got_grads), scanned=False)
    chex.assert_trees_all_close(got_grads, nnx.to_pure_dict(want_grads), rtol=1e-5, atol=1e-7)


def test_remat_full_under_scanned_layers_cuts_xla_temporaries():
    """With the blocks under a scan, `remat=full` keeps each layer's input only: XLA's temporary
    memory for the compiled gradient (nothing is run) falls by at least 40% against no remat.
    (Unrolled, XLA:CPU merges the recomputation back into the forward pass; GPU and TPU do not.)"""

    def temp_bytes(remat):
        cfg = config.get_preset("t5-tiny", remat=remat, scan_layers=True, num_layers=4)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: models.build(cfg)))
        x = jax.ShapeDtypeStruct((8, 128), jnp.int32)

        def grads(state, x):
            loss = lambda m: jnp.mean(jax.nn.log_softmax(m(x, x))[..., 5])
            return nnx.grad(loss)(nnx.merge(graphdef, state))

        return jax.jit(grads).lower(state, x).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("full") <= 0.6 * temp_bytes("none")
