"""Decoder-only causal-LM pre-training with packed documents: `:size=tiny|small|base`."""

from configs import base


def get_config(arg=None):
    args = base.parse_arg(arg)
    size = args.get("size", "tiny")
    c = base.get_config()
    c.workdir = f"./runs/decoder_clm_{size}"
    c.model.preset = base.SIZES["decoder_only"][size]
    # packed sequence length
    c.objective = base.objective("causal_lm", inputs_length=128 if size == "tiny" else 1024)
    if size != "tiny":
        c.train.steps = 100_000
        c.train.batch_size = 64
        c.optim.learning_rate = 3e-4
        c.optim.warmup_steps = 2000
        c.checkpoint.every = 2000
    return c
