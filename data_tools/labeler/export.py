"""`rlhf-stack label export`: the database -> a rankings file stage 2 trains on as is.

Default: one row per item per annotator (the newest version of their answer), in the rankings
format of DESIGN plus what the page collected:

    {"id", "prompt", "completions", "ranks", "annotator",
     "ratings"?, "flags"?, "item_flags"?, "note"?, "shown_order", "version",
     "started_at", "submitted_at", "model"?}

`aggregate="borda" | "ranked_pairs"` writes one row per item instead, combining every annotator
(`annotators` lists them). `pairs` also writes TRL-style {"prompt", "chosen", "rejected"} rows, one
per strictly ordered pair; tied pairs are dropped and counted. "Not rankable" and "skip" answers
are never exported as rankings (they are counted). Files are written atomically.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from data_tools.labeler.aggregate import AGGREGATORS
from rlhf_stack.data import RowError, check_row, preferred_pairs, write_jsonl
from rlhf_stack.errors import RlhfStackError

AGGREGATE_CHOICES = ("none", *AGGREGATORS)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def annotator_rows(submissions: list[dict]) -> list[dict]:
    """One rankings row per ranked (item, annotator), newest version."""
    rows = []
    for s in submissions:
        if s["kind"] != "ranked":
            continue
        row = {"id": s["item_id"], "prompt": s["prompt"], "completions": s["completions"], "ranks": s["ranks"],
               "annotator": s["annotator"]}
        for key in ("ratings", "flags", "item_flags", "note"):
            if s[key]:
                row[key] = s[key]
        row.update(shown_order=s["shown_order"], version=s["version"], started_at=iso(s["started_at"]),
                   submitted_at=iso(s["submitted_at"]))
        if s["model"]:
            row["model"] = s["model"]
        rows.append(row)
    return rows


def aggregated_rows(submissions: list[dict], method: str) -> list[dict]:
    """One row per item: every annotator's ranks combined by `method` (borda | ranked_pairs)."""
    combine = AGGREGATORS[method]
    by_item: dict[str, list[dict]] = defaultdict(list)
    for s in submissions:
        if s["kind"] == "ranked":
            by_item[s["item_id"]].append(s)
    rows = []
    for item_id, subs in by_item.items():
        first = subs[0]
        rows.append({"id": item_id, "prompt": first["prompt"], "completions": first["completions"],
                     "ranks": combine([s["ranks"] for s in subs]), "aggregate": method,
                     "annotators": [s["annotator"] for s in subs],
                     "per_annotator_ranks": [s["ranks"] for s in subs]})
    return rows


def pair_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """TRL-style preference pairs from rankings rows; returns (pairs, tied pairs dropped)."""
    pairs, ties = [], 0
    for row in rows:
        ranks, completions = row["ranks"], row["completions"]
        ordered = sorted(preferred_pairs(ranks), key=lambda pair: (min(pair), max(pair)))  # i < j order
        ties += len(ranks) * (len(ranks) - 1) // 2 - len(ordered)
        for better, worse in ordered:
            pair = {"prompt": row["prompt"], "chosen": completions[better], "rejected": completions[worse],
                    "id": row["id"]}
            if "annotator" in row:
                pair["annotator"] = row["annotator"]
            pairs.append(pair)
    return pairs, ties


def export_rankings(db: str | Path, out: str | Path, pairs: str | Path | None = None,
                    aggregate: str = "none") -> dict:
    """Write the rankings (and optionally pairs) file; return counts for the summary line."""
    from data_tools.labeler import store

    if aggregate not in AGGREGATE_CHOICES:
        raise RlhfStackError(f"--aggregate {aggregate!r}: expected one of {', '.join(AGGREGATE_CHOICES)}")
    conn = store.connect(db, create=False)
    try:
        submissions = store.latest_submissions(conn)
    finally:
        conn.close()
    rows = annotator_rows(submissions) if aggregate == "none" else aggregated_rows(submissions, aggregate)
    if not rows:
        raise RlhfStackError(f"{db}: no ranked submissions yet; nothing to export")
    for n, row in enumerate(rows, start=1):
        try:
            check_row(row, "rankings")  # the format contract stage 2 reads with
        except RowError as exc:  # a bug here, not bad user input: fail before writing anything
            raise AssertionError(f"export row {n} breaks the rankings format: {exc}") from exc
    summary = {"rows": write_jsonl(rows, out), "items": len({r["id"] for r in rows}),
               "not_rankable": sum(s["kind"] == "not_rankable" for s in submissions),
               "skipped": sum(s["kind"] == "skip" for s in submissions)}
    if pairs is not None:
        pair_list, ties = pair_rows(rows)
        summary.update(pairs=write_jsonl(pair_list, pairs), ties_dropped=ties)
    return summary
