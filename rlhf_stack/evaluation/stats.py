"""The evaluation's statistics: pure functions on numbers, no model, no config object inside.

- `win_rate`, `paired_outcomes`: who beat whom under the judge, ties one half (InstructGPT fig. 1);
- `bootstrap_interval`, `win_rate_with_interval`: a percentile bootstrap that resamples prompts,
  not samples (a cluster bootstrap: every sample of a prompt moves with it, so two samples of one
  easy prompt do not count as two independent wins);
- `best_of_n_kl`, `best_of_n_picks`, `best_of_n_frontier`: the best-of-n curve (Stiennon 2020,
  Gao 2022), drawn from one pool of samples per prompt;
- `frontier_position`: a policy's win rate against the curve interpolated at the policy's KL;
- `sequence_kl`, `perplexity`, `ranking_pair_margins`: the other per-model figures.

`evaluate.py` calls exactly these; `tests/unit/test_evaluation.py` tests exactly these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf_stack.data import preferred_pairs

# ---- win rates ----------------------------------------------------------------------------------


def preference(score_a: float, score_b: float) -> float:
    """1 if a beats b, 0 if b beats a, 0.5 for a tie."""
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float]) -> float:
    """Share of paired prompts where a's score beats b's; ties count one half."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    return sum(preference(a, b) for a, b in zip(scores_a, scores_b, strict=True)) / len(scores_a)


def group(values: Sequence, n_groups: int) -> list[list]:
    """Split a flat list grouped by prompt (prompt 0's samples first) into `n_groups` equal groups."""
    if n_groups < 1 or len(values) % n_groups:
        raise ValueError(f"{len(values)} values do not split into {n_groups} equal groups")
    size = len(values) // n_groups
    return [list(values[i * size:(i + 1) * size]) for i in range(n_groups)]


def paired_outcomes(scores_a: Sequence[float], scores_b: Sequence[float], n_prompts: int) -> list[list[float]]:
    """Per prompt, the `preference` of a over b for each pair of samples: a's j-th sample against
    b's j-th. Both lists are grouped by prompt (prompt 0's samples first); a side with one sample
    per prompt (a best-of-n pick) meets every sample of the other side."""
    out = []
    for a, b in zip(group(scores_a, n_prompts), group(scores_b, n_prompts), strict=True):
        if len(a) == 1:
            a = a * len(b)
        if len(b) == 1:
            b = b * len(a)
        if len(a) != len(b):
            raise ValueError(f"cannot pair {len(a)} samples per prompt with {len(b)}")
        out.append([preference(x, y) for x, y in zip(a, b, strict=True)])
    return out


# ---- the bootstrap ------------------------------------------------------------------------------


def bootstrap_interval(clusters: Sequence[Sequence[float]], n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled mean of `clusters` (one list of values per
    prompt), resampling whole prompts with replacement: a cluster bootstrap (Davison & Hinkley
    1997, sec. 3.8). Each resample's statistic is sum(values) / count(values) over the drawn
    prompts, so a prompt's samples always move together. Fixed `seed`: the same input, the same
    interval. Returns (low, high), the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles."""
    import numpy as np

    if not clusters or not any(len(c) for c in clusters):
        raise ValueError("bootstrap_interval needs at least one non-empty cluster")
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError("bootstrap_interval needs n_resamples >= 1 and 0 < confidence < 1")
    sums = np.array([float(sum(c)) for c in clusters])
    counts = np.array([len(c) for c in clusters], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(clusters), size=(n_resamples, len(clusters)))
    drawn = counts[picks].sum(axis=1)
    stats = sums[picks].sum(axis=1) / np.where(drawn > 0, drawn, 1.0)
    stats = stats[drawn > 0]  # a resample of only empty clusters has no mean
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class WinRate:
    """A win rate with its bootstrap interval."""

    win_rate: float  # share of paired samples won, ties one half
    low: float  # lower end of the interval
    high: float  # upper end of the interval
    n_samples: int  # paired comparisons behind it
    n_prompts: int  # prompts (the bootstrap's clusters)


def win_rate_with_interval(outcomes: Sequence[Sequence[float]], n_resamples: int = 1000, confidence: float = 0.95,
                           seed: int = 0) -> WinRate:
    """Win rate over every paired sample (`paired_outcomes`: per prompt, 1 / 0.5 / 0 per pair) and its
    prompt-resampling bootstrap interval."""
    n_samples = sum(len(o) for o in outcomes)
    if not n_samples:
        raise ValueError("win_rate_with_interval needs at least one paired sample")
    low, high = bootstrap_interval(outcomes, n_resamples, confidence, seed)
    return WinRate(sum(sum(o) for o in outcomes) / n_samples, low, high, n_samples, len(outcomes))


# ---- best-of-n and the frontier -----------------------------------------------------------------


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || base) = log n - (n - 1) / n nats (Stiennon 2020, app. G.3)."""
    if n < 1:
        raise ValueError("best-of-n needs n >= 1")
    return math.log(n) - (n - 1) / n


def best_of_n_picks(selector: Sequence[float], pool_size: int, n: int) -> list[int]:
    """Per prompt, the index (into the flat pool) of the highest-`selector` sample among the first n
    of its `pool_size` samples; the pool is grouped by prompt. One pool of max(n) samples per prompt
    serves every n, so the whole curve costs max(n) samples per prompt. Ties: the earliest wins."""
    if not 1 <= n <= pool_size or len(selector) % pool_size:
        raise ValueError(f"best-of-{n} needs 1 <= n <= pool size {pool_size} and whole pools per prompt")
    starts = range(0, len(selector), pool_size)
    return [max(range(s, s + n), key=lambda j: selector[j]) for s in starts]


@dataclass(frozen=True)
class FrontierPoint:
    """One point of the best-of-n curve: KL (analytic) and win rate against the baseline."""

    n: int
    kl: float  # log n - (n - 1) / n nats
    win_rate: float
    low: float
    high: float


def best_of_n_frontier(outcomes_by_n: dict[int, Sequence[Sequence[float]]], n_resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> list[FrontierPoint]:
    """The best-of-n curve, one point per n in increasing n (and so increasing KL): analytic KL and
    the win rate of the best-of-n pick against the baseline with its bootstrap interval."""
    points = []
    for n in sorted(outcomes_by_n):
        w = win_rate_with_interval(outcomes_by_n[n], n_resamples, confidence, seed)
        points.append(FrontierPoint(n, best_of_n_kl(n), w.win_rate, w.low, w.high))
    return points


@dataclass(frozen=True)
class FrontierPosition:
    """Where a policy lies against the best-of-n curve at its own KL."""

    position: str  # "above" | "below" | "on" | "beyond the curve" | "before the curve" | "no KL" | "no curve"
    curve_win_rate: float | None  # best-of-n win rate interpolated at the policy's KL; beyond the curve: the
    # highest win rate of any best-of-n point (all of them at less KL than the policy's)
    margin: float | None  # policy win rate - curve_win_rate (positive: above the curve)
    curve_low: float | None  # the curve's interval, interpolated the same way
    curve_high: float | None
    between: tuple[int, int] | None  # the n of the two neighbouring points


def frontier_position(policy_kl: float | None, policy_win: float, curve: Sequence[FrontierPoint]) -> FrontierPosition:
    """The best-of-n win rate interpolated at the policy's KL (linear in KL between the two
    neighbouring n) and the policy's margin above (+) or below (-) it.

    A KL past the last point is "beyond the curve" and one before the first point "before the
    curve" (no extrapolation), except that a KL below a best-of-1 point at KL 0 counts as 0: the true
    KL is >= 0 and the sampled k1 estimate of a barely moved policy can dip below it. Beyond the
    curve the margin is taken against the best-of-n point that wins most (`between` = (n, n)): a
    negative margin means best-of-n wins more at less KL, so the policy lies below the curve
    whatever the curve does further right; a positive one places it nowhere."""
    if policy_kl is None or not curve:
        return FrontierPosition("no KL" if policy_kl is None else "no curve", None, None, None, None, None)
    points = sorted(curve, key=lambda p: p.kl)
    first, last = points[0], points[-1]
    if policy_kl < first.kl and first.n == 1:
        policy_kl = first.kl
    if policy_kl < first.kl:
        return FrontierPosition("before the curve", None, None, None, None, None)
    if policy_kl > last.kl:
        best = max(points, key=lambda p: p.win_rate)
        return FrontierPosition("beyond the curve", best.win_rate, policy_win - best.win_rate, best.low, best.high,
                                (best.n, best.n))
    right = next(i for i, p in enumerate(points) if p.kl >= policy_kl)
    a, b = points[max(right - 1, 0)], points[right]
    t = 0.0 if b.kl == a.kl else (policy_kl - a.kl) / (b.kl - a.kl)

    def at(field: str) -> float:
        return (1 - t) * getattr(a, field) + t * getattr(b, field)

    curve_win = at("win_rate")
    margin = policy_win - curve_win
    position = "above" if margin > 0 else "below" if margin < 0 else "on"
    return FrontierPosition(position, curve_win, margin, at("low"), at("high"), (a.n, b.n))


# ---- KL, perplexity, reward margins -------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def sequence_kl(policy_logprobs: list, ref_logprobs: list) -> dict[str, float]:
    """Mean over samples of the summed per-token k1 and k3 KL estimates (nats per response)."""
    from rlhf_stack.ppo.functional import kl_k1, kl_k3

    k1 = [float(kl_k1(p, r).sum()) for p, r in zip(policy_logprobs, ref_logprobs, strict=True)]
    k3 = [float(kl_k3(p, r).sum()) for p, r in zip(policy_logprobs, ref_logprobs, strict=True)]
    return {"kl": mean(k1), "kl_k3": mean(k3)}


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp of the mean per-token negative log-likelihood."""
    return math.exp(total_nll / max(n_tokens, 1))


def ranking_pair_margins(scores: Sequence[float], ranks: Sequence[int]) -> list[float]:
    """score(better) - score(worse) for every strictly ordered pair of one ranking (ties skipped)."""
    return [scores[i] - scores[j] for i, j in preferred_pairs(ranks)]
