"""The reward model's losses as pure functions on tensors (STYLE 4: no model, no config inside).

Shapes: `scores (B, K)` are the rewards of the K completions of B rankings, `ranks (B, K)` their
human ranks (1 = best, equal numbers = tie). Rankings with fewer than K completions are padded
with rank <= 0 (any score); a 1-D `(K,)` pair is read as one ranking. Each ranking weighs the
same in a batch, whatever its K: its loss is a mean over its own comparisons, and the batch
loss a mean over rankings, as in InstructGPT eq. 1 (the 1/C(K,2) factor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _batched(scores: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.shape != ranks.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and ranks {tuple(ranks.shape)} differ in shape")
    if scores.dim() == 1:
        return scores[None].float(), ranks[None]
    return scores.float(), ranks


def preferred_pairs(ranks: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: entry [b, i, j] is True when completion i is ranked strictly above j.

    Tied pairs and padding (rank <= 0) are False: a tie states no preference. The tensor form of
    `rlhf_stack.data.preferred_pairs`, the pair rule every other count uses.
    """
    valid = ranks > 0
    return (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def _mean_over_rankings(per_ranking: torch.Tensor, counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    has_terms = counts > 0
    if not bool(has_terms.any()):
        return like.sum() * 0.0  # keeps the graph (a zero gradient) when no ranking holds a pair
    return per_ranking[has_terms].mean()


def ranking_loss(scores: torch.Tensor, ranks: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """InstructGPT's K-wise loss: mean over rankings of the mean of -log sigmoid(r_i - r_j - m_ij)
    over every pair with rank_i < rank_j (Ouyang et al. 2022, eq. 1). Ties are skipped.

    margin: m_ij = margin * (rank_j - rank_i), a required winning gap that grows with the rank
    distance (Llama 2 uses a rating-gap margin the same way, Touvron et al. 2023, eq. 2).
    scores (B, K) or (K,); ranks same shape. Returns a scalar.
    """
    s, r = _batched(scores, ranks)
    pairs = preferred_pairs(r)
    diff = s[:, :, None] - s[:, None, :]  # [b, i, j] = s_i - s_j
    if margin:
        diff = diff - margin * (r[:, None, :] - r[:, :, None]).to(s.dtype)
    pair_losses = torch.where(pairs, -F.logsigmoid(diff), torch.zeros_like(diff))
    n_pairs = pairs.sum(dim=(1, 2))
    per_ranking = pair_losses.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    return _mean_over_rankings(per_ranking, n_pairs, s)


def listwise_loss(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the ranking, per choice, mean over rankings.

    Plackett-Luce reads a ranking as picking the best, then the best of the rest, ...:
    -log P = sum_i [logsumexp_{j ranked no better than i} s_j - s_i]. Ties use Breslow's (1974)
    approximation: completions that share a rank each count as picked from the same remaining
    set (their tied peers included in the denominator), so no order is imposed among them.
    The worst tier picks from nothing and adds no term. Each ranking's sum is divided by its
    number of terms (K-1 without ties). For K=2 this equals `ranking_loss` exactly.
    """
    s, r = _batched(scores, ranks)
    valid = r > 0
    # remaining[b, i, j]: j is still to be picked when i is (rank_j >= rank_i), i.e. the risk set of i
    remaining = valid[:, None, :] & (r[:, None, :] >= r[:, :, None])
    floor = torch.finfo(s.dtype).min
    log_denominator = torch.logsumexp(s[:, None, :].masked_fill(~remaining, floor), dim=-1)  # (B, K)
    worst = r.masked_fill(~valid, 0).max(dim=1, keepdim=True).values
    chooses = valid & (r < worst)
    terms = torch.where(chooses, log_denominator - s, torch.zeros_like(s))
    n_terms = chooses.sum(dim=1)
    return _mean_over_rankings(terms.sum(dim=1) / n_terms.clamp(min=1), n_terms, s)


def center_penalty(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Mean over rankings of (mean reward of the ranking's completions)^2.

    Keeps rewards centred near 0 per prompt (Eisenstein et al. 2023, "Helping or Herding?",
    eq. 2, there for pairs: (r(x,y+) + r(x,y-))^2); the K-wise loss alone only fixes differences.
    """
    s, r = _batched(scores, ranks)
    valid = r > 0
    count = valid.sum(dim=1)
    means = torch.where(valid, s, torch.zeros_like(s)).sum(dim=1) / count.clamp(min=1)
    return _mean_over_rankings(means**2, count, s)


def pairwise_accuracy(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Share of preferred pairs with s_i > s_j (score ties count one half); a scalar, for logs."""
    s, r = _batched(scores, ranks)
    pairs = preferred_pairs(r)
    diff = s[:, :, None] - s[:, None, :]
    hits = (diff > 0).float() + 0.5 * (diff == 0).float()
    return (hits * pairs).sum() / pairs.sum().clamp(min=1)
