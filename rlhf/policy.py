"""A PPO policy: a generating model (`EncoderDecoder` or `DecoderOnly`) with a scalar value head
on its final hidden states, and the frozen reference it is held close to.

    policy = Policy(lm, rngs=nnx.Rngs(0))          # lm as fine-tuned: full, LoRA or prompt
    logits, values = policy(batch)                   # teacher-forced over the sampled responses
    train = trainable(lm)                            # what PPO updates (and the value head)
    ref = reference_state(policy.lm, train)          # the reference: a copy of just that part
    ref_logits = forward(with_reference(policy.lm, train, ref), batch)[0]

A rollout batch holds `prompt_ids`, `prompt_mask` (B, S) and `response`, `response_mask`
(B, T): the sampled tokens, and 1 on each up to and including the first EOS. Decoder-only
prompts are left-padded (real tokens last), as generation lays them out, so a prompt and its
response form one sequence with the relative distances generation saw.

The reference is the policy as it is when PPO starts. Only the variables PPO trains are
copied: with a LoRA (or soft-prompt) policy the reference is the same frozen base with the
starting adapter, so it costs the adapter's bytes, not a second model, and KL at step 0 is 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import adapters, models


class ValueParam(nnx.Param):
    """The value head's parameters: trained by PPO whatever else is frozen."""


class ValueHead(nnx.Module):
    """(B, T, D) hidden states -> (B, T) float32 values: one linear layer with a bias."""

    def __init__(self, d_model: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        normal = jax.nn.initializers.normal(d_model**-0.5)
        kernel = normal(rngs.params(), (d_model, 1), param_dtype)
        self.kernel = ValueParam(kernel, out_sharding=("embed", "classes"), eager_sharding=False)
        bias = jnp.zeros((1,), param_dtype)
        self.bias = ValueParam(bias, out_sharding=("classes",), eager_sharding=False)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        hidden = hidden.astype(jnp.float32)
        return (hidden @ self.kernel[...].astype(jnp.float32))[..., 0] + self.bias[0]


class Policy(nnx.Module):
    """The language model `lm` and a `value_head` reading its final hidden states."""

    def __init__(self, lm: models.Model, *, rngs: nnx.Rngs):
        if not getattr(lm, "generates", False):
            raise TypeError(
                f"a PPO policy generates: EncoderDecoder or DecoderOnly, got {type(lm).__name__}"
            )
        self.lm = lm
        self.value_head = ValueHead(lm.config.d_model, rngs=rngs)

    def __call__(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """-> ((B, T, V) float32 logits for each response token, (B, T) values)."""
        hidden = hidden_states(self.lm, batch)
        return self.lm.logits(hidden), self.value_head(hidden)


def hidden_states(lm: models.Model, batch: dict) -> jax.Array:
    """(B, T, D): the final hidden state from which each response token was predicted."""
    prompt, prompt_mask, response = batch["prompt_ids"], batch["prompt_mask"], batch["response"]
    if isinstance(lm, models.EncoderDecoder):
        encoded = lm.encode(prompt, prompt_mask)
        start = lm.config.decoder_start_token_id
        hidden, _ = lm.decoder_hidden(
            models.shift_right(response, start), encoded, lm.input_mask(prompt_mask)
        )
        return hidden
    # Decoder-only: [left-padded prompt | response]; position S - 1 + t predicts token t.
    s, t = prompt.shape[1], response.shape[1]
    sequence = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, jnp.ones_like(response)], axis=1)
    return lm.encode(sequence, mask)[:, s - 1 : s - 1 + t]


def forward(lm: models.Model, batch: dict) -> jax.Array:
    """(B, T, V) float32 logits of the response tokens under `lm` (no value head)."""
    return lm.logits(hidden_states(lm, batch))


def response_mask(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """1 on each token up to and including the row's first EOS (all of a row without one)."""
    tokens = np.asarray(tokens)
    is_eos = tokens == eos_id
    before = np.cumsum(is_eos, axis=1) - is_eos  # EOS tokens strictly before t
    return (before == 0).astype(np.int32)


def left_pad(ids: np.ndarray, mask: np.ndarray, pad_id: int = 0):
    """Right-padded rows -> the same tokens with the padding first (real tokens last)."""
    order = np.argsort(np.asarray(mask), axis=1, kind="stable")
    ids = np.take_along_axis(np.asarray(ids), order, axis=1)
    mask = np.take_along_axis(np.asarray(mask), order, axis=1)
    return np.where(mask > 0, ids, pad_id).astype(np.int32), mask.astype(np.int32)


def trainable(lm: models.Model) -> nnx.filterlib.Filter:
    """The LM variables PPO trains: every parameter of a fully fine-tuned model; only the
    adapters (LoRA, soft prompt) of an adapted one."""
    return adapters.trainable(adapters.spec(lm))


def reference_state(lm: models.Model, train: nnx.filterlib.Filter) -> nnx.State:
    """A copy of the `train` variables of `lm` as they are now: the reference's own part."""
    return jax.tree.map(jnp.copy, nnx.state(lm, train))


def with_reference(lm: models.Model, train: nnx.filterlib.Filter, ref: nnx.State) -> models.Model:
    """`lm` with its `train` variables replaced by `ref` (sharing every other array)."""
    graphdef, _, rest = nnx.split(lm, train, ...)
    return nnx.merge(graphdef, ref, rest)


def check_reference(policy_lm: models.Model, reference_lm: models.Model) -> None:
    """A separately given reference must be the policy's architecture, parameter for parameter
    (the policy's adapters aside): a ValueError names the first path that differs."""
    ours = nnx.to_flat_state(nnx.state(policy_lm, adapters.BASE))
    theirs = dict(nnx.to_flat_state(nnx.state(reference_lm, adapters.BASE)))
    for path, var in ours:
        other = theirs.pop(path, None)
        name = "/".join(map(str, path))
        if other is None:
            raise ValueError(f"ppo.reference has no parameter {name} that the policy has")
        if other.value.shape != var.value.shape:
            raise ValueError(
                f"ppo.reference parameter {name} has shape {tuple(other.value.shape)}; the "
                f"policy's is {tuple(var.value.shape)}: the reference must be the policy's model"
            )
    if theirs:
        name = "/".join(map(str, next(iter(theirs))))
        raise ValueError(f"ppo.reference has a parameter {name} that the policy does not")
