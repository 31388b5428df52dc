"""`rlhf-stack label stats`: annotator throughput and inter-annotator agreement.

Agreement is computed on items ranked by two or more people (latest version of each):
- pairwise agreement: over every pair of completions and every pair of annotators, the share of
  comparisons where both say the same thing (better / tie / worse); InstructGPT reports this
  figure for its labelers (~73% inter-annotator agreement).
- Kendall's tau-b between two annotators' ranks of one item, averaged (undefined when one of
  them tied everything; those pairs are left out).
- Krippendorff's alpha, ordinal metric, with units = (item, completion) and values = ranks
  (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"); handles missing coders.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict

from rlhf_stack.metrics.agreement import pair_agreement


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pairwise_agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    """(agreeing comparisons, comparisons) over completion pairs i < j, ties included (better /
    tie / worse must match; `rlhf_stack.metrics.agreement` also has the strict-pairs-only figure)."""
    return pair_agreement(a, b, count_ties=True)


def kendall_tau_b(a: list[float], b: list[float]) -> float | None:
    """tau_b = (C - D) / sqrt((C + D + T_a) (C + D + T_b)); T_x = pairs tied only in x. None if undefined."""
    concordant = discordant = tied_a = tied_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s = _sign(a[i] - a[j]) * _sign(b[i] - b[j])
        if s > 0:
            concordant += 1
        elif s < 0:
            discordant += 1
        elif a[i] == a[j] and b[i] != b[j]:
            tied_a += 1
        elif b[i] == b[j] and a[i] != a[j]:
            tied_b += 1
    denominator = math.sqrt((concordant + discordant + tied_a) * (concordant + discordant + tied_b))
    return None if denominator == 0 else (concordant - discordant) / denominator


def _delta2(metric: str, values: list[float], totals: dict[float, float]):
    """Squared distance between two values, from Krippendorff's metric definitions."""
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: (c - k) ** 2
    if metric == "ordinal":
        # (sum of n_g for g between c and k, minus half of n_c and n_k)^2 over the ordered values
        cumulative, running = {}, 0.0
        for v in values:
            running += totals[v]
            cumulative[v] = running

        def ordinal(c, k):
            lo, hi = min(c, k), max(c, k)
            between = cumulative[hi] - cumulative[lo] + totals[lo]
            return (between - (totals[lo] + totals[hi]) / 2) ** 2

        return ordinal
    raise ValueError(f"unknown metric {metric!r}")


def krippendorff_alpha(units: list[list[float]], metric: str = "ordinal") -> float | None:
    """alpha = 1 - D_o / D_e from the coincidence matrix. `units`: the values the coders gave each
    unit (missing coders simply absent); units with fewer than two values are not pairable."""
    coincidence: dict[tuple[float, float], float] = defaultdict(float)
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        for a, b in itertools.permutations(range(m), 2):
            coincidence[(unit[a], unit[b])] += 1.0 / (m - 1)
    totals: dict[float, float] = defaultdict(float)
    for (c, _), weight in coincidence.items():
        totals[c] += weight
    n = sum(totals.values())
    values = sorted(totals)
    if n <= 1 or len(values) < 2:
        return None  # no pairable data, or no variation: alpha is undefined
    delta2 = _delta2(metric, values, totals)
    observed = sum(w * delta2(c, k) for (c, k), w in coincidence.items())
    expected = sum(totals[c] * totals[k] * delta2(c, k) for c in values for k in values)
    return 1.0 - (n - 1) * observed / expected


def agreement(submissions: list[dict]) -> dict:
    """Agreement figures over items with >= 2 ranked submissions (latest versions)."""
    by_item: dict[str, list[list[int]]] = defaultdict(list)
    for s in submissions:
        if s["kind"] == "ranked":
            by_item[s["item_id"]].append(s["ranks"])
    multi = {item: r for item, r in by_item.items() if len(r) >= 2}
    agree = total = 0
    taus = []
    units = []
    for rankings in multi.values():
        for a, b in itertools.combinations(rankings, 2):
            n_agree, n = pairwise_agreement(a, b)
            agree, total = agree + n_agree, total + n
            tau = kendall_tau_b(a, b)
            if tau is not None:
                taus.append(tau)
        units.extend([r[i] for r in rankings] for i in range(len(rankings[0])))
    return {"items_multiply_ranked": len(multi), "annotator_pairs_compared": sum(len(r) * (len(r) - 1) // 2 for r in multi.values()),
            "pairwise_agreement": agree / total if total else None,
            "kendall_tau": statistics.fmean(taus) if taus else None,
            "krippendorff_alpha_ordinal": krippendorff_alpha(units, "ordinal") if units else None}


def per_annotator(submissions: list[dict]) -> list[dict]:
    """Counts by kind and speed (median seconds from lease to submit) for each annotator."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for s in submissions:
        grouped[s["annotator"]].append(s)
    out = []
    for name in sorted(grouped):
        subs = grouped[name]
        seconds = [max(0.0, s["submitted_at"] - s["started_at"]) for s in subs]
        median = statistics.median(seconds)
        out.append({"annotator": name, "items": len(subs),
                    **{kind: sum(s["kind"] == kind for s in subs) for kind in ("ranked", "not_rankable", "skip")},
                    "median_seconds": round(median, 1), "items_per_hour": round(3600 / median, 1) if median > 0 else None})
    return out


def compute_stats(db) -> dict:
    from data_tools.labeler import store

    conn = store.connect(db, create=False)
    try:
        latest = store.latest_submissions(conn)
        n_items = store.count_items(conn)
        n_versions = conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    finally:
        conn.close()
    return {"items": n_items, "submissions": n_versions, "annotators": per_annotator(latest), **agreement(latest)}


def format_stats(stats: dict) -> str:
    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = [f"items: {stats['items']}   submissions (all versions): {stats['submissions']}", "",
             f"{'annotator':<20} {'items':>6} {'ranked':>7} {'not_rk':>7} {'skip':>5} {'med s':>7} {'items/h':>8}"]
    for a in stats["annotators"]:
        lines.append(f"{a['annotator']:<20} {a['items']:>6} {a['ranked']:>7} {a['not_rankable']:>7} {a['skip']:>5} "
                     f"{a['median_seconds']:>7} {fmt(a['items_per_hour']):>8}")
    lines += ["", f"items ranked by 2+ annotators: {stats['items_multiply_ranked']} "
                  f"({stats['annotator_pairs_compared']} annotator pairs)",
              f"pairwise agreement: {fmt(stats['pairwise_agreement'])}",
              f"Kendall tau-b (mean): {fmt(stats['kendall_tau'])}",
              f"Krippendorff alpha (ordinal): {fmt(stats['krippendorff_alpha_ordinal'])}"]
    return "\n".join(lines)
