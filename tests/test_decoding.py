"""Greedy generation with the KV cache equals a naive loop over the full forward pass; the
sampling filters, `sample`, `_block_eos` and `beam_scores` against numpy references
and Hugging Face's warpers, on drawn logits (hypothesis)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from t5x_lite import cache as cache_lib
from t5x_lite import config, decoding, models


def _generate_rows(rows, model, ids, attention_mask=None, **kwargs):
    """`generate` on the whole batch ("together"), or on each row as a batch of one ("alone"),
    outputs concatenated back."""
    if rows == "together":
        return decoding.generate(model, ids, attention_mask=attention_mask, **kwargs)
    alone = [
        decoding.generate(
            model,
            ids[b : b + 1],
            attention_mask=None if attention_mask is None else attention_mask[b : b + 1],
            **kwargs,
        )
        for b in range(ids.shape[0])
    ]
    return tuple(jnp.concatenate(parts) for parts in zip(*alone, strict=True))


@pytest.mark.parametrize("rows", ["together", "alone"])
def test_greedy_equals_naive_full_forward_loop(rows):
    model = models.build(config.get_preset("t5-tiny"), seed=3)
    model.eval()
    inputs = jax.random.randint(jax.random.key(0), (2, 7), 3, 1000)
    mask = jnp.ones((2, 7), jnp.int32).at[1, 5:].set(0)
    tokens, logprobs = _generate_rows(rows, model, inputs, attention_mask=mask, max_new_tokens=6)
    chex.assert_shape(tokens, (2, 6))

    for b in range(2):
        dec = [0]
        for i in range(6):
            logits = model(inputs[b : b + 1], jnp.array([dec]), mask[b : b + 1])[0, -1]
            choice = int(jnp.argmax(logits))
            assert int(tokens[b, i]) == choice
            chex.assert_trees_all_close(
                float(logprobs[b, i]), float(jax.nn.log_softmax(logits)[choice]), atol=1e-5
            )
            if choice == 1:
                assert (np.asarray(tokens[b, i + 1 :]) == 0).all()
                break
            dec.append(choice)


def test_bad_arguments():
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=2, temperature=-1)


def test_greedy_matches_hugging_face_generate(tmp_path):
    import torch
    from hf_reference import save_random_t5

    from t5x_lite import hf

    ref = save_random_t5(
        tmp_path, vocab_size=64, feed_forward_proj="gated-gelu", tie_word_embeddings=False
    )
    ours = hf.from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(2, 64, (3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    with torch.no_grad():
        expected = ref.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
        ).numpy()[:, 1:]
    tokens, _ = decoding.generate(ours, ids, attention_mask=mask, max_new_tokens=10)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens[:, : expected.shape[1]], expected)
    assert (tokens[:, expected.shape[1] :] == 0).all()


def test_filters_follow_hugging_face_warpers():
    import torch
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.6)]:
        expected = torch.tensor(logits)
        expected = TemperatureLogitsWarper(temperature)(None, expected)
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1:
            expected = TopPLogitsWarper(top_p)(None, expected)
        ours = decoding.filter_logits(
            jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p
        )
        np.testing.assert_array_equal(np.isinf(np.asarray(ours)), np.isinf(expected.numpy()))
        finite = ~np.isinf(expected.numpy())
        np.testing.assert_allclose(np.asarray(ours)[finite], expected.numpy()[finite], rtol=1e-6)


def test_top_k_one_is_greedy_and_sampling_is_seeded():
    model = models.build(config.get_preset("t5-tiny"), seed=1)
    ids = jax.random.randint(jax.random.key(2), (2, 6), 3, 1000)
    greedy, _ = decoding.generate(model, ids, max_new_tokens=5)
    top1, _ = decoding.generate(
        model, ids, max_new_tokens=5, temperature=0.9, top_k=1, rng=jax.random.key(5)
    )
    chex.assert_trees_all_equal(top1, greedy)
    a, _ = decoding.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=jax.random.key(3))
    b, _ = decoding.generate(model, ids, max_new_tokens=5, temperature=1.0, rng=jax.random.key(3))
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"num_beams": 0}, "num_beams must be >= 1"),
    ],
)
def test_flag_ranges(flags, message):
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match=message):
        decoding.generate(model, jnp.ones((1, 3), jnp.int32), max_new_tokens=2, **flags)


def test_empty_prompt_is_an_error():
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match="non-empty"):
        decoding.generate(model, jnp.ones((1, 0), jnp.int32), max_new_tokens=2)


@pytest.mark.parametrize(
    "seed,length_penalty,scan_layers",
    [(4, 1.0, False), (2, 2.0, False), (4, -0.5, False), (2, 2.0, True)],
)
def test_beam_search_matches_hugging_face(tmp_path, seed, length_penalty, scan_layers):
    """num_beams=4: the same best beam as HF's beam search, and its score (HF's
    `sequences_scores`). A small vocabulary makes EOS common, so beams finish early. Scanned
    layers keep their caches with a leading layer axis: beams are chosen on the next one."""
    import torch
    from hf_reference import save_random_t5

    from t5x_lite import hf

    ref = save_random_t5(
        tmp_path,
        vocab_size=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        seed=seed,
    )
    ours = hf.from_pretrained(tmp_path, scan_layers=scan_layers)
    ids = np.random.default_rng(1).integers(2, 12, (4, 7))
    mask = np.ones_like(ids)
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    with torch.no_grad():
        out = ref.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=8,
            num_beams=4,
            length_penalty=length_penalty,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
    expected = out.sequences.numpy()[:, 1:]
    tokens, logprobs = decoding.generate(
        ours, ids, attention_mask=mask, max_new_tokens=8, num_beams=4, length_penalty=length_penalty
    )
    tokens = np.asarray(tokens)
    assert (expected == 1).any(), "the reference should finish some beams with EOS"
    for row, ref_row in zip(tokens, expected, strict=True):
        # HF fills after EOS with EOS (its pad id 0 is falsy); we fill with pad.
        n = int(np.argmax(ref_row == 1)) + 1 if (ref_row == 1).any() else len(ref_row)
        np.testing.assert_array_equal(row[:n], ref_row[:n])
        assert (row[n:] == 0).all()
    chex.assert_trees_all_close(
        decoding.beam_scores(tokens, logprobs, length_penalty=length_penalty),
        out.sequences_scores.numpy(),
        atol=1e-4,
    )


def _naive_greedy(model, prompt, steps):
    """Argmax over the full (uncached) decoder-only forward pass, one token at a time."""
    seq, out, lps = list(prompt), [], []
    for _ in range(steps):
        logits = model(jnp.array([seq]))[0, -1]
        choice = int(jnp.argmax(logits))
        out.append(choice)
        lps.append(float(jax.nn.log_softmax(logits)[choice]))
        if choice == 1:
            break
        seq.append(choice)
    return out, lps


@pytest.mark.parametrize("rows", ["together", "alone"])
def test_decoder_only_greedy_with_padded_prompts_equals_full_forward_loop(rows):
    model = models.build(config.get_preset("decoder-tiny"), seed=2)
    model.eval()
    prompts = [[5, 9, 40, 7, 3], [11, 12], [300, 2, 8, 8]]
    ids = np.zeros((3, 5), np.int32)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = p  # right padding; generate left-aligns the rows
    tokens, logprobs = _generate_rows(rows, model, ids, max_new_tokens=6)
    for b, p in enumerate(prompts):
        expected, lps = _naive_greedy(model, p, 6)
        np.testing.assert_array_equal(np.asarray(tokens[b, : len(expected)]), expected)
        assert (np.asarray(tokens[b, len(expected) :]) == 0).all()
        chex.assert_trees_all_close(np.asarray(logprobs[b, : len(lps)]), np.array(lps), atol=1e-5)


def test_decoder_only_beam_search_is_independent_of_batch_padding():
    model = models.build(config.get_preset("decoder-tiny"), seed=3)
    prompts = [[5, 9, 40, 7, 3, 2, 2], [11, 12]]
    ids = np.zeros((2, 7), np.int32)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = p
    batched, lp = decoding.generate(model, ids, max_new_tokens=5, num_beams=3)
    for b, p in enumerate(prompts):
        alone, alone_lp = decoding.generate(model, np.array([p]), max_new_tokens=5, num_beams=3)
        chex.assert_trees_all_equal(batched[b], alone[0])
        chex.assert_trees_all_close(lp[b], alone_lp[0], atol=1e-5)


class FixedLogits(models.EncoderDecoder):
    """Every decoding step returns the same logits, so each generated token is an independent
    draw from the sampling distribution."""

    def __init__(self, logits):
        super().__init__(config.get_preset("t5-tiny"), rngs=nnx.Rngs(0))
        self.fixed = nnx.Variable(jnp.asarray(logits, jnp.float32))

    def decode(self, ids, encoded, attention_mask=None, *, cache=None, **unused):
        out = jnp.broadcast_to(self.fixed[...], ids.shape + self.fixed.shape)
        return out if cache is None else (out, cache.replace(index=cache.index + ids.shape[1]))


def _expected_distribution(logits, temperature, top_k, top_p):
    """softmax(logits / T) restricted to the top-k, then the top-p set, renormalised: written
    from the definitions with numpy, independent of `filter_logits`."""
    z = logits / temperature
    keep = np.ones(z.shape, bool)
    if top_k:
        keep[np.argsort(-z)[top_k:]] = False
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]  # mass of the strictly more likely tokens
        nucleus = np.zeros(z.shape, bool)
        nucleus[order[before < top_p]] = True
        p = np.where(nucleus, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize(
    "vocab,scale,temperature,top_k,top_p",
    [
        (10, 1.5, 1.0, 0, 1.0),
        (10, 1.5, 0.7, 4, 1.0),
        (10, 1.5, 1.5, 0, 0.8),
        (10, 1.5, 1.2, 6, 0.7),
        (300, 3.0, 1.0, 20, 0.9),  # top-k then top-p within the k
        (300, 3.0, 0.8, 0, 0.6),  # the nucleus lies within the 256 best: no full sort
        (300, 0.1, 1.0, 0, 0.95),  # nearly flat: the nucleus is wider, the full sort runs
    ],
)
def test_sampling_distribution_matches_softmax(vocab, scale, temperature, top_k, top_p):
    """20,000 draws: every token's frequency is within 5 standard errors of its probability
    (a false alarm about once in a million per token), and no token outside the set appears."""
    logits = np.random.default_rng(7).normal(size=vocab) * scale
    model = FixedLogits(logits)
    batch, steps = 2000, 10
    tokens, _ = decoding.generate(
        model,
        np.ones((batch, 3), np.int32),
        max_new_tokens=steps,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=vocab + 1,  # outside the vocabulary: no sequence stops
        rng=jax.random.key(11),
    )
    n = batch * steps
    freq = np.bincount(np.asarray(tokens).ravel(), minlength=vocab)[:vocab] / n
    p = _expected_distribution(logits, temperature, top_k, top_p)
    assert (freq[p == 0] == 0).all()
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_min_new_tokens_holds_back_eos():
    logits = np.zeros(10)
    logits[1] = 5.0  # EOS is by far the most likely token
    model = FixedLogits(logits)
    tokens, _ = decoding.generate(model, np.ones((2, 3)), max_new_tokens=6, min_new_tokens=3)
    tokens = np.asarray(tokens)
    assert (tokens[:, :3] != 1).all() and (tokens[:, 3] == 1).all() and (tokens[:, 4:] == 0).all()
    sampled, _ = decoding.generate(
        model, np.ones((64, 3)), max_new_tokens=4, min_new_tokens=2, temperature=1.0
    )
    assert (np.asarray(sampled)[:, :2] != 1).all()


def test_similar_prompt_lengths_share_one_compilation():
    model = models.build(config.get_preset("t5-tiny"), seed=0)
    loop = decoding._jitted(decoding._sample_loop, decoding._SAMPLE_STATIC)
    before = loop._cache_size()
    for length in (9, 13, 16):  # one bucket: 16
        decoding.generate(model, np.full((2, length), 7), max_new_tokens=3)
    assert loop._cache_size() == before + 1
    decoding.generate(model, np.full((2, 17), 7), max_new_tokens=3)  # the next bucket: 32
    assert loop._cache_size() == before + 2
    assert decoding.bucket_length(3) == 16 and decoding.bucket_length(513) == 1024


def test_generate_runs_in_eval_mode_and_leaves_the_models_mode():
    """A model in train mode with heavy dropout generates what its eval-mode self does (the
    programs switch dropout off in their own copy) and is still in train mode afterwards; a
    second model of the same shapes reuses the compiled loop."""
    cfg = config.get_preset("t5-tiny", dropout_rate=0.5)
    model = models.build(cfg, seed=4)
    model.train()
    ids = np.random.default_rng(0).integers(2, cfg.vocab_size, (2, 9))
    for num_beams in (1, 2):
        trained, _ = decoding.generate(model, ids, max_new_tokens=6, num_beams=num_beams)
        dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout)]
        assert dropouts and not any(d.deterministic for d in dropouts)
        model.eval()
        evaluated, _ = decoding.generate(model, ids, max_new_tokens=6, num_beams=num_beams)
        model.train()
        chex.assert_trees_all_equal(trained, evaluated)
    loop = decoding._jitted(decoding._sample_loop, decoding._SAMPLE_STATIC)
    before = loop._cache_size()
    decoding.generate(models.build(cfg, seed=5), ids, max_new_tokens=6)
    assert loop._cache_size() == before


def test_beam_search_flags():
    model = models.build(config.get_preset("t5-tiny"))
    with pytest.raises(ValueError, match="beam search .* deterministic"):
        decoding.generate(model, np.ones((1, 3)), max_new_tokens=2, num_beams=2, temperature=1)
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        decoding.generate(model, np.array([[5, 6], [0, 0]]), max_new_tokens=2)


# ----------------------------------------------------------------------------- properties


def _settings(n, **kw):
    """Few examples (the suite's time budget), no deadline, no example database in the repo."""
    return settings(max_examples=n, deadline=None, database=None, **kw)


# (temperature, top_k, top_p): a fixed few, so each jitted variant compiles once per entry.
_FILTERS = [
    (0.7, 0, 1.0),
    (1.0, 5, 1.0),
    (1.3, 0, 0.8),
    (0.5, 10, 0.6),
    (1.0, 0, 0.3),
    (2.0, 20, 0.95),
    (1.0, 64, 0.5),  # k above the vocabulary: top-k keeps everything
]


def _reference_filter(logits, temperature, top_k, top_p, margin=1e-5):
    """(kept, unsure) masks from the definitions in float64: scale by 1/temperature, keep the
    k largest (every token tied with the k-th), then the smallest set of most likely tokens
    whose mass reaches top_p: a token stays iff the tokens strictly more likely than it hold
    less than top_p. `unsure`: within `margin` of that threshold, where float32 may go either
    way."""
    z = np.asarray(logits, np.float64) / temperature
    keep = np.ones(z.shape, bool)
    if top_k:
        kth = np.sort(z, axis=-1)[:, ::-1][:, [min(top_k, z.shape[-1]) - 1]]
        keep = z >= kth
    unsure = np.zeros(z.shape, bool)
    if top_p < 1:
        p = np.where(keep, np.exp(z - z.max(-1, keepdims=True)), 0.0)
        p /= p.sum(-1, keepdims=True)
        before = (p[:, None, :] * (p[:, None, :] > p[:, :, None])).sum(-1)  # [b, v]
        unsure = keep & (np.abs(before - top_p) < margin)
        keep &= before < top_p
    return keep, unsure


class FilterPropertyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_FILTERS)
    @_settings(4)
    @given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 1.0, 4.0]))
    def test_filter_logits_matches_definitions_and_hugging_face(
        self, temperature, top_k, top_p, seed, scale
    ):
        import torch
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        logits = (np.random.default_rng(seed).normal(size=(4, 50)) * scale).astype(np.float32)
        got = self.variant(
            decoding.filter_logits, static_argnames=("temperature", "top_k", "top_p")
        )(jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p)
        got = np.asarray(got)
        kept, unsure = _reference_filter(logits, temperature, top_k, top_p)
        sure = ~unsure
        np.testing.assert_array_equal(np.isfinite(got)[sure], kept[sure])
        assert np.isneginf(got[~np.isfinite(got)]).all()  # removed means -inf
        # Kept tokens keep their temperature-scaled logit.
        chex.assert_trees_all_close(got[kept], (logits / temperature)[kept], rtol=1e-6)
        # Hugging Face's warpers (temperature first, as HF's processor order) agree.
        hf = torch.tensor(logits / np.float32(temperature))
        if top_k:
            hf = TopKLogitsWarper(top_k)(None, hf)
        if top_p < 1:
            hf = TopPLogitsWarper(top_p)(None, hf)
        np.testing.assert_array_equal(np.isfinite(got)[sure], np.isfinite(hf.numpy())[sure])

    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(
        logits=hnp.arrays(np.float32, (3, 12), elements=st.sampled_from([-2.0, 0.0, 1.0, 3.0])),
        top_k=st.sampled_from([1, 3, 7]),
    )
    def test_top_k_keeps_every_token_tied_with_the_kth(self, logits, top_k):
        """Ties: the k-th largest value is a threshold; every token at or above it stays, so a
        row may keep more than k (HF's rule: remove only what is below the k-th)."""
        got = self.variant(decoding.filter_logits, static_argnames="top_k")(
            jnp.asarray(logits), top_k=top_k
        )
        for b in range(logits.shape[0]):
            kth = sorted(logits[b], reverse=True)[top_k - 1]
            want = [x if x >= kth else -np.inf for x in logits[b]]
            np.testing.assert_array_equal(np.asarray(got[b]), np.array(want, np.float32))


# The sampled distributions: V = 300 so top-p alone first looks at the 256 best (the nucleus
# fits in them at a wide spread, needs the full sort when flat), top-k samples within the k.
_SAMPLERS = [
    (1.0, 0, 0.6, 3.0),  # (temperature, top_k, top_p, logit spread)
    (1.0, 0, 0.95, 0.1),  # nearly flat: the nucleus is wider than the 256 candidates
    (0.8, 20, 1.0, 3.0),
    (1.2, 30, 0.7, 2.0),
]


class SamplePropertyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*_SAMPLERS)
    @_settings(2, derandomize=True)  # a statistical test: the same draws on every run
    @given(seed=st.integers(0, 2**31 - 1))
    def test_sample_draws_from_the_filtered_softmax(self, temperature, top_k, top_p, spread, seed):
        """4,000 rows with the same logits, one key: every draw is a kept token, and each
        token's frequency is within 6 standard errors (+ 1/n) of its filtered softmax
        probability."""
        rows, vocab = 4000, 300
        logits = np.random.default_rng(seed).normal(size=(1, vocab)) * spread
        got = self.variant(decoding.sample, static_argnames=("temperature", "top_k", "top_p"))(
            jax.random.key(seed),
            jnp.asarray(np.repeat(logits, rows, 0), jnp.float32),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        got = np.asarray(got)
        assert got.shape == (rows,) and got.dtype == np.int32
        kept, unsure = _reference_filter(logits, temperature, top_k, top_p)
        assert (kept | unsure)[0, got].all(), "a removed token was drawn"
        z = np.where(kept[0], logits[0] / temperature, -np.inf)
        p = np.exp(z - z.max())
        p /= p.sum()
        freq = np.bincount(got, minlength=vocab) / rows
        tol = 6 * np.sqrt(p * (1 - p) / rows) + 1 / rows
        assert (np.abs(freq - p)[~unsure[0]] <= tol[~unsure[0]]).all()


class StepPropertyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @_settings(25)
    @given(
        step=st.integers(0, 5),
        min_new_tokens=st.sampled_from([0, 3]),
        eos_id=st.sampled_from([1, 7]),
        seed=st.integers(0, 2**32 - 1),
    )
    def test_block_eos_only_before_min_new_tokens(self, step, min_new_tokens, eos_id, seed):
        logits = np.random.default_rng(seed).normal(size=(3, 11)).astype(np.float32)
        got = self.variant(decoding._block_eos, static_argnums=(2, 3))(
            jnp.asarray(logits), jnp.int32(step), min_new_tokens, eos_id
        )
        want = logits.copy()
        if step < min_new_tokens:
            want[:, eos_id] = -np.inf
        chex.assert_trees_all_equal(np.asarray(got), want)


@_settings(50)
@given(
    tokens=hnp.arrays(np.int32, (4, 7), elements=st.integers(0, 4)),
    seed=st.integers(0, 2**32 - 1),
    length_penalty=st.sampled_from([-0.5, 0.0, 1.0, 2.0]),
)
def test_beam_scores_match_a_python_loop(tokens, seed, length_penalty):
    """sum(logprobs) / length**length_penalty, the length counting tokens up to and with the
    first EOS (1), or all of them; log-probs are 0 after EOS, as `generate` returns them."""
    logprobs = -np.random.default_rng(seed).random(tokens.shape).astype(np.float32)
    want = []
    for row, lps in zip(tokens.tolist(), logprobs, strict=True):
        length = row.index(1) + 1 if 1 in row else len(row)
        lps[length:] = 0.0
        want.append(sum(float(x) for x in lps) / length**length_penalty)
    got = decoding.beam_scores(tokens, logprobs, length_penalty=length_penalty)
    chex.assert_trees_all_close(np.asarray(got, np.float64), np.array(want), rtol=1e-5)


@pytest.mark.parametrize("architecture", ["encoder_decoder", "decoder_only"])
def test_a_cache_too_large_for_memory_is_an_error_naming_max_new_tokens(architecture, monkeypatch):
    cfg = config.get_preset("t5-tiny", architecture=architecture, dtype="bfloat16")
    model = models.build(cfg)
    # The formula against the arrays the model allocates for a cache.
    cache = model.init_cache(3, 40)
    allocated = sum(x.nbytes for layer in cache.layers for x in (layer.k, layer.v))
    assert cache_lib.cache_bytes(cfg, rows=3, length=40) == allocated
    prompt = np.full((2, 8), 5)  # two rows, 16 positions once bucketed
    prompt_cached = 16 if architecture == "decoder_only" else 0
    free = 2 * cache_lib.cache_bytes(cfg, rows=2, length=prompt_cached + 50)
    monkeypatch.setattr(cache_lib, "free_memory_bytes", lambda: free)
    decoding.generate(model, prompt, max_new_tokens=50)  # fits in half the free memory
    with pytest.raises(ValueError, match=r"max_new_tokens=51 needs .* at most about 50 new"):
        decoding.generate(model, prompt, max_new_tokens=51)
