"""Step 2 of the loop: text scores from the reward sources, then normalised, clipped, penalised.

The reward sources (rlhf_stack.rewards) score decoded text, each with its own tokenizer, so a
reward model need not share the policy's vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf_stack.errors import ConfigError
from rlhf_stack.ppo import functional as PF
from rlhf_stack.ppo.control import RunningMoments


def check_reward_config(cfg, reward_fns: list[Callable] | None) -> None:
    """The reward settings' errors, found before any model is loaded."""
    from rlhf_stack.rewards import check_reward_sources

    if not cfg.rewards and not reward_fns:
        raise ConfigError("ppo: no reward: set `rewards` in the config or pass reward_fns to train_ppo")
    if cfg.score_norm == "rm_bias" and not any(s.kind == "reward_model" and s.apply_bias for s in cfg.rewards):
        raise ConfigError("score_norm: rm_bias needs a reward source of kind reward_model with apply_bias: true")
    check_reward_sources(list(cfg.rewards))


def build_reward(cfg, reward_fns: list[Callable] | None, device, host: Callable | None = None):
    """The CombinedReward of cfg.rewards plus the Python callables `reward_fns` (weight 1 each);
    call `check_reward_config` first (train_ppo does, before it loads any model).

    host: path -> a reward model already in memory or None (`shared_reward.host_reward_model`).
    """
    from rlhf_stack.rewards import build_reward_function

    return build_reward_function(list(cfg.rewards), extra_fns=list(reward_fns or []), device=device, host=host)


def process_scores(raw: torch.Tensor, has_eos: torch.Tensor, all_raw: torch.Tensor, cfg,
                   moments: RunningMoments) -> torch.Tensor:
    """Raw combined scores `(b,)` -> the terminal reward used by PPO `(b,)`.

    all_raw: the raw scores of every process (equal to `raw` on one process), so the running
    statistics agree across ranks. Order: normalise, clip, then the missing-EOS penalty, so
    the penalty is in the same units whatever the normalisation.
    `rm_bias` needs nothing here: the RM sources already added their stored bias.
    """
    scores = raw
    if cfg.score_norm == "running":
        # Normalise by the statistics of everything seen so far, this batch included
        # (Huang et al. 2024 discuss reward normalisation; OpenRLHF normalises the same way).
        moments.update(all_raw)
        std = moments.std if moments.std > 0 else 1.0
        scores = (scores - moments.mean) / std
    if cfg.score_clip is not None:
        scores = PF.clip_scores(scores, cfg.score_clip)
    if cfg.missing_eos_penalty:
        scores = PF.apply_missing_eos_penalty(scores, has_eos, cfg.missing_eos_penalty)
    return scores
