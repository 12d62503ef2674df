"""Generation with a KV cache, the whole loop inside `jit` (`lax.while_loop`).

    tokens, logprobs = decoding.generate(model, input_ids, attention_mask=mask,
                                         max_new_tokens=32)            # greedy
    tokens, logprobs = decoding.generate(..., temperature=0.7, top_p=0.9, rng=jax.random.key(0))
    tokens, logprobs = decoding.generate(..., num_beams=4, length_penalty=1.0)   # beam search

Returns tokens (B, max_new_tokens), padded after each sequence's EOS, and the log-probability
(float32, from the unscaled logits) of each chosen token, 0 after EOS. Beam search returns the
best beam; its score, as Hugging Face ranks beams, is `beam_scores(tokens, logprobs, ...)`.

Any model with `generates = True` works (`EncoderDecoder`, `DecoderOnly`): its `prefill` runs the
prompt pass (the encoder and cross-attention K/V once, or the decoder-only prompt) into a
`DecodingCache`, and its `step` feeds one token per row. Prompt lengths are padded up to a bucket
(a power of two, at least 16), so calls with similar lengths reuse the compiled programs: the
prompt pass is one, the loop another. Nothing here knows about tokenization or which assembly it
drives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from t5x_lite import cache as cache_lib
from t5x_lite import models
from t5x_lite.cache import DecodingCache

_NEG = -1.0e9  # Hugging Face's "removed" beam score


def bucket_length(length: int, minimum: int = 16) -> int:
    """The padded prompt length compiled for: the next power of two, at least `minimum`."""
    return max(minimum, 1 << max(0, length - 1).bit_length())


def _block_eos(logits, i, min_new_tokens, eos_id):
    """EOS may not end a sequence before `min_new_tokens` (HF's MinNewTokensLength processor)."""
    if not min_new_tokens:
        return logits
    return jnp.where(
        (i < min_new_tokens) & (jnp.arange(logits.shape[-1]) == eos_id), -jnp.inf, logits
    )


# Compile-time arguments of the programs (a new value compiles a new program).
_PREFILL_STATIC = ("max_new_tokens",)
_STATIC = ("max_new_tokens", "min_new_tokens", "eos_id", "pad_id")
_SAMPLE_STATIC = (*_STATIC, "temperature", "top_k", "top_p")
_BEAM_STATIC = (*_STATIC, "num_beams", "length_penalty")


@functools.cache
def _jitted(program, static_argnames: tuple[str, ...]):
    """`jax.jit(program)`, built on first use, so that importing this module starts no backend
    (`jax.distributed.initialize` comes first)."""
    return jax.jit(program, static_argnames=static_argnames)


def _eval_model(model):
    """The traced program's copy of the model (jit passes modules as pytrees) in eval mode (no
    dropout): the caller's model keeps its mode, and a call costs no host-side copy of it."""
    model.eval()
    return model


def _prompt_pass(model, input_ids, attention_mask, *, max_new_tokens):
    return _eval_model(model).prefill(input_ids, attention_mask, max_new_tokens)


@struct.dataclass
class SampleState:
    """The greedy / sampling loop's carry. B batch, N max_new_tokens, V vocab."""

    i: jax.Array  # () int32, tokens chosen so far
    logits: jax.Array  # (B, V) float32, for the next token
    cache: DecodingCache
    tokens: jax.Array  # (B, N) int32, pad after EOS
    logprobs: jax.Array  # (B, N) float32, 0 after EOS
    rng: jax.Array
    done: jax.Array  # (B,) bool: the row has emitted EOS


def _sample_loop(
    model,
    logits,
    cache,
    rng,
    *,
    max_new_tokens,
    min_new_tokens,
    eos_id,
    pad_id,
    temperature,
    top_k,
    top_p,
):
    model = _eval_model(model)
    batch = logits.shape[0]

    def cond(s: SampleState):
        return (s.i < max_new_tokens) & ~jnp.all(s.done)

    def body(s: SampleState):
        log_p = jax.nn.log_softmax(s.logits, axis=-1)
        logits = _block_eos(s.logits, s.i, min_new_tokens, eos_id)
        rng = s.rng
        if temperature > 0:
            rng, key = jax.random.split(rng)
            choice = sample(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
        else:
            choice = jnp.argmax(logits, axis=-1)
        choice = jnp.where(s.done, pad_id, choice).astype(jnp.int32)
        chosen_lp = jnp.take_along_axis(log_p, choice[:, None], -1)[:, 0]
        logits, cache = model.step(choice, s.cache)
        return SampleState(
            i=s.i + 1,
            logits=logits,
            cache=cache,
            tokens=s.tokens.at[:, s.i].set(choice),
            logprobs=s.logprobs.at[:, s.i].set(jnp.where(s.done, 0.0, chosen_lp)),
            rng=rng,
            done=s.done | (choice == eos_id),
        )

    state = SampleState(
        i=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
        rng=rng,
        done=jnp.zeros((batch,), bool),
    )
    state = jax.lax.while_loop(cond, body, state)
    return state.tokens, state.logprobs


def _gather_beams(x, index):
    """x (B, K, ...) -> (B, J, ...): x[b, index[b, j]]."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


@struct.dataclass
class BeamState:
    """Beam search's carry. B batch, K num_beams, N max_new_tokens, V vocab."""

    i: jax.Array  # () int32, tokens chosen so far
    logits: jax.Array  # (B*K, V) float32, each running beam's next-token logits
    cache: DecodingCache  # rows ordered as the running beams, B*K
    running_tokens: jax.Array  # (B, K, N) int32, the running beams
    running_lp: jax.Array  # (B, K, N) float32, their per-token log-probs
    running_scores: jax.Array  # (B, K) sum of log-probs (-1e9: no beam)
    tokens: jax.Array  # (B, K, N) the finished beams, best first
    lp: jax.Array  # (B, K, N)
    scores: jax.Array  # (B, K) length-penalised score (-1e9: empty slot)
    finished: jax.Array  # (B, K) bool: the slot holds a finished beam
    improvable: jax.Array  # (B, 1) bool: a running beam can still beat a finished one
    all_stopped: jax.Array  # () bool: every candidate of the last step stopped


def _beam_search(
    model,
    logits,
    cache,
    *,
    max_new_tokens,
    min_new_tokens,
    eos_id,
    pad_id,
    num_beams,
    length_penalty,
):
    """Hugging Face's vectorised beam search (`early_stopping=False`, one EOS id), step for step:
    keep the 2*num_beams best continuations of all beams; those ending in EOS (or reaching
    max_new_tokens) are scored sum(logprobs) / length**length_penalty and merged into the
    finished set if among the top num_beams; the best unfinished num_beams run on. A row stops
    once no running beam can beat its worst finished one at the current length."""
    model = _eval_model(model)
    batch, beams, n = logits.shape[0], num_beams, max_new_tokens
    # Every beam of a row starts identical; only beam 0 may expand at the first step.
    logits, cache = jnp.repeat(logits, beams, axis=0), cache.repeat_rows(beams)
    vocab = logits.shape[-1]
    keep = 2 * beams
    top_beams = jnp.arange(keep) < beams  # only these candidates may become finished
    flat_offset = (jnp.arange(batch) * beams)[:, None]

    empty_tokens = jnp.full((batch, beams, n), pad_id, jnp.int32)
    empty_lp = jnp.zeros((batch, beams, n), jnp.float32)
    state = BeamState(
        i=jnp.zeros((), jnp.int32),
        logits=logits,
        cache=cache,
        running_tokens=empty_tokens,
        running_lp=empty_lp,
        running_scores=jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(_NEG),
        tokens=empty_tokens,
        lp=empty_lp,
        scores=jnp.full((batch, beams), _NEG, jnp.float32),
        finished=jnp.zeros((batch, beams), bool),
        improvable=jnp.ones((batch, 1), bool),
        all_stopped=jnp.zeros((), bool),
    )

    def cond(s: BeamState):
        return (s.i < n) & jnp.any(s.improvable) & ~s.all_stopped

    def body(s: BeamState):
        i = s.i
        log_p = jax.nn.log_softmax(s.logits, axis=-1)
        scored = _block_eos(log_p, i, min_new_tokens, eos_id).reshape(batch, beams, vocab)
        total = (scored + s.running_scores[..., None]).reshape(batch, beams * vocab)
        cand_scores, flat = jax.lax.top_k(total, keep)  # (B, 2K), best first
        source, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        token_lp = jnp.take_along_axis(log_p.reshape(batch, beams * vocab), flat, axis=1)
        cand_tokens = _gather_beams(s.running_tokens, source).at[:, :, i].set(token)
        cand_lp = _gather_beams(s.running_lp, source).at[:, :, i].set(token_lp)
        stops = (token == eos_id) | (i + 1 >= n)

        # The best num_beams candidates that did not stop keep running.
        live = cand_scores + stops * _NEG
        _, pick = jax.lax.top_k(live, beams)
        running_scores = _gather_beams(live, pick)
        running_tokens = _gather_beams(cand_tokens, pick)
        parent = (_gather_beams(source, pick) + flat_offset).reshape(-1)

        # Candidates that stopped join the finished set if they rank among its best.
        length = (i + 1).astype(jnp.float32)
        final = cand_scores / length**length_penalty
        final = final + (~s.improvable) * _NEG + (~(stops & top_beams)) * _NEG
        merged = jnp.concatenate([s.scores, final], axis=1)
        _, best = jax.lax.top_k(merged, beams)
        scores = _gather_beams(merged, best)
        merge = lambda old, new: _gather_beams(jnp.concatenate([old, new], axis=1), best)
        finished = merge(s.finished, stops & top_beams)

        # Can the best running beam, scored at this length, still beat a finished one?
        best_running = running_scores[:, :1] / length**length_penalty
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), _NEG)
        improvable = s.improvable & jnp.any(best_running > worst_finished, -1, keepdims=True)

        # Each running beam continues its parent's self-attention cache (cross K/V are the same
        # for every beam of a row).
        cache = s.cache.take_rows(parent)
        logits, cache = model.step(running_tokens[:, :, i].reshape(-1), cache)
        return BeamState(
            i=i + 1,
            logits=logits,
            cache=cache,
            running_tokens=running_tokens,
            running_lp=_gather_beams(cand_lp, pick),
            running_scores=running_scores,
            tokens=merge(s.tokens, cand_tokens),
            lp=merge(s.lp, cand_lp),
            scores=scores,
            finished=finished,
            improvable=improvable,
            all_stopped=jnp.all(stops),
        )

    state = jax.lax.while_loop(cond, body, state)
    return state.tokens[:, 0], state.lp[:, 0]


def beam_scores(tokens, logprobs, *, length_penalty: float = 1.0, eos_id: int = 1, pad_id: int = 0):
    """The score beam search ranks by (HF's `sequences_scores`): the sum of the token log-probs
    over length**length_penalty, the length counting generated tokens up to and with EOS."""
    tokens, logprobs = np.asarray(tokens), np.asarray(logprobs)
    n = tokens.shape[1]
    is_eos = tokens == eos_id
    length = np.where(is_eos.any(1), is_eos.argmax(1) + 1, n)
    return logprobs.sum(1) / length.astype(np.float32) ** length_penalty


def filter_logits(
    logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Sampling logits as Hugging Face's warpers make them, in HF's order: temperature,
    then top-k (keep the k largest), then top-p (keep the smallest set of most likely tokens
    whose probability reaches p; always at least one). Removed tokens get -inf. (B, V)."""
    logits = logits / temperature
    if top_k > 0:
        # min of the top-k values, not [..., -1]: XLA:CPU keeps a fast TopK only for the former
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0].min(-1, keepdims=True)
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


_NUCLEUS_CANDIDATES = 256  # top-p looks here first; a full sort only if the nucleus is wider


def sample(key, logits, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row from `filter_logits`' distribution, without sorting the vocabulary.

    With top-k, only the k best logits are sampled from (top-p then applies within them, sorted
    already). Top-p alone looks at the 256 best first and sorts the whole row only when their
    mass is below p. (B, V) -> (B,) int32.
    """
    vocab = logits.shape[-1]
    k = top_k if top_k > 0 else (_NUCLEUS_CANDIDATES if top_p < 1 else 0)
    if k == 0 or k >= vocab:
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    values, index = jax.lax.top_k(logits, k)  # best first
    if top_p < 1:
        # Normalised over the survivors: the top-k set, or the whole vocabulary.
        total = jax.nn.logsumexp(values if top_k > 0 else logits, axis=-1, keepdims=True)
        probs = jnp.exp(values - total)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        values = jnp.where(before < top_p, values, -jnp.inf)  # HF's rule; the best always stays
    pick = lambda: jnp.take_along_axis(
        index, jax.random.categorical(key, values, axis=-1)[:, None], axis=-1
    )[:, 0]
    if top_p < 1 and top_k == 0:  # the nucleus may reach past the candidates: full sort then
        wide = jnp.any(before[:, -1] < top_p)
        full = lambda: jax.random.categorical(key, filter_logits(logits, top_p=top_p), axis=-1)
        return jax.lax.cond(wide, full, pick).astype(jnp.int32)
    return pick().astype(jnp.int32)


# The decoding flags `check_flags` takes (and `generate`, with the model and prompts).
FLAGS = (
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "length_penalty",
)


def check_flags(
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
) -> None:
    """ValueError naming the first flag outside its allowed range (what `generate` checks)."""
    del length_penalty  # any float
    checks = [
        (max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"),
        (
            0 <= min_new_tokens <= max_new_tokens,
            f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}",
        ),
        (temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {temperature}"),
        (top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}"),
        (0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
        (num_beams >= 1, f"num_beams must be >= 1 (1 = no beam search), got {num_beams}"),
        (
            num_beams == 1 or (temperature == 0 and top_k == 0 and top_p == 1),
            "beam search (num_beams > 1) is deterministic: leave temperature=0, top_k=0 and "
            f"top_p=1, got temperature={temperature}, top_k={top_k}, top_p={top_p}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _pad_to_bucket(input_ids, attention_mask, pad_id):
    length = input_ids.shape[1]
    extra = bucket_length(length) - length
    if extra:
        input_ids = np.pad(input_ids, ((0, 0), (0, extra)), constant_values=pad_id)
        attention_mask = np.pad(attention_mask, ((0, 0), (0, extra)))
    return input_ids, attention_mask


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
    length_penalty: float = 1.0,
    eos_id: int = 1,
    pad_id: int = 0,
    rng=None,
):
    """Greedy (temperature 0), sampled, or beam-searched continuation of each input; see the
    module doc. `attention_mask` defaults to `input_ids != pad_id`.

    Sampling applies temperature, then top-k, then top-p, as Hugging Face does; the same `rng`
    gives the same output. Bad flags raise ValueError naming the flag and its allowed range.
    """
    check_flags(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_beams=num_beams,
    )
    if not getattr(model, "generates", False):
        raise TypeError(
            f"generate needs a model that generates (EncoderDecoder or DecoderOnly), got "
            f"{type(model).__name__}"
        )
    input_ids = np.asarray(input_ids, np.int32)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (B, S) batch, got {input_ids.shape}")
    if attention_mask is None:
        attention_mask = input_ids != pad_id
    attention_mask = np.asarray(attention_mask, np.int32)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {attention_mask.shape} must have input_ids' shape {input_ids.shape}"
        )
    if not attention_mask.any(axis=1).all():
        empty = np.flatnonzero(~attention_mask.any(axis=1)).tolist()
        raise ValueError(f"empty prompt: rows {empty} of input_ids have no real tokens")
    input_ids, attention_mask = _pad_to_bucket(input_ids, attention_mask, pad_id)
    cache_lib.check_cache_fits(
        model,
        rows=input_ids.shape[0] * num_beams,
        prompt_length=input_ids.shape[1],
        max_new_tokens=max_new_tokens,
    )
    if num_beams == 1:
        return sample_arrays(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            pad_id=pad_id,
            rng=jax.random.key(0) if rng is None else rng,
        )
    logits, cache = _jitted(_prompt_pass, _PREFILL_STATIC)(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens
    )
    return _jitted(_beam_search, _BEAM_STATIC)(
        model,
        logits,
        cache,
        num_beams=num_beams,
        length_penalty=float(length_penalty),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
    )


def sample_arrays(
    model: models.Model,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    min_new_tokens: int = 0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = 1,
    pad_id: int = 0,
    rng,
):
    """`generate`'s greedy (temperature 0) or sampled loop on device arrays as they are: no
    host-side checks, padding or length buckets, so the inputs may be global arrays laid out
    over a mesh of several processes (PPO's rollouts). The caller checks the flags
    (`check_flags`) and fixes the shapes."""
    logits, cache = _jitted(_prompt_pass, _PREFILL_STATIC)(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens
    )
    return _jitted(_sample_loop, _SAMPLE_STATIC)(
        model,
        logits,
        cache,
        rng,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        eos_id=eos_id,
        pad_id=pad_id,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
    )
