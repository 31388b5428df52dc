"""Advantage estimators for stage 3, as pure tensor functions: GAE with a value model, the
critic-free group baselines RLOO, GRPO and REINFORCE-baseline, and best-of-k (online rejection
sampling: the update trains on each prompt's best sample only).

No model, no config object in here (as `functional.py`); the trainer picks one estimator once at
setup with `advantage_estimator(name, ...)` and calls it in step 4 of its loop, and
tests/unit/test_ppo_estimators.py checks exactly these functions on hand-computed tensors.

Shapes: `b` = rollouts, `t` = response_len, `k` = samples per prompt. A batch holds b / k groups;
the k samples of one prompt are adjacent rows (rows g*k .. g*k + k - 1 form group g), which is
how the trainer lays the prompts out (`data.step_prompt_indices`).

How the KL penalty enters the critic-free estimators: the per-token rewards of step 3
(`functional.kl_penalized_rewards`: -kl_coef * KL_t on every token, + the score on the last one)
are summed per response into one sequence reward R_i = score_i - kl_coef * sum_t KL_{i,t}, and each
estimator turns those R into one advantage per response, given to every one of its tokens. This
treats the whole response as one action, as Ahmadian et al. 2024 do (their reward is
r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)) for the whole y); it is the sequence-level KL of TRL's
RLOOTrainer with `token_level_kl=False`. DeepSeekMath's GRPO
puts the KL into the loss instead; here it is in the reward for all three, so `kl_coef` and the
adaptive controller mean the same thing whichever estimator runs (kl_coef = 0 gives the paper's
outcome-only GRPO).

Sources:
  Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE".
  Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!" (leave-one-out baseline).
  Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
      from Human Feedback in LLMs" (RLOO).
  Shao et al. 2024, "DeepSeekMath" (GRPO, outcome supervision: section 4.1.2).
  Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs" (REINFORCE++-baseline).
  Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment";
      Touvron et al. 2023, "Llama 2", section 3.2.3 (rejection sampling fine-tuning): best-of-k.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from rlhf_stack.ppo import functional as PF

Tensor = torch.Tensor

AdvantageFn = Callable[[Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor | None]]
"""(rewards `(b, t)`, values `(b, t)` or None, mask `(b, t)`) -> (advantages `(b, t)`, returns
`(b, t)` or None): step 4 of the loop, whichever estimator runs."""


# ---------------------------------------------------------------------------------------------
# Group baselines: one sequence reward per response -> one advantage per response
# ---------------------------------------------------------------------------------------------


def _groups(sequence_rewards: Tensor, k: int) -> Tensor:
    """`(b,) -> (b / k, k)`: row g holds the k samples of prompt g (adjacent in the batch)."""
    if k < 2 or sequence_rewards.dim() != 1 or sequence_rewards.shape[0] % k:
        raise ValueError(f"group baselines need k >= 2 samples per prompt and a batch of whole groups; "
                         f"got k={k} and shape {tuple(sequence_rewards.shape)}")
    return sequence_rewards.reshape(-1, k)


def rloo_advantages(sequence_rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantages; `(b,) -> (b,)`.

    A_i = R_i - (1 / (k - 1)) * sum_{j != i} R_j over the k samples of the same prompt: each
    sample's baseline is the mean reward of its k - 1 siblings, which does not depend on sample
    i itself, so the gradient estimate stays unbiased (Kool et al. 2019; Ahmadian et al. 2024).
    Equal to k / (k - 1) * (R_i - mean(group)).
    """
    groups = _groups(sequence_rewards, k)
    baseline = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)


def group_normalized_advantages(sequence_rewards: Tensor, k: int, eps: float = 1e-4) -> Tensor:
    """GRPO advantages; `(b,) -> (b,)`.

    A_i = (R_i - mean(group)) / (std(group) + eps) over the k samples of the same prompt (Shao et
    al. 2024, DeepSeekMath section 4.1.2, outcome supervision). std is the unbiased sample std,
    as TRL's GRPOTrainer and OpenRLHF's group_norm compute it; eps = 1e-4 as in TRL. A group whose
    k rewards are equal gets advantage 0.
    """
    groups = _groups(sequence_rewards, k)
    mean = groups.mean(1, keepdim=True)
    std = groups.std(1, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def reinforce_baseline_advantages(sequence_rewards: Tensor, k: int, eps: float = 1e-8) -> Tensor:
    """REINFORCE++-baseline advantages; `(b,) -> (b,)`.

    Subtract the mean reward of each prompt's group, then whiten over the whole batch:
    A = (c - mean(c)) / (std(c) + eps), c_i = R_i - mean(group of i) (Hu 2025, "REINFORCE++-
    baseline"; the batch std, unbiased). Unlike GRPO, the scale comes from the whole batch, so a prompt whose k
    rewards barely differ is not blown up to unit size. Each response counts once in the batch
    statistics (OpenRLHF whitens over tokens instead, which weighs long responses more).
    """
    groups = _groups(sequence_rewards, k)
    centered = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    return (centered - centered.mean()) / (centered.std() + eps)


def best_of_k_advantages(sequence_rewards: Tensor, k: int) -> Tensor:
    """Best-of-k (online rejection sampling) advantages; `(b,) -> (b,)`.

    A_i = 1 when R_i is the highest reward of its group of k (the first one on a tie), else 0.
    The clipped policy loss on these advantages is a maximum-likelihood step on each prompt's best
    sample, held to the clip range: the policy moves toward the best-of-k distribution of its own
    samples, as RAFT (Dong et al. 2023) and Llama 2's rejection-sampling fine-tuning do, but online,
    one batch at a time. Nothing is pushed down, so the probability mass is not spread over tokens
    no sample chose (the entropy rise the baselines above show on the demo, benchmarks/RESULTS.md).
    R_i includes the KL penalty, so the winner is the best sample at its KL cost. The trainer
    updates on the winners only (`trains_on_winners`): the other rows would only add zeros.
    """
    groups = _groups(sequence_rewards, k)
    best = torch.zeros_like(groups)
    best.scatter_(1, groups.argmax(1, keepdim=True), 1.0)
    return best.reshape(-1)


GROUP_ESTIMATORS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "rloo": rloo_advantages, "grpo": group_normalized_advantages, "reinforce_baseline": reinforce_baseline_advantages,
    "best_of_k": best_of_k_advantages,
}
"""Critic-free estimator name -> its group function `(sequence_rewards (b,), k) -> advantages (b,)`
(a baseline subtracted, or for best_of_k the winner picked)."""


def sequence_advantages(rewards: Tensor, mask: Tensor, k: int,
                        baseline: Callable[[Tensor, int], Tensor]) -> tuple[Tensor, None]:
    """Critic-free step 4: per-token rewards -> one advantage per response, on each of its tokens.

    rewards, mask: `(b, t)` (rewards from `functional.kl_penalized_rewards`, 0 at padding).
    R_i = sum_t rewards_{i,t} = score_i - kl_coef * sum_t KL_{i,t} (see the module docstring);
    baseline: one of GROUP_ESTIMATORS. Returns (advantages `(b, t)`, 0 at padding; None): there
    are no returns, since no value function is trained.
    """
    sequence_rewards = PF.masked_sum(rewards, mask, dim=1)  # (b,)
    advantages = baseline(sequence_rewards, k).unsqueeze(1) * mask.to(rewards.dtype)
    return advantages, None


# ---------------------------------------------------------------------------------------------
# GAE with a value model
# ---------------------------------------------------------------------------------------------


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, gae_lambda: float,
                   whiten: bool) -> tuple[Tensor, Tensor]:
    """GAE step 4: (advantages, returns), both `(b, t)`, 0 at padding.

    rewards, values, mask: `(b, t)`. `functional.gae` (Schulman 2016), then, when `whiten`, the
    advantages normalised over the batch's real tokens (`functional.masked_whiten`); the
    returns (value targets) are never whitened.
    """
    advantages, returns = PF.gae(rewards, values, mask, gamma, gae_lambda)
    if whiten:
        advantages = PF.masked_whiten(advantages, mask)
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# Chosen once at setup
# ---------------------------------------------------------------------------------------------


ESTIMATORS = ("gae", *GROUP_ESTIMATORS)
"""Every advantage estimator name (PPOConfig.advantage_estimator takes one of these)."""


def uses_value_model(name: str) -> bool:
    """Whether estimator `name` needs a value function (only GAE does)."""
    return name == "gae"


def trains_on_winners(name: str) -> bool:
    """Whether the update uses only each prompt's best sample (best_of_k), not the whole batch."""
    return name == "best_of_k"


def winner_rows(advantages: Tensor) -> Tensor:
    """Row indices of the winners in best_of_k advantages `(b, t)` (1 on a winner's real tokens,
    0 elsewhere), in batch order. Every response has at least one real token (its EOS or its
    first sampled token), so each winner's first column is 1."""
    return torch.nonzero(advantages[:, 0] > 0).squeeze(1)


def advantage_estimator(name: str, *, gamma: float, gae_lambda: float, whiten: bool,
                        samples_per_prompt: int) -> AdvantageFn:
    """The estimator `name` as one function of (rewards, values, mask); the trainer calls it in
    step 4 (STYLE.md item 7: chosen once, no branch in the loop). GAE reads gamma, gae_lambda and
    whiten; the group baselines read samples_per_prompt (k)."""
    if uses_value_model(name):
        return partial(gae_advantages, gamma=gamma, gae_lambda=gae_lambda, whiten=whiten)
    baseline = GROUP_ESTIMATORS[name]
    return lambda rewards, values, mask: sequence_advantages(rewards, mask, samples_per_prompt, baseline)
