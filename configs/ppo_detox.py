"""PPO detoxification of the tiny summarizer (`t5x-lite ppo`; see rlhf/detox.py).

    t5x-lite ppo                                     # all stages, then PPO: ./runs/ppo_detox
    t5x-lite ppo --config configs/ppo_detox.py --config.ppo.steps=60
    t5x-lite ppo --config.ppo.init_from=path/to/flan-t5-base --config.stages.enabled=false \\
        --config.ppo.reward=runs/my_reward --config.lora.rank=16

The policy is `ppo.init_from` (a workdir, native checkpoint or HF directory; LoRA and prompt
adapters come with it) and the reference is that policy as PPO starts, unless `ppo.reference`
names another model of the same architecture. With `lora.rank` > 0 a policy without adapters
gets fresh ones, so PPO trains only them and the value head. The reward is the probability
of `not_toxic` (`ppo.reward_score`) under the reward model in `ppo.reward`. `stages` are the
recipes that make `ppo.init_from` and `ppo.reward` when they are missing.
"""

import ml_collections

from configs import base


def get_config(arg=None):
    del arg
    c = base.get_config()
    c.workdir = "./runs/ppo_detox"
    c.data.template = "summarize"  # the prompt the summarizer was fine-tuned with
    c.data.split = "train"  # PPO's prompts
    c.data.eval_split = "test"  # the held-out dialogues of the evaluation
    c.data.target_field = "summary"  # ROUGE-L's (clean) references

    c.ppo = ml_collections.ConfigDict()
    c.ppo.init_from = "./runs/finetune_rude_full_tiny"  # the policy: fine-tuned, sometimes rude
    c.ppo.reference = ""  # "" = the policy as PPO starts
    c.ppo.reward = "./runs/reward_toxicity"  # a `t5x-lite reward` workdir
    # The reward: P(not_toxic) ("probability", bounded: a polite summary gains nothing by
    # drifting further) or its log-odds ("logodds", unbounded, as trl's detox example uses).
    c.ppo.reward_score = "probability"
    c.ppo.steps = 60
    c.ppo.batch_size = 32  # rollouts per step
    c.ppo.minibatch_size = 16
    c.ppo.epochs = 2  # passes over each rollout batch
    c.ppo.clip = 0.2  # policy ratio clip epsilon
    c.ppo.value_clip = 0.2  # value clip around the rollout's values
    c.ppo.vf_coef = 0.1
    c.ppo.ent_coef = 0.0
    c.ppo.gamma = 1.0
    c.ppo.lam = 0.95
    c.ppo.kl_coef = 0.3  # beta of the per-token KL penalty
    c.ppo.kl_target = 0.0  # > 0: adaptive controller towards this KL per summary
    c.ppo.kl_horizon = 10000
    c.ppo.kl_estimator = "k1"  # k1 | k3
    c.ppo.whiten_advantages = True
    c.ppo.target_kl = 0.0  # > 0: stop a step's epochs once approx_kl > 1.5 x this
    c.ppo.prompt_length = 256
    c.ppo.max_new_tokens = 64
    c.ppo.temperature = 0.7  # rollouts and evaluation sample at this temperature
    c.ppo.top_k = 0
    c.ppo.top_p = 1.0
    c.ppo.seed = 0
    c.ppo.eval_examples = 200  # held-out dialogues scored before and after
    c.ppo.eval_seed = 1

    c.lora.rank = 0  # > 0: fresh adapters on a policy without (the default policy has its own)
    c.optim.name = "adamw"
    c.optim.learning_rate = 1e-4  # every weight trains (1e-3 suits a LoRA policy)
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.train.log_every = 1
    c.checkpoint.every = 10
    c.checkpoint.async_save = False

    c.stages = ml_collections.ConfigDict()
    c.stages.enabled = True
    c.stages.pretrain = "configs/t5_span_corruption.py"
    c.stages.finetune = "configs/finetune.py:method=full"
    c.stages.finetune_overrides = (
        "--config.data.target_field=noisy_summary",  # a fifth of the references are rude
        "--config.train.steps=600",
        "--config.train.eval_every=300",
        "--config.train.generate_examples=0",
        "--config.checkpoint.every=300",
    )
    c.stages.reward = "configs/reward_toxicity.py"
    return c
