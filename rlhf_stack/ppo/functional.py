"""Pure tensor functions for PPO on language models, named like `torch.nn.functional`.

No model, no config object, no accelerator in here: the trainer calls exactly these functions
and tests/unit/test_ppo_functional.py checks exactly these on hand-computed tensors.

Shapes: `b` = batch (rollouts), `t` = response_len, `V` = vocabulary size.
`mask` is always `(b, t)`, float or bool, 1 for real response tokens (EOS included) and 0 for
padding after EOS. Responses are right-padded, so each row's mask is ones then zeros.

Sources cited below:
  Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE" (GAE).
  Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (PPO).
  Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
  Schulman 2020, "Approximating KL divergence" (blog post; k1/k2/k3 estimators).
  Ouyang et al. 2022, "Training language models to follow instructions" (InstructGPT).
  Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
  Shao et al. 2024, "DeepSeekMath" (GRPO: a per-sequence mean of token losses).
  Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO).
The advantage estimators (GAE's step 4 and the critic-free RLOO / GRPO / REINFORCE-baseline)
are in `estimators.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over entries where `mask` is 1.

    x, mask: same shape, e.g. `(b, t)`. Returns a scalar when `dim` is None, else `x` reduced
    over `dim` (e.g. `(b,)` for `dim=1`).
    """
    masked = x * mask.to(x.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over entries where `mask` is 1.

    x, mask: same shape, e.g. `(b, t)`. Returns a scalar when `dim` is None, else `x` reduced
    over `dim`. A slice with no real entries has mean 0 rather than NaN, so an empty minibatch
    or row cannot poison the loss or the logged statistics.
    """
    mask = mask.to(x.dtype)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all entries where `mask` is 1; scalar.

    x, mask: same shape, e.g. `(b, t)`. `unbiased=True` applies Bessel's correction n/(n-1),
    as `torch.var` does; it needs at least two real entries and raises ValueError otherwise.
    """
    mask = mask.to(x.dtype)
    centered = x - masked_mean(x, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        n_real = mask.sum()
        if n_real < 2:
            raise ValueError(f"masked_var(unbiased=True) needs >= 2 real entries, got {int(n_real)}")
        variance = variance * n_real / (n_real - 1)
    return variance


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance (and zero mean) over the real entries; `(b, t) -> (b, t)`.

    Advantages are whitened per rollout batch (shift_mean=True) to keep the policy-gradient scale
    steady across batches. Rewards, if whitened, keep their mean (shift_mean=False): shifting it
    would change which responses are rewarded (Huang et al. 2024, "whiten rewards"; TRL and
    lm-human-preferences do the same). Padded positions are returned as 0.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------
# KL estimators and rewards
# ---------------------------------------------------------------------------------------------


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k1 estimate of KL(pi || pi_ref) from samples of pi; any shape, e.g. `(b, t)`.

    k1 = log pi(a|s) - log pi_ref(a|s): unbiased but high-variance and can be negative per
    token (Schulman 2020). It is the penalty of Ziegler 2019 and InstructGPT (Ouyang 2022, eq. 2).
    """
    return logprobs - ref_logprobs


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from samples of pi; any shape, e.g. `(b, t)`.

    With log r = log pi_ref - log pi, k3 = (r - 1) - log r. It is unbiased (E_pi[r] = 1) and
    never negative, since log r <= r - 1 (Schulman 2020, "Approximating KL divergence").
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k3": kl_k3}
"""Estimator name -> function; the trainer picks one at setup (STYLE.md item 7)."""


def kl_penalized_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: -kl_coef * kl everywhere, plus the score on the last real token.

    scores: `(b,)` reward-model score of each whole response. kl: `(b, t)` per-token KL
    estimate. mask: `(b, t)`. Returns `(b, t)`, 0 at padding.
    The sequence-level score is a terminal reward, so it lands on the token that ends the
    response (index mask.sum(1) - 1); the KL penalty is dense (Ziegler 2019, eq. 2;
    Ouyang 2022, eq. 2; Huang et al. 2024, "reward is given at the EOS token").
    """
    mask = mask.to(kl.dtype)
    n_real = mask.sum(1).long()  # (b,)
    if bool((n_real == 0).any()):
        raise ValueError("kl_penalized_rewards: a row has no real response token to put its score on")
    rewards = -kl_coef * kl * mask
    last_index = (n_real - 1).unsqueeze(1)  # (b, 1)
    return rewards.scatter_add(1, last_index, scores.to(rewards.dtype).unsqueeze(1))


def apply_missing_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float) -> Tensor:
    """Subtract `penalty` from the score of every response that never emitted EOS.

    scores: `(b,)`; has_eos: `(b,)` bool. `penalty` >= 0 is an amount subtracted (TRL's
    `missing_eos_penalty` convention, e.g. 1.0), not a replacement score: the ordering among
    truncated responses is kept, while truncation still costs. Huang et al. 2024 instead
    replace the score by a constant (-1); subtracting keeps the signal the RM gives.
    """
    if penalty < 0:
        raise ValueError(f"missing-EOS penalty is an amount subtracted; expected >= 0, got {penalty}")
    return scores - penalty * (~has_eos.bool()).to(scores.dtype)


def clip_scores(scores: Tensor, clip_value: float) -> Tensor:
    """Clamp reward-model scores into [-clip_value, clip_value]; `(b,) -> (b,)`.

    Bounds the terminal reward so one out-of-distribution score cannot dominate a batch's
    advantages (OpenRLHF `reward_clip_range`; Huang et al. 2024 discuss score scaling).
    """
    return scores.clamp(min=-clip_value, max=clip_value)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, gae_lambda: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over one response per row.

    rewards, values, mask: `(b, t)`. Returns `(advantages, returns)`, both `(b, t)`, 0 at padding,
    with returns = advantages + values (the value-function target).
    Backward recursion (Schulman 2016, eqs. 11-16):
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lambda * A_{t+1}.
    Values past the last real token count as 0: the episode ends at EOS, so there is nothing
    to bootstrap from, and value-head outputs on padding must not leak into real positions.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    response_len = rewards.shape[1]
    advantages_reversed = []
    next_advantage = torch.zeros_like(values[:, 0])  # (b,)
    # 1. walk the response from its last position back to the first
    for t in reversed(range(response_len)):
        # 2. V_{t+1}: zero beyond the tensor and (values are masked) beyond EOS
        next_value = values[:, t + 1] if t + 1 < response_len else torch.zeros_like(values[:, t])
        # 3. one-step TD error, then the exponentially weighted sum of later TD errors
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * gae_lambda * next_advantage
        advantages_reversed.append(next_advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# Loss aggregation: per-token losses (b, t) -> one scalar
# ---------------------------------------------------------------------------------------------


def token_mean(losses: Tensor, mask: Tensor) -> Tensor:
    """Mean over every real token of the batch; `(b, t) -> ()`.

    Each token weighs the same, so a long response carries more weight than a short one (PPO as
    in TRL, OpenRLHF and Huang et al. 2024).
    """
    return masked_mean(losses, mask)


def sequence_mean(losses: Tensor, mask: Tensor) -> Tensor:
    """Mean over responses of each response's mean token loss; `(b, t) -> ()`.

    Each response weighs the same whatever its length (the 1/G sum_i 1/|o_i| sum_t of GRPO's
    objective, Shao et al. 2024); a token of a short response weighs more than one of a long one.
    """
    return masked_mean(losses, mask, dim=1).mean()


def dr_grpo_mean(losses: Tensor, mask: Tensor, max_new_tokens: int) -> Tensor:
    """Sum over real tokens divided by (responses * max_new_tokens); `(b, t) -> ()`.

    Dr. GRPO (Liu et al. 2025): dividing each response's token sum by a constant instead of its
    own length removes the length bias of `sequence_mean` (which shrinks the per-token gradient
    of long wrong answers). The constant is the generation budget, so the scale is the same for
    every batch and micro-batch. (Dr. GRPO also drops GRPO's division by the group std: that is
    the advantage estimator's part, e.g. `rloo`.)
    """
    return masked_sum(losses, mask) / (losses.shape[0] * max_new_tokens)


def loss_aggregation(name: str, max_new_tokens: int) -> Callable[[Tensor, Tensor], Tensor]:
    """The aggregation `name` ("token_mean" | "sequence_mean" | "dr_grpo") as f(losses, mask);
    the trainer picks it once at setup (STYLE.md item 7)."""
    return {"token_mean": token_mean, "sequence_mean": sequence_mean,
            "dr_grpo": partial(dr_grpo_mean, max_new_tokens=max_new_tokens)}[name]


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float,
    aggregate: Callable[[Tensor, Tensor], Tensor] = token_mean,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (Schulman 2017, eq. 7), as a loss to minimise.

    logprobs: `(b, t)` under the policy being trained; old_logprobs: `(b, t)` under the policy
    that generated the rollout; advantages, mask: `(b, t)`. Returns `(loss, stats)`: loss is
    a scalar, aggregate(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), mask), where
    aggregate is one of `token_mean` (the default), `sequence_mean`, `dr_grpo_mean`.
    stats (detached scalar tensors, so logging need not sync the device every step):
      clipfrac   - fraction of real tokens where the clipped term is the active one;
      approx_kl  - k3 estimate of KL(pi_old || pi) on the rollout tokens (Schulman 2020), >= 0;
      ratio_mean - mean of pi / pi_old over real tokens (drifts from 1 as the policy moves).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        # Samples come from pi_old, so KL(pi_old || pi) is the k3 of (old_logprobs, logprobs).
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logprobs, logprobs), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value-function loss; scalar.

    values: `(b, t)` from the value head being trained; old_values: `(b, t)` from the rollout;
    returns, mask: `(b, t)`. Loss = 0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2)) with
    V_clip = old_values + clip(V - old_values, -eps, eps): the value head may not move far from
    its rollout-time estimate in one update (OpenAI baselines ppo2, lm-human-preferences, TRL).
    stats: vf_clipfrac - fraction of real tokens where the clipped loss is the active one.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)}
    return loss, stats


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Causal LM loss for the PPO-ptx pretraining term; scalar.

    logits: `(b, t, V)`; labels: `(b, t)` token ids, -100 where ignored. Position i predicts
    token i + 1, so logits and labels are shifted by one. The trainer adds ptx_coef * this
    loss: InstructGPT's objective adds gamma * E_pretrain[log pi(x)] (Ouyang 2022, eq. 2).
    Mean over non-ignored tokens; 0 when every label is ignored.
    """
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100, reduction="sum")
    n_tokens = (shifted_labels != -100).sum().clamp(min=1)
    return total / n_tokens


def token_lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """`lm_loss` from the used positions alone: logits `(n, V)` each predicting targets `(n,)`;
    the mean over them (0 when n = 0)."""
    return F.cross_entropy(logits, targets, reduction="sum") / max(len(targets), 1)


# ---------------------------------------------------------------------------------------------
# From logits
# ---------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log pi(token_t | context) for the given tokens; logits `(b, t, V)`, tokens `(b, t)` -> `(b, t)`.

    pi is softmax(logits / temperature): PPO scores samples under the distribution they were
    drawn from (Huang et al. 2024, "scale the logits by temperature"). The work runs one row at
    a time in float32: a full `(b, t, V)` copy (a cast, or a division by the temperature) is
    the largest tensor in PPO, and on CPU allocating it costs more than the arithmetic; a row at
    a time keeps the peak to `(t, V)` (TRL's selective_log_softmax does the same).
    """
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row_logits = _scaled_row(row_logits, temperature)  # (t, V)
        picked = row_logits.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) at each position; `(b, t, V) -> (b, t)`.

    H = logsumexp(z) - sum softmax(z) * z, computed a row at a time in float32 for the same
    memory reason as `logprobs_from_logits`. Logged to watch the policy collapse.
    """
    rows = []
    for row_logits in logits:
        row_logits = _scaled_row(row_logits, temperature)  # (t, V)
        probs = torch.softmax(row_logits, dim=-1)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * row_logits).sum(-1))
    return torch.stack(rows)


def _scaled_row(row_logits: Tensor, temperature: float) -> Tensor:
    """One row's logits `(t, V)` in float32, divided by the temperature (no copy when there is nothing to do)."""
    row_logits = row_logits.float()
    return row_logits if temperature == 1.0 else row_logits / temperature
