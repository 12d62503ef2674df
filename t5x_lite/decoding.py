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
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "min_new_tokens",
        "eos_id",
        "pad_id",
        "start_id",
        "temperature",
        "top_k",
        "top_p",
    ),
)
def _generate(
    graphdef,
    state,
    input_ids,
    attention_mask,
    rng,
    *,
    max_new_tokens,
    min_new_tokens,
    eos_id,
    pad_id,
    start_id,
    temperature,
    top_k,
    top_p,
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
        if min_new_tokens:  # EOS may not end a sequence before min_new_tokens
            logits = jnp.where(
                (i < min_new_tokens) & (jnp.arange(logits.shape[-1]) == eos_id), -jnp.inf, logits
            )
        if temperature > 0:
            rng, key = jax.random.split(rng)
            filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            choice = jax.random.categorical(key, filtered, axis=-1)
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


def filter_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Sampling logits as Hugging Face's warpers make them, in HF's order: temperature,
    then top-k (keep the k largest), then top-p (keep the smallest set of most likely tokens
    whose probability reaches p; always at least one). Removed tokens get -inf. (B, V)."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(logits, axis=-1)  # ascending, as HF's TopPLogitsWarper
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove = cumulative <= 1.0 - top_p
        remove = remove.at[..., -1].set(False)  # keep at least the most likely token
        remove = jnp.take_along_axis(remove, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def _check_flags(max_new_tokens, min_new_tokens, temperature, top_k, top_p, num_beams):
    checks = [
        (max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"),
        (
            0 <= min_new_tokens <= max_new_tokens,
            f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}",
        ),
        (temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {temperature}"),
        (top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}"),
        (0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
        (num_beams >= 1, f"num_beams must be >= 1, got {num_beams}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def generate(
    model: models.Model,
    input_ids,
    *,
    attention_mask=None,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    eos_id: int = 1,
    pad_id: int = 0,
    rng=None,
):
    """Greedy (temperature 0) or sampled continuation of each input; see the module doc.

    Sampling applies temperature, then top-k, then top-p, as Hugging Face does; the same `rng`
    gives the same output. Bad flags raise ValueError naming the flag and its allowed range.
    """
    _check_flags(max_new_tokens, min_new_tokens, temperature, top_k, top_p, num_beams)
    if num_beams > 1:
        raise NotImplementedError("beam search (num_beams > 1) is not implemented yet")
    if not isinstance(model, models.EncoderDecoder):
        raise NotImplementedError("generate supports EncoderDecoder models for now")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (B, S) batch, got {input_ids.shape}")
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
        min_new_tokens=min_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        start_id=model.config.decoder_start_token_id,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
    )
