"""The three model assemblies: `EncoderDecoder` (T5 / Flan-T5), `DecoderOnly`, `EncoderOnly`.

Each exposes `encode`, `decode`, `__call__` and `init_cache`; generation, losses and RLHF call
only these. Argument names mirror Hugging Face's (`input_ids`, `attention_mask`,
`decoder_input_ids`, `decoder_attention_mask`); masks are 1 for real tokens. Packed batches
pass `segment_ids` (0 = padding) instead of masks. Logits are returned in float32.

    from t5x_lite import config, models
    model = models.build(config.get_preset("t5-tiny"), rngs=nnx.Rngs(0))
    logits = model(input_ids, decoder_input_ids, attention_mask=mask)    # (B, T, V)

Dropout is active in train mode (the default); `model.eval()` turns it off.

Shapes: B batch, S input (encoder) length, T target (decoder) length, D d_model, V vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.attention import causal_inputs, cross_attention_mask, self_attention_mask
from t5x_lite.cache import DecodingCache, KVCache
from t5x_lite.config import ModelConfig
from t5x_lite.layers import Dense, Embed, SoftPrompt
from t5x_lite.transformer import Stack, stack_layers


def shift_right(labels: jax.Array, decoder_start_token_id: int = 0, pad_id: int = 0) -> jax.Array:
    """Teacher-forcing decoder inputs: (B, T) labels -> start token + labels[:, :-1].

    Ignored label positions (-100, HF's convention) become padding.
    """
    start = jnp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype)
    shifted = jnp.concatenate([start, labels[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_id, shifted)


def _run_causal(stack, x, key_valid, segment_ids, prefix, cache: DecodingCache | None, **cross):
    """Run a causal `stack` on embeddings x: (hidden, new cache or None). With a cache, the keys
    are masked by `key_valid` if given, else by the cache's own `key_mask`."""
    if cache is not None and key_valid is None:
        key_valid = cache.key_mask
    q, k, mask = causal_inputs(x.shape[1], key_valid, segment_ids, prefix, cache)
    if cache is None:
        return stack(x, mask=mask, query_positions=q, key_positions=k, **cross)[0], None
    hidden, layers = stack(
        x,
        mask=mask,
        query_positions=q,
        key_positions=k,
        cache=cache.layers,
        cache_index=cache.index,
        cross_cache=cache.cross,
        **cross,
    )
    return hidden, cache.replace(index=cache.index + x.shape[1], layers=layers)


def _new_cache(cfg: ModelConfig, num_layers: int, batch_size: int, max_length: int, **fields):
    """A `DecodingCache` of `max_length` empty positions per layer; under an active mesh laid
    out by the same rules as everything else."""
    shape = (batch_size, max_length, cfg.num_heads, cfg.d_kv, cfg.dtype)
    if cfg.scan_layers:  # one cache with a leading layer axis, as the scan consumes it
        layers = KVCache.zeros(*shape, layers=num_layers)
    else:
        layers = [KVCache.zeros(*shape) for _ in range(num_layers)]
    return DecodingCache(index=jnp.zeros((), jnp.int32), layers=layers, **fields)


def _embedding(cfg: ModelConfig, rngs: nnx.Rngs) -> Embed:
    """The token embedding every assembly owns (and ties to its output in T5 v1.0)."""
    return Embed(
        cfg.vocab_size,
        cfg.d_model,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        rngs=rngs,
    )


@dataclasses.dataclass(frozen=True)
class StackRun:
    """One stack's pass over an example, as FLOP and activation counts see it: `layers` blocks
    over `tokens` positions, self-attention causal or not, cross-attention over `cross_tokens`
    encoder positions (0: none)."""

    layers: int
    tokens: int
    causal: bool
    cross_tokens: int = 0


class _Assembly(nnx.Module):
    """Hidden states -> float32 vocabulary logits, tied (scaled by D**-0.5, T5 v1.0) or not;
    and `encode` for the assemblies that own a bidirectional `encoder` stack.

    Each assembly also states its architecture's facts, so callers ask it instead of testing
    `config.architecture`: `features` (the batch features whose lengths size an example),
    `stack_runs` (which stacks run over how many tokens: `flops` and `memory` count from it),
    `generates` (has `prefill` and `step`) and `continues_prompt` (generated tokens extend the
    prompt's own sequence, so a prompt has no EOS and shares the length budget with them).
    """

    features: tuple[str, ...] = ("inputs",)
    generates = False
    continues_prompt = False

    def _init_head(self, cfg: ModelConfig, rngs: nnx.Rngs):
        # A soft prompt before the encoder input, once `prompt_tuning.apply` has set one.
        self.prompt: SoftPrompt | None = nnx.data(None)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Dense(
                cfg.d_model,
                cfg.vocab_size,
                ("embed", "vocab"),
                stddev=cfg.d_model**-0.5,
                dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype),
                rngs=rngs,
            )
        )

    def input_mask(self, attention_mask):
        """The mask over what `encode` returns: `attention_mask` with the soft prompt's
        positions (real) in front, if there is a prompt."""
        return attention_mask if self.prompt is None else self.prompt.mask(attention_mask)

    def logits(self, hidden: jax.Array) -> jax.Array:  # (B, T, D) -> (B, T, V) float32
        if self.lm_head is None:
            out = self.shared.attend(hidden * (self.config.d_model**-0.5))
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def encode(self, input_ids, attention_mask=None, *, segment_ids=None, inputs_embeds=None):
        """(B, S) ids -> (B, S, D) encoder hidden states. `inputs_embeds` replaces the lookup.
        With a soft prompt, its n positions come first: (B, n + S, D) (see `input_mask`)."""
        x = self.shared(input_ids) if inputs_embeds is None else inputs_embeds
        if self.prompt is not None:
            if segment_ids is not None:
                raise ValueError(
                    "a soft prompt needs unpacked inputs: set objective.pack=false (packed rows "
                    "would share one prompt)"
                )
            x, attention_mask = self.prompt(x), self.prompt.mask(attention_mask)
        positions = jnp.arange(x.shape[1])
        hidden, _ = self.encoder(
            x,
            mask=self_attention_mask(attention_mask, segment_ids),
            query_positions=positions,
            key_positions=positions,
        )
        return hidden


class EncoderDecoder(_Assembly):
    """T5 v1.0 / v1.1 / Flan-T5: bidirectional encoder, causal decoder with cross-attention."""

    features = ("inputs", "targets")
    generates = True

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.shared = _embedding(cfg, rngs)
        self.encoder = Stack(cfg, cfg.num_layers, causal=False, cross_attention=False, rngs=rngs)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross_attention=True, rngs=rngs)
        self._init_head(cfg, rngs)

    @staticmethod
    def stack_runs(cfg: ModelConfig, inputs_length: int, targets_length: int = 0):
        """-> ([encoder over S, decoder over T reading S], LM head tokens T)."""
        s, t = inputs_length, targets_length
        runs = [StackRun(cfg.num_layers, s, False), StackRun(cfg.decoder_layers, t, True, s)]
        return runs, t

    def decode(
        self,
        decoder_input_ids,
        encoded,
        attention_mask=None,
        decoder_attention_mask=None,
        *,
        segment_ids=None,
        decoder_segment_ids=None,
        cache=None,
    ):
        """(B, T) decoder ids + (B, S, D) encoded -> (B, T, V) logits.

        `attention_mask` / `segment_ids` describe the encoder input. With `cache` (from
        `init_cache`), the T new tokens are written at `cache.index`, attention covers the
        cache, and `(logits, new_cache)` is returned; `decoder_attention_mask` is then a (B, L)
        mask over cache positions (default: the cache's `key_mask`). A cache made with `encoded`
        holds the cross-attention keys/values and the encoder mask, and `encoded` may be None.
        """
        hidden, new_cache = self.decoder_hidden(
            decoder_input_ids,
            encoded,
            attention_mask,
            decoder_attention_mask,
            segment_ids=segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            cache=cache,
        )
        logits = self.logits(hidden)
        return logits if cache is None else (logits, new_cache)

    def decoder_hidden(
        self,
        decoder_input_ids,
        encoded,
        attention_mask=None,
        decoder_attention_mask=None,
        *,
        segment_ids=None,
        decoder_segment_ids=None,
        cache=None,
    ):
        """`decode` before the LM head: ((B, T, D) final decoder hidden states, new cache or
        None), the features a value head reads."""
        if cache is not None and attention_mask is None:
            attention_mask = cache.cross_mask
        cross = cross_attention_mask(attention_mask, segment_ids, decoder_segment_ids)
        return _run_causal(
            self.decoder,
            self.shared(decoder_input_ids),
            decoder_attention_mask,
            decoder_segment_ids,
            None,
            cache,
            encoded=encoded,
            cross_mask=cross,
        )

    def __call__(
        self,
        input_ids,
        decoder_input_ids,
        attention_mask=None,
        decoder_attention_mask=None,
        *,
        segment_ids=None,
        decoder_segment_ids=None,
    ):
        """Teacher-forced forward: (B, S), (B, T) -> (B, T, V) float32 logits."""
        encoded = self.encode(input_ids, attention_mask, segment_ids=segment_ids)
        return self.decode(
            decoder_input_ids,
            encoded,
            self.input_mask(attention_mask),
            decoder_attention_mask,
            segment_ids=segment_ids,
            decoder_segment_ids=decoder_segment_ids,
        )

    def init_cache(
        self, batch_size: int, max_length: int, encoded=None, attention_mask=None
    ) -> DecodingCache:
        """Self-attention cache for `max_length` decoder tokens; given the (B, S, D) `encoded`
        input (and its (B, S) `attention_mask`), also each layer's cross-attention keys/values,
        projected once, and the mask over them."""
        cache = _new_cache(self.config, self.config.decoder_layers, batch_size, max_length)
        if encoded is None:
            return cache
        return cache.replace(cross=self.decoder.cross_kv(encoded), cross_mask=attention_mask)

    def prefill(self, input_ids, attention_mask, max_new_tokens: int):
        """Generation's prompt pass: the encoder runs once, its cross-attention K/V go into a
        cache with room for the start token and `max_new_tokens`, and the start token is fed.
        -> (logits of the first new token (B, V), cache)."""
        encoded = self.encode(input_ids, attention_mask)
        batch = input_ids.shape[0]
        cache = self.init_cache(batch, max_new_tokens + 1, encoded, self.input_mask(attention_mask))
        start = jnp.full((batch, 1), self.config.decoder_start_token_id, jnp.int32)
        logits, cache = self.decode(start, None, cache=cache)
        return logits[:, -1], cache

    def step(self, tokens: jax.Array, cache: DecodingCache):
        """One token per row (B,) through the cached decoder -> (next logits (B, V), cache)."""
        logits, cache = self.decode(tokens[:, None], None, cache=cache)
        return logits[:, -1], cache


class DecoderOnly(_Assembly):
    """Causal LM (and prefix-LM) from the same blocks: a causal stack without cross-attention."""

    generates = True
    continues_prompt = True

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.shared = _embedding(cfg, rngs)
        self.decoder = Stack(cfg, cfg.num_layers, causal=True, cross_attention=False, rngs=rngs)
        self._init_head(cfg, rngs)

    @staticmethod
    def stack_runs(cfg: ModelConfig, inputs_length: int, targets_length: int = 0):
        """-> ([causal stack over the S-token sequence], LM head tokens S)."""
        return [StackRun(cfg.num_layers, inputs_length, True)], inputs_length

    def _inputs(self, input_ids, attention_mask, segment_ids, prefix):
        """Token embeddings with the soft prompt (if any) in front, and the masks widened to
        it: the prompt's positions are real, in segment 1 (an unpacked row's one document:
        training with a prompt needs objective.pack=false) and part of a prefix-LM's prefix."""
        x = self.shared(input_ids)
        if self.prompt is None:
            return x, attention_mask, segment_ids, prefix
        ones = lambda like: jnp.ones((x.shape[0], self.prompt.num_tokens), like.dtype)
        if segment_ids is not None:
            segment_ids = jnp.concatenate([ones(segment_ids), segment_ids], axis=1)
        if prefix is not None:
            prefix = jnp.concatenate([ones(prefix), prefix], axis=1)
        return self.prompt(x), self.prompt.mask(attention_mask), segment_ids, prefix

    def encode(self, input_ids, attention_mask=None, *, segment_ids=None, prefix=None):
        """(B, T) ids -> (B, T, D) final hidden states (features for value / reward heads);
        with a soft prompt, of the input's positions (the prompt's come before them)."""
        x, mask, segments, prefix = self._inputs(input_ids, attention_mask, segment_ids, prefix)
        hidden, _ = _run_causal(self.decoder, x, mask, segments, prefix, None)
        return hidden if self.prompt is None else hidden[:, self.prompt.num_tokens :]

    def decode(self, input_ids, attention_mask=None, *, segment_ids=None, prefix=None, cache=None):
        """(B, T) ids -> (B, T, V) logits; with `cache`, `(logits, new_cache)` as in
        `EncoderDecoder.decode` (`attention_mask` is then (B, L) over cache positions, default
        the cache's `key_mask`; a soft prompt is in the cache already, from `prefill`).
        `prefix` (B, T) marks prefix-LM inputs that see each other bidirectionally."""
        if cache is None:
            hidden = self.encode(input_ids, attention_mask, segment_ids=segment_ids, prefix=prefix)
            return self.logits(hidden)
        x = self.shared(input_ids)
        hidden, cache = _run_causal(self.decoder, x, attention_mask, segment_ids, prefix, cache)
        return self.logits(hidden), cache

    def __call__(self, input_ids, attention_mask=None, *, segment_ids=None, prefix=None):
        return self.decode(input_ids, attention_mask, segment_ids=segment_ids, prefix=prefix)

    def init_cache(self, batch_size: int, max_length: int, key_mask=None) -> DecodingCache:
        """Cache for `max_length` tokens; `key_mask` (B, max_length) marks real positions."""
        cfg = self.config
        return _new_cache(cfg, cfg.num_layers, batch_size, max_length, key_mask=key_mask)

    def prefill(self, input_ids, attention_mask, max_new_tokens: int):
        """Generation's prompt pass: the prompts are left-aligned (real tokens last; the relative
        position bias sees only distances, so the shift is invisible) and fed in one pass into a
        cache with room for `max_new_tokens` more. -> (logits of the first new token, cache)."""
        x, attention_mask, _, _ = self._inputs(input_ids, attention_mask, None, None)
        order = jnp.argsort(attention_mask.astype(jnp.int32), axis=1, stable=True)
        x = jnp.take_along_axis(x, order[..., None], axis=1)  # a soft prompt moves with its row
        attention_mask = jnp.take_along_axis(attention_mask, order, axis=1)
        batch = x.shape[0]
        new = jnp.ones((batch, max_new_tokens), attention_mask.dtype)
        key_mask = jnp.concatenate([attention_mask, new], axis=1)
        cache = self.init_cache(batch, key_mask.shape[1], key_mask)
        hidden, cache = _run_causal(self.decoder, x, None, None, None, cache)
        return self.logits(hidden)[:, -1], cache

    def step(self, tokens: jax.Array, cache: DecodingCache):
        """One token per row (B,) through the cached decoder -> (next logits (B, V), cache)."""
        logits, cache = self.decode(tokens[:, None], cache=cache)
        return logits[:, -1], cache


class EncoderOnly(_Assembly):
    """Bidirectional encoder with a masked-LM head and a pooled classification/regression head.

    Loads HF `T5EncoderModel` weights (`encode` matches its `last_hidden_state`). The pooled
    head (`classify`) has `config.num_labels` outputs: 1 for regression / reward scores.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.shared = _embedding(cfg, rngs)
        self.encoder = Stack(cfg, cfg.num_layers, causal=False, cross_attention=False, rngs=rngs)
        self._init_head(cfg, rngs)
        self.classifier = (
            Dense(
                cfg.d_model,
                cfg.num_labels,
                ("embed", "classes"),
                stddev=cfg.d_model**-0.5,
                dtype=dtype,
                param_dtype=pdtype,
                rngs=rngs,
                use_bias=True,
            )
            if cfg.num_labels > 0
            else None
        )

    @staticmethod
    def stack_runs(cfg: ModelConfig, inputs_length: int, targets_length: int = 0):
        """-> ([bidirectional stack over S], LM head tokens S)."""
        return [StackRun(cfg.num_layers, inputs_length, False)], inputs_length

    def __call__(self, input_ids, attention_mask=None, *, segment_ids=None) -> jax.Array:
        """Masked-LM logits (B, S, V)."""
        return self.logits(self.encode(input_ids, attention_mask, segment_ids=segment_ids))

    def classify(self, input_ids, attention_mask=None) -> jax.Array:
        """Mean-pooled (over real tokens) head: (B, S) -> (B, num_labels) float32."""
        if self.classifier is None:
            raise ValueError("this EncoderOnly has no classification head: set num_labels > 0")
        hidden = self.encode(input_ids, attention_mask).astype(jnp.float32)
        valid = (
            jnp.ones(input_ids.shape, jnp.float32)
            if attention_mask is None
            else attention_mask.astype(jnp.float32)
        )
        pooled = (hidden * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1), 1.0)[:, None]
        return self.classifier(pooled.astype(self.config.dtype)).astype(jnp.float32)

    def init_cache(self, batch_size: int, max_length: int) -> DecodingCache:
        raise NotImplementedError(
            "EncoderOnly models do not generate, so they have no decoding cache; use an "
            "EncoderDecoder or DecoderOnly model for generation"
        )


ASSEMBLIES = {
    "encoder_decoder": EncoderDecoder,
    "decoder_only": DecoderOnly,
    "encoder_only": EncoderOnly,
}

Model = EncoderDecoder | DecoderOnly | EncoderOnly


def assembly(cfg: ModelConfig) -> type[Model]:
    """The assembly class `cfg.architecture` names: the one place that reads the string."""
    return ASSEMBLIES[cfg.architecture]


def lengths(cfg: ModelConfig, batch: Mapping) -> dict[str, int]:
    """`{"inputs_length": S, "targets_length": T}` from a batch's (B, length) features, for
    the ones this architecture consumes (what `flops` and `memory` take as keywords)."""
    return {f"{name}_length": batch[name].shape[1] for name in assembly(cfg).features}


def build(cfg: ModelConfig, *, rngs: nnx.Rngs | None = None, seed: int = 0) -> Model:
    """The assembly named by `cfg.architecture`, randomly initialised."""
    if rngs is None:
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return assembly(cfg)(cfg, rngs=rngs)


def build_abstract(cfg: ModelConfig, *, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, parameters as shapes, the rest made real) for filling from a checkpoint.

    The parameters are never initialised; the small remainder (dropout rng keys and counters)
    is computed for real, so the merged model also trains.
    """
    graphdef, params, _ = nnx.split(nnx.eval_shape(lambda: build(cfg, seed=seed)), nnx.Param, ...)
    rest = jax.jit(lambda: nnx.split(build(cfg, seed=seed), nnx.Param, ...)[2])()
    return graphdef, params, rest


def with_layout(model: Model, *, scan_layers: bool) -> Model:
    """`model` (in eval mode) with its block stacks unrolled (a list of blocks) or scanned
    (parameters stacked under a leading `layers` axis): the same function, parameters copied."""
    if model.config.scan_layers == scan_layers:
        return model
    params = stack_layers(nnx.to_pure_dict(nnx.state(model, nnx.Param)), scanned=scan_layers)
    graphdef, state, rest = build_abstract(model.config.replace(scan_layers=scan_layers))
    extra = {k for k, _ in nnx.to_flat_state(nnx.State(params))} - {
        k for k, _ in nnx.to_flat_state(state)
    }
    if extra:  # adapters (LoRA) live beside the weights they adapt, one per layer
        raise ValueError(
            f"cannot change model.scan_layers of a model with {'/'.join(map(str, min(extra)))}; "
            "convert the base model, then add its adapters"
        )
    with jax.ensure_compile_time_eval():
        nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state, rest)
    model.eval()
    return model
