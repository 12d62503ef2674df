"""Encoder-only masked-LM pre-training (BERT masking on the T5 vocabulary): `:size=...`."""

from configs import base


def get_config(arg=None):
    args = base.parse_arg(arg)
    size = args.get("size", "tiny")
    c = base.get_config()
    c.workdir = f"./runs/encoder_mlm_{size}"
    c.model.preset = base.SIZES["encoder_only"][size]
    c.objective = base.objective("masked_lm", inputs_length=128 if size == "tiny" else 512)
    if size != "tiny":
        c.train.steps = 100_000
        c.train.batch_size = 128
        c.optim.learning_rate = 1e-4
        c.optim.warmup_steps = 10_000
        c.checkpoint.every = 2000
    return c
