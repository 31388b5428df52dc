"""Who ranks what next: leases, submissions, history and progress (all on a `store` connection).

- An item is leased to one annotator at a time per slot, for `lease_seconds`; it is handed out
  until `min_annotations` different people have judged it (skips do not count), and never to
  someone who has already submitted it.
- Each lease fixes a shuffled order of the K responses for that annotator; the submission stores
  it, so position bias can be studied later (InstructGPT randomised the order as well).
- A submission needs the annotator's lease on the item: a fresh one from `next_item`, or an edit
  lease from `open_item` on an item they submitted before (the edit is appended as version n+1).
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from dataclasses import dataclass

from data_tools.labeler.store import dumps, transaction

KINDS = ("ranked", "not_rankable", "skip")
LIKERT_MIN, LIKERT_MAX = 1, 7


class SubmissionError(ValueError):
    """A submission the server refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Policy:
    """How items are handed out."""

    min_annotations: int = 1  # distinct annotators (ranked or not-rankable) an item needs
    lease_seconds: float = 1800.0  # a lease not submitted within this time goes back to the pool
    flags: tuple[str, ...] = ()  # per-response flags an annotator may tick


# An item is open for annotator :a while fewer than :min distinct people have judged it or hold
# a live lease on it (UNION de-duplicates a person who did both), and :a has not submitted it.
_NEXT_SQL = """
SELECT i.id FROM items i
WHERE NOT EXISTS (SELECT 1 FROM submissions s WHERE s.item_id = i.id AND s.annotator_id = :a)
  AND (SELECT COUNT(*) FROM (
         SELECT s.annotator_id FROM submissions s WHERE s.item_id = i.id AND s.kind != 'skip'
         UNION
         SELECT l.annotator_id FROM leases l
         WHERE l.item_id = i.id AND l.expires_at > :now AND l.annotator_id != :a)) < :min
ORDER BY i.seq LIMIT 1
"""


def next_item(conn: sqlite3.Connection, annotator_id: int, policy: Policy) -> dict | None:
    """The item this annotator should rank now (their live lease, or a new one); None when done."""
    now = time.time()
    with transaction(conn):
        row = conn.execute(
            "SELECT l.item_id FROM leases l WHERE l.annotator_id = ? AND l.expires_at > ? AND NOT EXISTS "
            "(SELECT 1 FROM submissions s WHERE s.item_id = l.item_id AND s.annotator_id = l.annotator_id) "
            "ORDER BY l.leased_at LIMIT 1", (annotator_id, now)).fetchone()
        if row is None:
            conn.execute("DELETE FROM leases WHERE annotator_id = ? AND expires_at <= ?", (annotator_id, now))
            row = conn.execute(_NEXT_SQL, {"a": annotator_id, "now": now, "min": policy.min_annotations}).fetchone()
            if row is None:
                return None
            k = conn.execute("SELECT k FROM items WHERE id = ?", (row["id"],)).fetchone()["k"]
            order = list(range(k))
            random.SystemRandom().shuffle(order)
            _lease(conn, row["id"], annotator_id, order, now, policy)
        return _item_payload(conn, row[0], annotator_id)


def open_item(conn: sqlite3.Connection, annotator_id: int, item_id: str, policy: Policy) -> dict:
    """Re-open an item this annotator submitted before (to edit it), or their live lease."""
    now = time.time()
    with transaction(conn):
        prev = _latest(conn, item_id, annotator_id)
        if prev is not None:
            _lease(conn, item_id, annotator_id, json.loads(prev["shown_order"]), now, policy)
        elif conn.execute("SELECT 1 FROM leases WHERE item_id = ? AND annotator_id = ? AND expires_at > ?",
                          (item_id, annotator_id, now)).fetchone() is None:
            raise SubmissionError("this item is not assigned to you", status=404)
        return _item_payload(conn, item_id, annotator_id)


def _lease(conn, item_id: str, annotator_id: int, order: list[int], now: float, policy: Policy) -> None:
    conn.execute(
        "INSERT INTO leases (item_id, annotator_id, shown_order, leased_at, expires_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (item_id, annotator_id) DO UPDATE SET shown_order = excluded.shown_order, "
        "leased_at = excluded.leased_at, expires_at = excluded.expires_at",
        (item_id, annotator_id, dumps(order), now, now + policy.lease_seconds))


def _latest(conn, item_id: str, annotator_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM submissions WHERE item_id = ? AND annotator_id = ? "
                        "ORDER BY version DESC LIMIT 1", (item_id, annotator_id)).fetchone()


def _item_payload(conn, item_id: str, annotator_id: int) -> dict:
    """What the page shows: the prompt and the responses in this annotator's shown order."""
    item = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
    lease = conn.execute("SELECT shown_order FROM leases WHERE item_id = ? AND annotator_id = ?",
                         (item_id, annotator_id)).fetchone()
    order = json.loads(lease["shown_order"])
    completions = json.loads(item["completions"])
    prev = _latest(conn, item_id, annotator_id)
    previous = None
    if prev is not None:
        previous = {key: json.loads(prev[key]) if prev[key] is not None else None
                    for key in ("ranks", "ratings", "flags", "item_flags")}
        previous.update(kind=prev["kind"], note=prev["note"], reason=prev["reason"], version=prev["version"])
    return {"id": item_id, "prompt": json.loads(item["prompt"]), "k": item["k"],
            "responses": [{"index": i, "text": completions[i]} for i in order], "previous": previous}


def submit(conn: sqlite3.Connection, annotator_id: int, sub: dict, policy: Policy) -> dict:
    """Store one submission in one transaction; a repeated `client_id` returns the first ack."""
    now = time.time()
    with transaction(conn):
        dup = conn.execute("SELECT annotator_id, item_id, version FROM submissions WHERE client_id = ?",
                           (sub["client_id"],)).fetchone()
        if dup is not None:
            if dup["annotator_id"] != annotator_id or dup["item_id"] != sub["item_id"]:
                raise SubmissionError("client_id was already used for another submission", status=409)
            return {"ok": True, "duplicate": True, "item_id": dup["item_id"], "version": dup["version"]}
        item = conn.execute("SELECT k FROM items WHERE id = ?", (sub["item_id"],)).fetchone()
        if item is None:
            raise SubmissionError("no such item", status=404)
        lease = conn.execute("SELECT shown_order, leased_at FROM leases WHERE item_id = ? AND annotator_id = ?",
                             (sub["item_id"], annotator_id)).fetchone()
        if lease is None:
            raise SubmissionError("this item is not leased to you (it may have expired): load the next item",
                              status=409)
        fields = check_submission(sub, item["k"], policy)
        prev = _latest(conn, sub["item_id"], annotator_id)
        version = 1 if prev is None else prev["version"] + 1
        conn.execute(
            "INSERT INTO submissions (client_id, item_id, annotator_id, version, kind, ranks, ratings, flags, "
            "item_flags, note, reason, shown_order, started_at, submitted_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sub["client_id"], sub["item_id"], annotator_id, version, fields["kind"], fields["ranks"],
             fields["ratings"], fields["flags"], fields["item_flags"], fields["note"], fields["reason"],
             lease["shown_order"], lease["leased_at"], now))
        conn.execute("DELETE FROM leases WHERE item_id = ? AND annotator_id = ?", (sub["item_id"], annotator_id))
    return {"ok": True, "duplicate": False, "item_id": sub["item_id"], "version": version}


def check_submission(sub: dict, k: int, policy: Policy) -> dict:
    """Validate a submission's content against its item (K, dense ranks, Likert range, flag names)."""
    kind = sub.get("kind")
    if kind not in KINDS:
        raise SubmissionError(f"kind must be one of {', '.join(KINDS)}")
    ranks, ratings, flags = sub.get("ranks"), sub.get("ratings"), sub.get("flags")
    reason = (sub.get("reason") or "").strip()
    if kind == "ranked":
        if not isinstance(ranks, list) or len(ranks) != k:
            raise SubmissionError(f"every one of the {k} responses needs a rank")
        if sorted(set(ranks)) != list(range(1, len(set(ranks)) + 1)):
            raise SubmissionError(f"ranks {ranks} are not dense from 1 (ties share a rank)")
    else:
        if not reason:
            raise SubmissionError(f"'{kind}' needs a reason")
        ranks = None
    if ratings is not None:
        if len(ratings) != k or any(r is not None and not LIKERT_MIN <= r <= LIKERT_MAX for r in ratings):
            raise SubmissionError(f"ratings must be {k} values from {LIKERT_MIN} to {LIKERT_MAX} (or null)")
        if all(r is None for r in ratings):
            ratings = None
    if flags is not None:
        unknown = {f for per in flags for f in per} - set(policy.flags)
        if len(flags) != k or unknown:
            raise SubmissionError(f"flags must be {k} lists of {', '.join(policy.flags)}")
        if not any(flags):
            flags = None
    item_flags = sorted(set(sub.get("item_flags") or []))
    if set(item_flags) - {"both_bad"}:
        raise SubmissionError("the only item flag is 'both_bad'")
    return {"kind": kind, "ranks": dumps(ranks) if ranks else None, "ratings": dumps(ratings) if ratings else None,
            "flags": dumps(flags) if flags else None, "item_flags": dumps(item_flags) if item_flags else None,
            "note": (sub.get("note") or "").strip() or None, "reason": reason or None}


def history(conn: sqlite3.Connection, annotator_id: int, limit: int = 50) -> list[dict]:
    """This annotator's items, newest first, with their latest version (for going back)."""
    rows = conn.execute(
        "SELECT s.item_id, s.kind, s.version, s.submitted_at, i.prompt FROM submissions s "
        "JOIN items i ON i.id = s.item_id WHERE s.annotator_id = ? AND s.version = "
        "(SELECT MAX(version) FROM submissions v WHERE v.item_id = s.item_id AND v.annotator_id = s.annotator_id) "
        "ORDER BY s.submitted_at DESC LIMIT ?", (annotator_id, limit)).fetchall()
    return [{"item_id": r["item_id"], "kind": r["kind"], "version": r["version"], "submitted_at": r["submitted_at"],
             "prompt": json.loads(r["prompt"])} for r in rows]


def progress(conn: sqlite3.Connection, annotator_id: int, policy: Policy) -> dict:
    """Progress for me (items I judged or skipped) and for all (items with enough judgements)."""
    mine = conn.execute("SELECT COUNT(DISTINCT item_id) FROM submissions WHERE annotator_id = ?",
                        (annotator_id,)).fetchone()[0]
    items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    complete = conn.execute(
        "SELECT COUNT(*) FROM (SELECT item_id FROM submissions WHERE kind != 'skip' GROUP BY item_id "
        "HAVING COUNT(DISTINCT annotator_id) >= ?)", (policy.min_annotations,)).fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    return {"mine": mine, "items": items, "complete": complete, "submissions": total,
            "min_annotations": policy.min_annotations}
