"""Generation speed: t5x_lite's jitted generator vs Hugging Face transformers' PyTorch `generate`.

    python benchmarks/decode_throughput.py            # t5-small, inputs 512, 64 new tokens
    python benchmarks/decode_throughput.py --quick    # t5-tiny, inputs 64, 8 new tokens (smoke)
    python benchmarks/decode_throughput.py --json decode.json --repeats 5

What it measures, in one process run, float32 on both sides:

- Cases: greedy, and sampling (temperature 1.0, top-k 50, top-p 1.0, the same settings on both
  sides), at batch 1 and batch 8; random input ids (no padding) of `--inputs-length` tokens;
  exactly `--new-tokens` new tokens (min_new_tokens = max_new_tokens on both sides, so EOS
  cannot end a call early).
- Same weights: a random `transformers.T5ForConditionalGeneration` with the preset's shapes is
  `save_pretrained` to a temp dir, and ours is loaded from that directory by
  `t5x_lite.hf.from_pretrained`. HF runs under `torch.inference_mode()` with
  `use_cache=True` and `torch.set_num_threads(--threads)` (default: the cores this process may
  use); ours is `t5x_lite.decoding.generate` (the prompt pass, then the whole loop, each one
  jitted program), with `block_until_ready` on its outputs.
- Timing: one warm-up call per side and case (compiles ours), then `--repeats` rounds; a round
  calls every case of the batch once, ours and HF's alternating, so that all see the same load
  on a shared machine (where one program's calls vary by up to ~20% within a run here).
  Reported per case, from the median call: new tokens/s (batch x new tokens / seconds),
  seconds per call (and the fastest and slowest), ms per generated step (seconds per call /
  new tokens, so the encoder is spread over the steps), and ours/HF (speed ratio). Greedy
  outputs are compared token by token as a sanity check of "same weights".
- Roofline bound for one call, from two measured figures: memory bandwidth (best of a sum over
  a large float32 buffer, 1 GiB by default, with numpy, a jitted jnp.sum and torch; bytes read
  / seconds; `BandwidthProbe`, read again at the start of every timed round, and the rate of
  the batch's median round used) and the float32 matmul peak
  (`t5x_lite.flops.measure_matmul_peak`, once). Then
      bound = (encoder FLOPs + one-time cross-attention K/V projection FLOPs) / peak
              + sum over steps of max(bytes read in the step / bandwidth,
                                      FLOPs of the step / peak)
  with, per step, bytes = decoder weights (without the cross K/V projections, which are
  applied once) + LM head (the shared embedding when tied) + the self-attention K/V cache up
  to the current position + cross-attention K/V for all input positions (per layer, times the
  batch), float32. FLOPs are analytic (matmuls only, `t5x_lite.flops` conventions). With the
  default shapes every step is memory bound, so the max is the bytes term. Each measured time
  is reported as a fraction of its bound (bound / measured): 100% would be the roofline. The
  probe's rate moves a lot on a shared machine (it jumps between two levels here, ~1.6x apart,
  for seconds at a time, while the calls' speeds do not follow it), so the rate of the median
  round stands for the machine during the calls; the fraction at the fastest rate read in any
  round is reported beside it, as the stricter figure.
- Matmul-only loop, per batch: a jitted loop of the same number of steps whose step does only
  the decoder's weight products (self-attention q, k, v, o; cross-attention q, o; the MLP; the
  LM head; with the step's dependencies; each product in the layout our loop uses,
  `layers.project` in `layers.decoding_step`) on a (batch, D) activation, timed alone. Its time
  per step is what XLA's matrix products by themselves cost our loop on this machine, shown
  also as the rate it reads the weights at and as its FLOP rate (the products' analytic FLOPs,
  against the measured peak). The same loop is timed again with each layer's cross-attention
  added (the loop's own attention over random keys and values of `--inputs-length` positions,
  held as our cross-attention cache is): with the weights, it reads almost every byte the
  bound counts. For both, the script reports the most of the bound a generator whose loop cost
  only that could reach (with our measured encoder pass, and with an encoder at its bound).

Goal (t5-small shapes, inputs 512, 64 new tokens, 2 CPU cores): ours at least 1.5x HF's
new tokens/s at batch 1 and batch 8, and at least 60% of the roofline bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5x_lite import attention, config, decoding, flops, hf, hostmem, layers  # noqa: E402

FULL = dict(preset="t5-small", inputs_length=512, new_tokens=64, repeats=7, bandwidth_mib=1024)
QUICK = dict(preset="t5-tiny", inputs_length=64, new_tokens=8, repeats=2, bandwidth_mib=128)
CASES = (("greedy", dict(temperature=0.0)), ("sample", dict(temperature=1.0, top_k=50)))
GOAL_RATIO, GOAL_BOUND = 1.5, 0.60


# ----------------------------------------------------------------------------- machine figures


def _best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class BandwidthProbe:
    """Read bandwidth (bytes/s) of a full sum over a `mib` MiB float32 buffer, three ways (numpy,
    a jitted jnp.sum, torch), best of `repeats` sums each. The buffer is made once; each call
    measures again, so that the probe can run before every timed round: on a shared machine
    the rate it reads moves between runs and within one (in the README's runs it jumped
    between two levels, ~30 and ~55 GB/s, from one round to the next)."""

    def __init__(self, mib: int, repeats: int = 5):
        import torch

        self.host = np.random.default_rng(0).random(mib * 2**20 // 4, dtype=np.float32)
        self.device = jax.device_put(self.host)
        self.torch = torch.from_numpy(self.host)
        self.jsum = jax.jit(jnp.sum)
        self.repeats = repeats

    def __call__(self) -> dict[str, float]:
        timings = {
            "numpy sum": _best_time(lambda: self.host.sum(), self.repeats),
            "jnp.sum (jit)": _best_time(
                lambda: self.jsum(self.device).block_until_ready(), self.repeats
            ),
            "torch sum": _best_time(lambda: self.torch.sum(), self.repeats),
        }
        return {name: self.host.nbytes / seconds for name, seconds in timings.items()}


# ----------------------------------------------------------------------------- roofline


def roofline(cfg, *, batch, inputs_length, new_tokens, bandwidth, peak) -> dict:
    """Analytic bytes and FLOPs of one generate call and its bound time (see module doc)."""
    d, inner, layers, s = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.decoder_layers, inputs_length
    mlp = (3 if cfg.is_gated else 2) * d * cfg.d_ff
    # Matmul weights each decoded token goes through: self q,k,v,o; cross q,o; MLP; LM head.
    per_token_matmul = layers * (6 * d * inner + mlp) + cfg.vocab_size * d
    other = layers * 3 * d + d + cfg.relative_attention_num_buckets * cfg.num_heads  # norms, bias
    weight_bytes = 4 * (per_token_matmul + other + batch * d)  # + embedding rows looked up
    cross_kv_bytes = 4 * layers * 2 * batch * s * inner
    cross_kv_flops = batch * layers * 2.0 * d * inner * 2 * s  # one-time K/V projections
    encoder_flops = (
        batch * flops.forward_flops_per_example(cfg, inputs_length=s, targets_length=0)
        - cross_kv_flops
    )
    steps = []
    for position in range(1, new_tokens + 1):
        self_kv_bytes = 4 * layers * 2 * batch * position * inner
        step_bytes = weight_bytes + self_kv_bytes + cross_kv_bytes
        step_flops = batch * (
            2.0 * per_token_matmul + layers * 4.0 * inner * (position + s)  # + QK^T, AV
        )
        steps.append((step_bytes, step_flops))
    memory_s = sum(b / bandwidth for b, _ in steps)
    step_s = sum(max(b / bandwidth, f / peak) for b, f in steps)
    compute_s = (encoder_flops + cross_kv_flops) / peak
    return {
        "weight_bytes_per_step": weight_bytes,
        "weight_product_flops_per_step": batch * 2.0 * per_token_matmul,
        "cross_kv_bytes_per_step": cross_kv_bytes,
        "self_kv_bytes_last_step": 4 * layers * 2 * batch * new_tokens * inner,
        "bytes_per_step_first": steps[0][0],
        "bytes_per_step_last": steps[-1][0],
        "bytes_per_step_mean": sum(b for b, _ in steps) / len(steps),
        "step_flops_mean": sum(f for _, f in steps) / len(steps),
        "encoder_flops": encoder_flops,
        "cross_kv_flops": cross_kv_flops,
        "bound_encoder_s": compute_s,
        "bound_steps_s": step_s,
        "bound_steps_memory_only_s": memory_s,
        "memory_bound_steps": sum(b / bandwidth >= f / peak for b, f in steps),
        "bound_s": compute_s + step_s,
    }


# ----------------------------------------------------------------------------- matmul ceiling


def step_products(model):
    """The weight matrices one decoding step multiplies by, as (matrix, contracted axis) pairs
    grouped by shared input, in the order the step applies them: per decoder layer the
    self-attention q, k, v (stacked into one matrix, as the loop does), then o; cross-attention
    q, then o (its keys and values are projected once, in the prompt pass); the MLP's input
    projection(s), then wo; last the LM head (the (V, D) embedding when tied). 2-D views."""
    groups = []
    for layer in model.decoder.layers:
        a, c = layer.self_attn, layer.cross_attn
        groups.append([(a.qkv_kernel(), 0)])
        groups.append([(a.o[...].reshape(-1, a.o.shape[-1]), 0)])
        groups.append([(c.q[...].reshape(c.q.shape[0], -1), 0)])
        groups.append([(c.o[...].reshape(-1, c.o.shape[-1]), 0)])
        mlp = layer.mlp
        groups.append([(w.kernel[...], 0) for w in (mlp.wi, mlp.wi_0, mlp.wi_1) if w is not None])
        groups.append([(mlp.wo.kernel[...], 0)])
    if model.lm_head is None:
        groups.append([(model.shared.embedding[...], 1)])
    else:
        groups.append([(model.lm_head.kernel[...], 0)])
    return groups


def matmul_only_step_s(model, batch, new_tokens, repeats, *, cross_attention_length=0):
    """Seconds per step of a jitted loop that does nothing but a decoding step's weight
    products (`step_products`, with the step's dependencies: a group's products share one
    input, each group waits for the one before) on a (batch, D) activation: no attention, norms,
    cache or sampling. Each product is `layers.project` in its decoding-step layout, as in our
    loop. What XLA's matrix products alone cost our loop on this machine.

    With `cross_attention_length` S > 0 the loop also attends, in every layer, from the
    cross-attention query product's output over random (B, N, H, S) keys and (B, N, S, H) values
    held as our loop holds its cross-attention cache, through the loop's own attention
    (`attention.dot_product_attention` with a key mask), and feeds the result to the o product:
    the step's weight products plus the one other part of a step that reads a large array."""
    groups = step_products(model)
    axes = [[axis for _, axis in g] for g in groups]
    mats = [[m.astype(model.config.dtype) for m, _ in g] for g in groups]
    cfg = model.config
    d, n, hd = cfg.d_model, cfg.num_heads, cfg.d_kv
    # Each layer's cross-attention query product is its third group (`step_products`: the
    # layers' groups, then the LM head's).
    per_layer = (len(groups) - 1) // cfg.decoder_layers
    layers_q = range(2, per_layer * cfg.decoder_layers, per_layer)
    cross_q = set(layers_q) if cross_attention_length else set()
    g = np.random.default_rng(0)
    shapes = {
        "k": (batch, n, hd, cross_attention_length),
        "v": (batch, n, cross_attention_length, hd),
    }
    cross = [
        {
            name: jnp.asarray(g.standard_normal(shape, np.float32), cfg.dtype)
            for name, shape in shapes.items()
        }
        for _ in cross_q
    ]
    key_mask = attention.key_padding_mask(jnp.ones((batch, cross_attention_length), bool))

    def product(h, m, axis):
        k = m.shape[axis]
        x = jnp.tile(h, (1, -(-k // d)))[:, :k]
        return layers.project(x, m, vocab_major=axis == 1)

    @jax.jit
    def loop(h, mats, cross):
        def step(_, h):
            kv = iter(cross)
            with layers.decoding_step():
                x = h
                for i, (group, group_axes) in enumerate(zip(mats, axes, strict=True)):
                    ys = [product(x, m, a) for m, a in zip(group, group_axes, strict=True)]
                    # Every output element feeds the next input, so none is dead code.
                    h = h + 1e-6 * sum(jnp.sum(y, axis=-1, keepdims=True) for y in ys)
                    x = h
                    if i in cross_q:  # attend from the query product's output, feed the o product
                        c = next(kv)
                        q = ys[0].reshape(batch, 1, n, hd).astype(c["k"].dtype)
                        a = attention.dot_product_attention(
                            q, c["k"], c["v"], mask=key_mask, heads_first=True
                        )
                        x = a.reshape(batch, n * hd).astype(h.dtype)
            return h

        return jax.lax.fori_loop(0, new_tokens, step, h)

    h = jnp.ones((batch, d), cfg.dtype)

    def call():
        return loop(h, mats, cross).block_until_ready()

    call()  # compile
    (seconds,), _ = time_interleaved([call], repeats)
    return seconds / new_tokens


# ----------------------------------------------------------------------------- models


def save_random_hf(cfg, path, seed=0):
    """A random HF T5ForConditionalGeneration with `cfg`'s shapes, saved to `path` (eval mode).

    An untied LM head gets weights of its own (transformers 5 would otherwise tie it), as
    tests/hf_reference.py does."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the untied head's "will NOT tie" notice
    transformers.logging.disable_progress_bar()
    torch.manual_seed(seed)
    hf_config = transformers.T5Config(**{**hf.config_to_hf(cfg), "dropout_rate": 0.0})
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    if not cfg.tie_word_embeddings:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(path)
    return transformers.T5ForConditionalGeneration.from_pretrained(path).eval()


def ours_call(model, ids, mask, sampling, new_tokens, seed):
    """A call of our generator returning its tokens (numpy); compiled by a first call here."""
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        rng=jax.random.key(seed),
        **sampling,
    )

    def call():
        return np.asarray(jax.block_until_ready(decoding.generate(model, ids, **kwargs))[0])

    call()  # compile
    return call


def hf_call(model, ids, mask, sampling, new_tokens, seed):
    """A call of HF's generate returning the new tokens (numpy), warmed up once."""
    import torch

    ids, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    if sampling.get("temperature", 0.0) > 0:
        kwargs = dict(do_sample=True, temperature=sampling["temperature"], top_p=1.0)
        kwargs["top_k"] = sampling.get("top_k", 0)
    else:
        kwargs = dict(do_sample=False)

    def call():
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                num_beams=1,
                use_cache=True,
                **kwargs,
            )
        out = out.numpy()[:, 1:]  # drop the decoder start token
        if out.shape[1] != new_tokens:
            raise RuntimeError(f"HF generated {out.shape[1]} tokens, expected {new_tokens}")
        return out

    torch.manual_seed(seed)
    call()  # warm-up
    return call


def encoder_calls(ours, hf_model, ids, mask):
    """Our jitted `encode` and HF's `model.encoder` on the same inputs: where a call's time
    goes before the first step."""
    import torch
    from flax import nnx

    graphdef, state = nnx.split(ours)
    encode = jax.jit(lambda state, x, m: nnx.merge(graphdef, state).encode(x, m))
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def ours_call():
        return np.asarray(jax.block_until_ready(encode(state, ids, mask)))

    def hf_call():
        with torch.inference_mode():
            return hf_model.encoder(input_ids=t_ids, attention_mask=t_mask).last_hidden_state

    ours_call(), hf_call()  # compile, warm up
    return [ours_call, hf_call]


def time_rounds(calls, repeats, probe=None):
    """`repeats` rounds, each calling `probe` (if given) and then every call once, in order, so
    that all calls and the probe see the same machine load on a shared machine. Returns each
    call's seconds per round, each call's last output, and the probe's result per round."""
    times = [[] for _ in calls]
    outs = [None] * len(calls)
    probes = []
    for _ in range(repeats):
        if probe is not None:
            probes.append(probe())
        for i, call in enumerate(calls):
            start = time.perf_counter()
            outs[i] = call()
            times[i].append(time.perf_counter() - start)
    return times, outs, probes


def time_interleaved(calls, repeats):
    """Median seconds of each call over `repeats` rounds of `time_rounds`, and each call's last
    output."""
    times, outs, _ = time_rounds(calls, repeats)
    return [statistics.median(t) for t in times], outs


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to smoke-test")
    parser.add_argument("--preset", help=f"model shapes (default {FULL['preset']})")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--inputs-length", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--repeats", type=int, help="timed calls per side and case (median)")
    parser.add_argument("--bandwidth-mib", type=int, help="buffer size of the bandwidth probe")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this path")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv=None):
    retained = hostmem.retain_freed_memory()  # first, as the CLI does: before any threads
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.get_preset(args.preset, dropout_rate=0.0)
    probe = BandwidthProbe(args.bandwidth_mib)
    bandwidths = probe()
    peak = (
        flops.measure_matmul_peak(n=512, repeats=3) if args.quick else flops.measure_matmul_peak()
    )
    print(
        f"devices: {jax.devices()}  torch {torch.__version__}, threads {torch.get_num_threads()}"
        f"  cores usable: {len(os.sched_getaffinity(0))}"
    )
    print(
        f"memory bandwidth at start (sum over {args.bandwidth_mib} MiB float32, best of 5): "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in bandwidths.items())
        + " GB/s; measured again before every timed round (the fastest way's rate)"
    )
    print(f"float32 matmul peak (t5x_lite.flops.measure_matmul_peak): {peak / 1e9:.1f} GFLOP/s")
    print(f"glibc malloc keeps freed memory (t5x_lite.hostmem, both sides): {retained}")

    with tempfile.TemporaryDirectory() as tmp:
        hf_model = save_random_hf(cfg, tmp, seed=args.seed)
        ours = hf.from_pretrained(tmp)
    print(f"HF attention implementation: {hf_model.config._attn_implementation}")

    rows, encoders, ceilings, round_bandwidths = [], [], [], {}
    for batch in args.batches:
        g = np.random.default_rng(args.seed + batch)
        ids = g.integers(3, cfg.vocab_size - 100, (batch, args.inputs_length)).astype(np.int32)
        mask = np.ones_like(ids)

        def bound_at(bandwidth, batch=batch):
            return roofline(
                cfg,
                batch=batch,
                inputs_length=args.inputs_length,
                new_tokens=args.new_tokens,
                bandwidth=bandwidth,
                peak=peak,
            )

        (ours_enc, hf_enc), _ = time_interleaved(
            encoder_calls(ours, hf_model, ids, mask), args.repeats
        )
        step_s = matmul_only_step_s(ours, batch, args.new_tokens, args.repeats)
        step_x_s = matmul_only_step_s(
            ours, batch, args.new_tokens, args.repeats, cross_attention_length=args.inputs_length
        )
        # Every case of this batch, ours and HF's, in the same rounds, each round after a
        # bandwidth probe, so that the probe samples the machine while these calls run.
        calls = []
        for _, sampling in CASES:
            setup = (ids, mask, sampling, args.new_tokens, args.seed)
            calls += [ours_call(ours, *setup), hf_call(hf_model, *setup)]
        times, outs, probes = time_rounds(calls, args.repeats, probe)
        per_round = [max(p.values()) for p in probes]
        round_bandwidths[batch] = per_round
        # The bound at the rate the probe read in the median round (the machine's usual rate
        # during these calls), and, stricter, at the fastest it read in any round.
        bound = bound_at(statistics.median(per_round))
        strict = bound_at(max(per_round))
        encoders.append((batch, ours_enc, hf_enc, bound["bound_encoder_s"]))
        ceilings.append(
            dict(
                batch=batch,
                step_s=step_s,
                step_with_cross_attention_s=step_x_s,
                ours_encoder_s=ours_enc,
                bound=bound,
            )
        )
        for i, (case, _) in enumerate(CASES):
            ours_t, hf_t = times[2 * i], times[2 * i + 1]
            ours_tokens, hf_tokens = outs[2 * i], outs[2 * i + 1]
            ours_s, hf_s = statistics.median(ours_t), statistics.median(hf_t)
            new = batch * args.new_tokens
            agree = float((ours_tokens == hf_tokens).mean()) if case == "greedy" else None
            rows.append(
                dict(
                    case=case,
                    batch=batch,
                    ours_s=ours_s,
                    hf_s=hf_s,
                    ours_s_per_round=ours_t,
                    hf_s_per_round=hf_t,
                    ours_tokens_per_s=new / ours_s,
                    hf_tokens_per_s=new / hf_s,
                    ratio=hf_s / ours_s,
                    ours_ms_per_step=1e3 * ours_s / args.new_tokens,
                    hf_ms_per_step=1e3 * hf_s / args.new_tokens,
                    bound_s=bound["bound_s"],
                    ours_of_bound=bound["bound_s"] / ours_s,
                    hf_of_bound=bound["bound_s"] / hf_s,
                    bound_s_fastest_bandwidth=strict["bound_s"],
                    ours_of_bound_fastest_bandwidth=strict["bound_s"] / ours_s,
                    greedy_token_agreement=agree,
                    roofline=bound,
                )
            )
            print(
                f"  {case} batch {batch}: ours {ours_s:.3f} s ({min(ours_t):.3f}-{max(ours_t):.3f})"
                f", HF {hf_s:.3f} s ({min(hf_t):.3f}-{max(hf_t):.3f})",
                flush=True,
            )
        print(
            f"  bandwidth in batch {batch}'s rounds: {min(per_round) / 1e9:.1f}-"
            f"{max(per_round) / 1e9:.1f} GB/s, median {statistics.median(per_round) / 1e9:.1f}",
            flush=True,
        )

    print(
        f"\n{args.preset}, inputs {args.inputs_length}, {args.new_tokens} new tokens, float32, "
        f"median of {args.repeats} calls; sampling: temperature 1.0, top-k 50; bound s/call at the"
        " bandwidth read in the batch's median round\n"
    )
    print(
        "| case | batch | ours tok/s | HF tok/s | ours / HF | ours s/call | HF s/call "
        "| ours ms/step | HF ms/step | bound s/call | ours % of bound | HF % of bound "
        "| ours % of bound at the fastest bandwidth read |"
    )
    print("| --- " * 13 + "|")
    for r in rows:
        print(
            f"| {r['case']} | {r['batch']} | {r['ours_tokens_per_s']:,.1f} "
            f"| {r['hf_tokens_per_s']:,.1f} | {r['ratio']:.2f}x | {r['ours_s']:.3f} "
            f"| {r['hf_s']:.3f} | {r['ours_ms_per_step']:.2f} | {r['hf_ms_per_step']:.2f} "
            f"| {r['bound_s']:.4g} | {r['ours_of_bound']:.0%} | {r['hf_of_bound']:.0%} "
            f"| {r['ours_of_bound_fastest_bandwidth']:.0%} |"
        )

    print("\nthe encoder pass alone (seconds, median; part of every call above):\n")
    print("| batch | ours | HF | ours / HF | bound (FLOPs / peak) |")
    print("| --- " * 5 + "|")
    for batch, ours_enc, hf_enc, bound_enc in encoders:
        print(
            f"| {batch} | {ours_enc:.3f} | {hf_enc:.3f} | {hf_enc / ours_enc:.2f}x "
            f"| {bound_enc:.3f} |"
        )

    print(
        "\nmatmul-only loop (`matmul_only_step_s`: a step's weight products and nothing else), the"
        " same loop with each layer's cross-attention over the cache added, and the most of the"
        " bound a generator whose loop cost only that could reach:\n"
    )
    print(
        "| batch | matmul-only ms/step | its weight read GB/s | its GFLOP/s (of peak) "
        "| + cross-attention ms/step | ours greedy loop ms/step "
        "| at most % of bound (matmul-only, our encoder) | (matmul-only, encoder at its bound) "
        "| (+ cross-attention, our encoder) | (+ cross-attention, encoder at its bound) |"
    )
    print("| --- " * 10 + "|")
    for c in ceilings:
        b = c["bound"]
        greedy = next(r for r in rows if r["batch"] == c["batch"] and r["case"] == CASES[0][0])
        loop_s = (greedy["ours_s"] - c["ours_encoder_s"]) / args.new_tokens
        c["ours_loop_step_s"] = loop_s
        for key, per_step in (
            ("", c["step_s"]),
            ("_with_cross_attention", c["step_with_cross_attention_s"]),
        ):
            steps_s = args.new_tokens * per_step
            c["most_of_bound" + key] = b["bound_s"] / (c["ours_encoder_s"] + steps_s)
            c["most_of_bound_encoder_at_bound" + key] = b["bound_s"] / (
                b["bound_encoder_s"] + steps_s
            )
        weights_gbs = b["weight_bytes_per_step"] / c["step_s"] / 1e9
        flops_per_s = b["weight_product_flops_per_step"] / c["step_s"]
        print(
            f"| {c['batch']} | {1e3 * c['step_s']:.2f} | {weights_gbs:.1f} "
            f"| {flops_per_s / 1e9:.1f} ({flops_per_s / peak:.0%}) "
            f"| {1e3 * c['step_with_cross_attention_s']:.2f} | {1e3 * loop_s:.2f} "
            f"| {c['most_of_bound']:.0%} | {c['most_of_bound_encoder_at_bound']:.0%} "
            f"| {c['most_of_bound_with_cross_attention']:.0%} "
            f"| {c['most_of_bound_encoder_at_bound_with_cross_attention']:.0%} |"
        )

    print(
        f"\nroofline components (peak {peak / 1e9:.1f} GFLOP/s; bandwidth: the median of the"
        " batch's rounds):\n"
    )
    print(
        "| batch | bandwidth GB/s | weights MB/step | cross K/V MB/step | self K/V MB (last step) "
        "| MB/step (mean) | step GFLOPs (mean) | encoder GFLOPs | cross K/V proj GFLOPs "
        "| encoder s | steps s | memory-bound steps |"
    )
    print("| --- " * 12 + "|")
    for r in rows:
        if r["case"] != CASES[0][0]:
            continue
        b = r["roofline"]
        print(
            f"| {r['batch']} | {statistics.median(round_bandwidths[r['batch']]) / 1e9:.1f} "
            f"| {b['weight_bytes_per_step'] / 1e6:.2f} "
            f"| {b['cross_kv_bytes_per_step'] / 1e6:.2f} "
            f"| {b['self_kv_bytes_last_step'] / 1e6:.2f} | {b['bytes_per_step_mean'] / 1e6:.2f} "
            f"| {b['step_flops_mean'] / 1e9:.3f} | {b['encoder_flops'] / 1e9:.2f} "
            f"| {b['cross_kv_flops'] / 1e9:.3f} | {b['bound_encoder_s']:.4f} "
            f"| {b['bound_steps_s']:.4f} | {b['memory_bound_steps']}/{args.new_tokens} |"
        )

    agreements = [r["greedy_token_agreement"] for r in rows if r["case"] == "greedy"]
    print(
        "\ngreedy tokens equal to HF's (same weights, sanity check): "
        + ", ".join(
            f"batch {r['batch']}: {r['greedy_token_agreement']:.0%}"
            for r in rows
            if r["greedy_token_agreement"] is not None
        )
    )
    misses = [
        f"{r['case']} batch {r['batch']}"
        for r in rows
        if r["ratio"] < GOAL_RATIO or r["ours_of_bound"] < GOAL_BOUND
    ]
    print(
        f"goal (>= {GOAL_RATIO}x HF and >= {GOAL_BOUND:.0%} of bound): "
        + ("met in every case" if not misses else "not met for " + ", ".join(misses))
    )
    if min(agreements, default=1.0) < 0.9:
        print("WARNING: greedy outputs differ from HF's: the two sides may not compute the same")

    if args.json:
        result = dict(
            args={k: v for k, v in vars(args).items() if k != "json"},
            devices=[str(d) for d in jax.devices()],
            torch_threads=torch.get_num_threads(),
            bandwidth_at_start_bytes_per_s=bandwidths,
            bandwidth_per_round_bytes_per_s={str(b): v for b, v in round_bandwidths.items()},
            matmul_peak_flops_per_s=peak,
            rows=rows,
        )
        result["encoder"] = [dict(batch=b, ours_s=o, hf_s=h, bound_s=e) for b, o, h, e in encoders]
        result["matmul_only"] = [{k: v for k, v in c.items() if k != "bound"} for c in ceilings]
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
