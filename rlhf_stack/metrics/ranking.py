"""Reward-model metrics on rankings: pure functions on per-ranking score and rank lists.

Every function takes `scores` (one list of K floats per ranking: the RM's reward of each
completion) and `ranks` (one list of K ints per ranking: 1 = best, equal numbers = tie) and
needs numpy only. The `evaluate` modules next to this file (`ranking_accuracy`, `kendall_tau`,
`pairwise_f1`, `pairwise_calibration`) are thin wrappers around these; the reward stage and
`rlhf_stack.evaluation` call `ranking_metrics` for all of them at once.

Conventions shared by all metrics:
- a pair (i, j) counts only when rank_i != rank_j (tied pairs carry no preference);
- rankings whose completions are all tied are skipped (they hold no pair);
- an exact score tie on a preferred pair counts as half right (a constant model scores 50%,
  the coin-flip baseline, instead of 0%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Scores = Sequence[Sequence[float]]
Ranks = Sequence[Sequence[int]]


def _rows(scores: Scores, ranks: Ranks):
    """(scores (K,), ranks (K,)) numpy pairs, all-tied and length-mismatched rows refused/skipped."""
    if len(scores) != len(ranks):
        raise ValueError(f"{len(scores)} score rows but {len(ranks)} rank rows")
    for n, (s, r) in enumerate(zip(scores, ranks, strict=True)):
        s, r = np.asarray(s, dtype=np.float64), np.asarray(r, dtype=np.int64)
        if s.shape != r.shape:
            raise ValueError(f"row {n}: {s.size} scores but {r.size} ranks")
        if r.size >= 2 and np.unique(r).size >= 2:
            yield s, r


def _preferred_pairs(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j) of every pair with completion i ranked strictly better than j."""
    i, j = np.nonzero(r[:, None] < r[None, :])
    return i, j


def pairwise_accuracy(scores: Scores, ranks: Ranks) -> dict[str, float]:
    """Share of preferred pairs (rank_i < rank_j) the RM orders the same way (s_i > s_j).

    Pooled over all pairs of all rankings (each pair weighs the same), as InstructGPT reports it.
    """
    correct, total = 0.0, 0
    for s, r in _rows(scores, ranks):
        i, j = _preferred_pairs(r)
        correct += float(np.sum(s[i] > s[j]) + 0.5 * np.sum(s[i] == s[j]))
        total += i.size
    return {"pairwise_accuracy": correct / total if total else float("nan"), "n_pairs": total}


def top1_accuracy(scores: Scores, ranks: Ranks) -> dict[str, float]:
    """Share of rankings whose highest-scored completion is one of those ranked best (rank 1)."""
    hits, total = 0, 0
    for s, r in _rows(scores, ranks):
        hits += int(r[int(np.argmax(s))] == r.min())
        total += 1
    return {"top1_accuracy": hits / total if total else float("nan"), "n_rankings": total}


def kendall_tau_b(s: np.ndarray, r: np.ndarray) -> float:
    """Kendall's tau-b between scores and the human order of one ranking (ties in either allowed).

    tau_b = (C - D) / sqrt((n0 - t_human) (n0 - t_score)), n0 = K(K-1)/2, t_* = tied pairs
    (Kendall 1945). The human order is -rank, so +1 means the RM reproduces the ranking.
    """
    iu, ju = np.triu_indices(s.size, k=1)
    ds, dh = np.sign(s[iu] - s[ju]), np.sign(r[ju] - r[iu])  # rank: lower is better
    n0 = iu.size
    tied_human, tied_score = int(np.sum(dh == 0)), int(np.sum(ds == 0))
    denom = math.sqrt((n0 - tied_human) * (n0 - tied_score))
    return float(np.sum(ds * dh) / denom) if denom else float("nan")


def kendall_tau(scores: Scores, ranks: Ranks) -> dict[str, float]:
    """Mean per-ranking Kendall tau-b (rankings where the RM gives every completion one score skipped)."""
    taus = [kendall_tau_b(s, r) for s, r in _rows(scores, ranks)]
    taus = [t for t in taus if not math.isnan(t)]
    return {"kendall_tau": float(np.mean(taus)) if taus else float("nan")}


def pairwise_prf(scores: Scores, ranks: Ranks) -> dict[str, float]:
    """Precision / recall / F1 of the binary call "the first completion beats the second".

    Pairs are (i, j) with i < j in the order the completions were presented, ranks not tied;
    label = rank_i < rank_j, prediction = s_i > s_j. Unlike accuracy this shows a position bias
    (a model that favours earlier or later completions); for TRL chosen/rejected rows every
    label is positive and precision is 1 by construction.
    """
    tp = fp = fn = 0
    for s, r in _rows(scores, ranks):
        iu, ju = np.triu_indices(s.size, k=1)
        keep = r[iu] != r[ju]
        label, pred = (r[iu] < r[ju])[keep], (s[iu] > s[ju])[keep]
        tp += int(np.sum(label & pred))
        fp += int(np.sum(~label & pred))
        fn += int(np.sum(label & ~pred))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def pairwise_calibration(scores: Scores, ranks: Ranks, n_bins: int = 10) -> dict[str, float]:
    """How well sigmoid(s_i - s_j) works as P(i is preferred over j) (Bradley-Terry reading).

    Over every ordered non-tied pair (both directions, so the set is symmetric): expected
    calibration error with `n_bins` equal-width bins (Guo et al. 2017), Brier score and log loss.
    """
    probs, labels = [], []
    for s, r in _rows(scores, ranks):
        i, j = np.nonzero(r[:, None] != r[None, :])
        probs.append(1.0 / (1.0 + np.exp(-(s[i] - s[j]))))
        labels.append((r[i] < r[j]).astype(np.float64))
    if not probs:
        return {"ece": float("nan"), "brier": float("nan"), "log_loss": float("nan")}
    p, y = np.concatenate(probs), np.concatenate(labels)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(p[in_bin].mean() - y[in_bin].mean())
    eps = 1e-12
    log_loss = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "log_loss": float(log_loss)}


def ranking_metrics(scores: Scores, ranks: Ranks) -> dict[str, float]:
    """Every metric above in one dict (the reward stage's eval metrics)."""
    out: dict[str, float] = {}
    for fn in (pairwise_accuracy, top1_accuracy, kendall_tau, pairwise_prf, pairwise_calibration):
        out.update(fn(scores, ranks))
    return out
