"""Combine several annotators' rankings of one item into one ranking (pure functions on lists).

Input everywhere: `rankings`, a list of per-annotator rank lists over the same K completions
(dense, 1 = best, ties share a rank). Output: one dense rank list of length K.
"""

from __future__ import annotations

from rlhf_stack.data import preferred_pairs


def dense_ranks_from_scores(scores: list[float]) -> list[int]:
    """Higher score = better; equal scores share a rank. [3, 1, 3, 0] -> [1, 2, 1, 3]."""
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(s) + 1 for s in scores]


def borda_scores(rankings: list[list[int]]) -> list[float]:
    """Borda count with ties: per annotator, a completion scores 1 for every completion ranked
    strictly below it and 1/2 for every other completion tied with it; scores are summed."""
    k = len(rankings[0])
    scores = [0.0] * k
    for ranks in rankings:
        for i in range(k):
            for j in range(k):
                if i != j:
                    scores[i] += 1.0 if ranks[i] < ranks[j] else 0.5 if ranks[i] == ranks[j] else 0.0
    return scores


def borda(rankings: list[list[int]]) -> list[int]:
    return dense_ranks_from_scores(borda_scores(rankings))


def pairwise_margins(rankings: list[list[int]]) -> list[list[int]]:
    """margins[i][j] = #annotators ranking i above j minus #annotators ranking j above i."""
    k = len(rankings[0])
    margins = [[0] * k for _ in range(k)]
    for ranks in rankings:
        for i, j in preferred_pairs(ranks):
            margins[i][j] += 1
            margins[j][i] -= 1
    return margins


def ranked_pairs(rankings: list[list[int]]) -> list[int]:
    """Tideman's ranked pairs (1987): lock majorities from the largest margin down, skipping any
    that would close a cycle; the rank is 1 + the longest chain of locked wins above a completion.
    Completions with no locked relation between them can share a rank (a tie)."""
    margins = pairwise_margins(rankings)
    k = len(margins)
    majorities = sorted(((margins[i][j], i, j) for i in range(k) for j in range(k) if margins[i][j] > 0),
                        key=lambda t: (-t[0], t[1], t[2]))
    beats: dict[int, set[int]] = {i: set() for i in range(k)}  # locked edges winner -> losers
    for _, winner, loser in majorities:
        if not _reaches(beats, loser, winner):
            beats[winner].add(loser)
    depth = [0] * k
    for _ in range(k):  # longest path in a DAG of k nodes settles in < k relaxation rounds
        for winner in range(k):
            for loser in beats[winner]:
                depth[loser] = max(depth[loser], depth[winner] + 1)
    return [d + 1 for d in depth]


def _reaches(edges: dict[int, set[int]], start: int, goal: int) -> bool:
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(edges[node])
    return False


AGGREGATORS = {"borda": borda, "ranked_pairs": ranked_pairs}
