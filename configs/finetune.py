"""Instruction fine-tuning, dialogue -> summary with FLAN's `summarize` prompt, from a
pre-trained model: `:method=full|lora|prompt,size=tiny|small|base`.

    t5x-lite train                                     # pre-trains ./runs/default first
    t5x-lite train --config configs/finetune.py:method=lora
    t5x-lite train --config configs/finetune.py:method=full,size=base \\
        --config.model.init_from=path/to/flan-t5-base --config.data.source=jsonl \\
        --config.data.path=train.jsonl --config.data.eval_path=val.jsonl

It starts from `model.init_from`: by default the span-corruption run of the same size
(`./runs/default` for tiny). Full fine-tuning trains every weight with Adafactor, as T5 does;
LoRA trains rank-8 adapters on q and v (the `lora` block) with AdamW; prompt tuning trains 20
virtual-token embeddings (the `prompt` block) with Adafactor at 0.3, as Lester et al. do.
"""

from configs import base

METHODS = ("full", "lora", "prompt")


def get_config(arg=None):
    args = base.parse_arg(arg)
    method, size = args.get("method", "lora"), args.get("size", "tiny")
    if method not in METHODS:
        raise ValueError(f"configs/finetune.py: method={method!r}; expected one of {METHODS}")
    if size not in base.SIZES["encoder_decoder"]:
        raise ValueError(f"configs/finetune.py: size={size!r}; expected tiny, small or base")
    c = base.get_config()
    c.workdir = f"./runs/finetune_{method}_{size}"
    c.model.init_from = "./runs/default" if size == "tiny" else f"./runs/t5_span_corruption_{size}"
    c.data.template = "summarize"
    tiny = size == "tiny"
    c.objective = base.objective(
        "seq2seq", inputs_length=256 if tiny else 512, targets_length=64 if tiny else 128
    )
    c.train.steps = 300 if tiny else 2000
    c.train.batch_size = 32 if tiny else 64
    c.train.eval_every = 100 if tiny else 500
    c.train.generate_examples = 64  # eval_rouge*/eval_bleu at each eval step (t5x-lite compare)
    c.checkpoint.every = c.train.eval_every
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    if method == "full":
        c.optim.name = "adafactor"  # T5X's fine-tuning: steps relative to each weight's scale
        c.optim.adafactor_parameter_scale = True
        c.optim.learning_rate = 1e-3
        c.optim.weight_decay = 0.0
    elif method == "prompt":
        c.prompt.num_tokens = 20
        c.objective.pack = False  # one prompt per row
        c.optim.name = "adafactor"
        c.optim.learning_rate = 0.3
        c.optim.weight_decay = 0.0
    else:
        c.lora.rank = 8
        c.lora.alpha = 16.0
        c.optim.name = "adamw"
        c.optim.learning_rate = 3e-3 if tiny else 1e-3
        c.optim.weight_decay = 0.0
    return c
