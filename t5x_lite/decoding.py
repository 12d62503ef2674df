"""Generation with a KV cache, the whole loop inside `jit` (`lax.while_loop`).

    tokens, logprobs = decoding.generate(model, input_ids, attention_mask=mask,
                                         max_new_tokens=32)            # greedy
    tokens, logprobs = decoding.generate(..., temperature=0.7, rng=jax.random.key(0))

Returns tokens (B, max_new_tokens), padded after each sequence's EOS, and the log-probability
(float32, from the unscaled logits) of each chosen token, 0 after EOS. The encoder runs once;
each step feeds one token through `model.decode` with the self-attention cache. Only calls
`encode`, `decode` and `init_cache`, so it knows nothing about tokenization.

Encoder-decoder models only for now: decoder-only prompting needs left-padded prefill.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite import models


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "eos_id", "pad_id", "start_id", "temperature"),
)
def _generate(
    graphdef,
    state,
    input_ids,
    attention_mask,
    rng,
    *,
    max_new_tokens,
    eos_id,
    pad_id,
    start_id,
    temperature,
):
    model = nnx.merge(graphdef, state)
    batch = input_ids.shape[0]
    encoded = model.encode(input_ids, attention_mask)
    cache = model.init_cache(batch, max_new_tokens)
    tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
    logprobs = jnp.zeros((batch, max_new_tokens), jnp.float32)
    last = jnp.full((batch,), start_id, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(carry):
        i, *_, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, last, tokens, logprobs, rng, done = carry
        logits, cache = model.decode(last[:, None], encoded, attention_mask, cache=cache)
        logits = logits[:, 0]  # (B, V) float32
        log_p = jax.nn.log_softmax(logits, axis=-1)
        if temperature > 0:
            rng, key = jax.random.split(rng)
            choice = jax.random.categorical(key, logits / temperature, axis=-1)
        else:
            choice = jnp.argmax(logits, axis=-1)
        choice = jnp.where(done, pad_id, choice).astype(jnp.int32)
        chosen_lp = jnp.where(done, 0.0, jnp.take_along_axis(log_p, choice[:, None], -1)[:, 0])
        tokens = tokens.at[:, i].set(choice)
        logprobs = logprobs.at[:, i].set(chosen_lp)
        done = done | (choice == eos_id)
        return i + 1, cache, choice, tokens, logprobs, rng, done

    carry = (jnp.zeros((), jnp.int32), cache, last, tokens, logprobs, rng, done)
    _, _, _, tokens, logprobs, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, logprobs


def generate(
    model: models.Model,
    input_ids,
    *,
    attention_mask=None,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_id: int = 1,
    pad_id: int = 0,
    rng=None,
):
    """Greedy (temperature 0) or sampled continuation of each input; see the module doc."""
    if not isinstance(model, models.EncoderDecoder):
        raise NotImplementedError("generate supports EncoderDecoder models for now")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = (input_ids != pad_id).astype(jnp.int32)
    if rng is None:
        rng = jax.random.key(0)
    model = nnx.merge(*nnx.split(model))  # a view in eval mode; the caller's keeps its mode
    model.eval()
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        input_ids,
        jnp.asarray(attention_mask),
        rng,
        max_new_tokens=max_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        start_id=model.config.decoder_start_token_id,
        temperature=float(temperature),
    )
