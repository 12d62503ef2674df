"""A toxicity reward model on the embedded corpus: `:kind=classifier|preference`.

    t5x-lite reward                                   # this recipe, into ./runs/reward_toxicity
    t5x-lite reward --config configs/reward_toxicity.py:kind=preference
    t5x-lite reward --config configs/reward_toxicity.py --config.data.source=jsonl \\
        --config.data.path=train.jsonl --config.data.eval_path=val.jsonl

The classifier reads `text` / `label` records (label: a name in `reward.classes` or its index);
the embedded data labels every summary `not_toxic` and every rude rewrite `toxic`. The
preference model reads `prompt` / `chosen` / `rejected` records (embedded: the dialogue, its
summary over its rude rewrite). The backbone is the tiny encoder, trained from scratch with
the shipped tokenizer; PPO's reward is the log-odds of `reward.positive_class`.
"""

import ml_collections

from configs import base

KINDS = ("classifier", "preference")


def get_config(arg=None):
    args = base.parse_arg(arg)
    kind = args.get("kind", "classifier")
    if kind not in KINDS:
        raise ValueError(f"configs/reward_toxicity.py: kind={kind!r}; expected one of {KINDS}")
    c = base.get_config()
    c.workdir = "./runs/reward_toxicity" + ("" if kind == "classifier" else "_preference")
    c.model.preset = "encoder-tiny"
    c.reward = ml_collections.ConfigDict()
    c.reward.kind = kind
    c.reward.classes = ("not_toxic", "toxic")  # classifier labels, in head order
    c.reward.positive_class = "not_toxic"  # the PPO reward is its log-odds
    c.reward.max_length = 96  # tokens per text (a preference pair: prompt cut from the left)
    c.reward.text_field = "text"
    c.reward.label_field = "label"
    c.reward.prompt_field = "prompt"  # "" scores responses alone
    c.reward.chosen_field = "chosen"
    c.reward.rejected_field = "rejected"
    c.data.eval_split = "validation"
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.train.steps = 150
    c.train.batch_size = 32
    c.train.log_every = 25
    c.train.eval_every = 75
    c.checkpoint.every = 75
    c.checkpoint.async_save = False
    return c
