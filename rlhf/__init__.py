"""Alignment: a reward model and PPO for encoder-decoder and decoder-only policies.

ppo.py            GAE, whitening, clipped policy / value losses, entropy, KL estimators
                  and controllers: pure masked functions, each with its equation
reward_model.py   an EncoderOnly backbone with a pooled head, trained as a classifier or
                  a Bradley–Terry preference model; scoring functions for PPO rewards
"""
