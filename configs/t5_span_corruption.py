"""T5 span-corruption pre-training (the default of `t5x-lite train`): `:size=tiny|small|base`."""

from configs import base


def get_config(arg=None):
    args = base.parse_arg(arg)
    size = args.get("size", "tiny")
    c = base.get_config()
    c.model.preset = base.SIZES["encoder_decoder"][size]
    if size != "tiny":
        c.workdir = f"./runs/t5_span_corruption_{size}"
        c.objective.inputs_length = 512  # -> targets 114, raw 568 (T5's arithmetic)
        c.optim.name = "adafactor"
        c.optim.schedule = "rsqrt"
        c.optim.learning_rate = 1e-2
        c.optim.warmup_steps = 10_000
        c.train.steps = 100_000
        c.train.batch_size = 128
        c.checkpoint.every = 2000
        c.train.eval_every = 2000
    return c
