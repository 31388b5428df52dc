"""DPO's math as pure functions on tensors (STYLE 4: no model, no config inside).

Shapes: `logratios (B, K)` hold log pi(y_k | x) - log pi_ref(y_k | x) for the K completions of B
rankings, each log-probability summed over the completion's tokens; `ranks (B, K)` the human ranks
(1 = best, equal numbers = tie, <= 0 = padding), as in `rlhf_stack.reward.functional`.

DPO's implicit reward is r(x, y) = beta * log pi(y|x) / pi_ref(y|x) (Rafailov et al. 2023, eq. 5),
so a K-wise preference loss on rankings is the reward model's ranking loss applied to those
rewards. `sigmoid` and `plackett_luce` therefore ARE `reward.functional.ranking_loss` and
`listwise_loss` on beta * logratios: the same pair rule (ties give no pair), the same per-ranking
mean, the same Breslow ties. Every loss weighs each ranking the same, whatever its K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf_stack.ppo.functional import logprobs_from_logits, masked_sum
from rlhf_stack.reward.functional import listwise_loss, preferred_pairs, ranking_loss

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n,) float32 log pi(completion | prompt): the sum of log softmax(logits)[label] where `mask` holds.

    logits (n, T, V) where logits[:, t] predicts labels[:, t]; labels (n, T) token ids; mask (n, T),
    1 on the completion's tokens. Per-token log-probabilities as PPO computes them, a row at a time.
    """
    return masked_sum(logprobs_from_logits(logits, labels), mask, dim=1)


def sigmoid_loss(logratios: torch.Tensor, ranks: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) over every strictly ordered pair of a ranking:
    mean of -log sigmoid(beta * (logratio_i - logratio_j)) over the C(K,2) pairs minus ties, mean
    over rankings. For K=2 it is the paper's loss exactly. Returns a scalar."""
    return ranking_loss(beta * logratios, ranks)


def plackett_luce_loss(logratios: torch.Tensor, ranks: torch.Tensor, beta: float) -> torch.Tensor:
    """Listwise DPO: the Plackett-Luce negative log-likelihood of the whole ranking under the
    implicit rewards (Rafailov et al. 2023, appendix A.3, eq. 19), ties by Breslow, divided by the
    number of choices in the ranking (K-1 without ties) and averaged over rankings. For K=2 it
    equals `sigmoid_loss`. Returns a scalar."""
    return listwise_loss(beta * logratios, ranks)


def ipo_loss(logratios: torch.Tensor, ranks: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17) over every strictly ordered pair: (h_ij - 1 / (2 beta))^2 with
    h_ij = logratio_i - logratio_j for completion i ranked above j; beta is the paper's tau.
    Mean over a ranking's pairs, then over rankings that hold a pair. Returns a scalar.

    IPO regresses the log-ratio gap to a finite target instead of pushing it to infinity, so it
    does not overfit deterministic preferences the way the sigmoid loss can (the paper's §5).
    The log-ratios are summed over tokens, as eq. 17 writes them; TRL's `ipo` divides each by its
    completion's token count first, so a beta tuned there does not carry over unchanged.
    """
    x = logratios.float()
    if x.dim() == 1:
        x, ranks = x[None], ranks[None]
    pairs = preferred_pairs(ranks)
    gap = x[:, :, None] - x[:, None, :]  # [b, i, j] = logratio_i - logratio_j
    pair_losses = torch.where(pairs, (gap - 1.0 / (2.0 * beta)) ** 2, torch.zeros_like(gap))
    n_pairs = pairs.sum(dim=(1, 2))
    has_pairs = n_pairs > 0
    if not bool(has_pairs.any()):
        return x.sum() * 0.0  # keeps the graph (a zero gradient) when no ranking holds a pair
    return (pair_losses.sum(dim=(1, 2)) / n_pairs.clamp(min=1))[has_pairs].mean()


LOSSES: dict[str, Loss] = {"sigmoid": sigmoid_loss, "ipo": ipo_loss, "plackett_luce": plackett_luce_loss}


def mean_margin(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Mean of r_i - r_j over every strictly ordered pair (i above j) of all rankings, pooled like
    `reward.functional.pairwise_accuracy`; rewards and ranks (B, K). A scalar (nan without pairs)."""
    pairs = preferred_pairs(ranks if ranks.dim() == 2 else ranks[None])
    r = rewards.float() if rewards.dim() == 2 else rewards.float()[None]
    gap = r[:, :, None] - r[:, None, :]
    return gap[pairs].mean() if bool(pairs.any()) else r.new_tensor(float("nan"))
