"""Inter-annotator agreement on rankings: the noise ceiling of a reward model's pairwise accuracy.

Two annotators who rank the same K completions of one prompt agree on a completion pair when
they order it alike. InstructGPT reports 72.6% agreement between its labelers over the pairs both
ranked strictly (Ouyang et al. 2022, section 3.4). A reward model's pairwise accuracy on the same
rankings is read against this figure, the noise ceiling: the labels contradict each other that
often. (A model of the labelers' consensus can beat it somewhat, as it adds no noise of its own.)

Pure functions on rows (dicts or `rlhf_stack.data.Ranking`s); stdlib only.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence

from rlhf_stack.data import prompt_key


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def pair_agreement(ranks_a: Sequence[int], ranks_b: Sequence[int],
                   count_ties: bool = False) -> tuple[int, int]:
    """(pairs ordered alike, pairs compared) over the completion pairs i < j of one item.

    `ranks_a`, `ranks_b`: two annotators' ranks of the same K completions, in the same order.
    count_ties=False (InstructGPT's figure): only pairs both rank strictly count, agreement = same
    order. count_ties=True: every pair counts, agreement = same call among better / tie / worse.
    """
    agree = total = 0
    for i, j in itertools.combinations(range(len(ranks_a)), 2):
        da, db = _sign(ranks_a[i] - ranks_a[j]), _sign(ranks_b[i] - ranks_b[j])
        if count_ties or (da and db):
            total += 1
            agree += da == db
    return agree, total


def _field(row, name: str):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def agreement_counts(rows: Iterable) -> tuple[int, int]:
    """(pairs ordered alike, pairs both annotators rank strictly), pooled over every two rows of
    one prompt and one set of completions (the completions may be listed in any order).

    Two rows by the same named annotator are not compared (that is self-consistency, not
    agreement); rows without an annotator are taken to be different people.
    """
    groups: dict[str, list] = {}
    for row in rows:
        key = json.dumps([prompt_key(_field(row, "prompt")), sorted(_field(row, "completions"))])
        groups.setdefault(key, []).append(row)
    agree = total = 0
    for group in groups.values():
        for a, b in itertools.combinations(group, 2):
            who_a, who_b = _annotator(a), _annotator(b)
            if who_a is not None and who_a == who_b:
                continue
            ranks_b = dict(zip(_field(b, "completions"), _field(b, "ranks"), strict=True))
            aligned_b = [ranks_b[c] for c in _field(a, "completions")]
            n_agree, n = pair_agreement(_field(a, "ranks"), aligned_b)
            agree, total = agree + n_agree, total + n
    return agree, total


def _annotator(row) -> str | None:
    return row.get("annotator") if isinstance(row, dict) else getattr(row, "annotator", None)


def annotator_agreement(rows: Iterable) -> float | None:
    """Share of completion pairs, ranked strictly by two annotators of one prompt, that they order
    alike (InstructGPT's 72.6% is this figure); None when no prompt has two annotators' rankings."""
    agree, total = agreement_counts(rows)
    return agree / total if total else None
