"""SQLite storage and assignment: schema, append-only versions, leases, overlap, idempotency."""

from __future__ import annotations

import sqlite3
import stat
import time

import pytest
from labeler_helpers import sample_items, write_candidates

from data_tools.labeler import assign, store
from data_tools.labeler.assign import Policy, SubmissionError
from data_tools.labeler.candidates import load_candidates
from rlhf_stack.errors import RlhfStackError

POLICY = Policy(min_annotations=1, lease_seconds=60, flags=("hallucination", "harmful_advice"))


@pytest.fixture
def db(tmp_path):
    conn = store.connect(tmp_path / "labels.sqlite")
    store.import_items(conn, load_candidates(write_candidates(tmp_path / "c.jsonl", sample_items(3))))
    yield conn
    conn.close()


def people(conn, *names) -> list[int]:
    for name in names:
        store.add_annotator(conn, name)
    return [conn.execute("SELECT id FROM annotators WHERE name = ?", (n,)).fetchone()[0] for n in names]


def ranked(client_id: str, item_id: str, ranks, **extra) -> dict:
    return {"client_id": client_id, "item_id": item_id, "kind": "ranked", "ranks": ranks, **extra}


def test_schema_pragmas_and_file_mode(tmp_path, db):
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    assert stat.S_IMODE((tmp_path / "labels.sqlite").stat().st_mode) == 0o600


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(RlhfStackError, match="schema version 99 is newer"):
        store.connect(path)


def test_submissions_are_append_only(db):
    (a,) = people(db, "ann")
    assign.next_item(db, a, POLICY)
    assign.submit(db, a, ranked("c1-aaaaaaaa", "item-0", [1, 2, 3]), POLICY)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE submissions SET ranks = '[3,2,1]'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM submissions")
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        db.execute("INSERT INTO leases VALUES ('no-such-item', ?, '[]', 0, 0)", (a,))


def test_annotator_tokens(db):
    token = store.add_annotator(db, "ann")
    assert store.annotator_by_token(db, token)["name"] == "ann"
    assert db.execute("SELECT token_hash FROM annotators").fetchone()[0] == store.hash_token(token)  # never the token
    with pytest.raises(RlhfStackError, match="already exists"):
        store.add_annotator(db, "ann")
    store.remove_annotator(db, "ann")
    assert store.annotator_by_token(db, token) is None
    assert store.list_annotators(db)[0]["active"] is False
    new_token = store.add_annotator(db, "ann")
    assert new_token != token and store.annotator_by_token(db, new_token) is not None
    with pytest.raises(RlhfStackError):
        store.add_annotator(db, "local")


def test_overlap_leases_and_nobody_sees_an_item_twice(db):
    policy = Policy(min_annotations=2, lease_seconds=60)
    a, b, c = people(db, "a", "b", "c")
    assert assign.next_item(db, a, policy)["id"] == "item-0"
    assert assign.next_item(db, b, policy)["id"] == "item-0"  # second slot of item-0
    assert assign.next_item(db, c, policy)["id"] == "item-1"  # item-0 is fully leased
    first = assign.next_item(db, a, policy)
    assert first["id"] == "item-0"  # a reload returns the live lease, in the same order
    assert [r["index"] for r in first["responses"]] == [r["index"] for r in assign.next_item(db, a, policy)["responses"]]
    assign.submit(db, a, ranked("a-item0-xx", "item-0", [1, 2, 3]), policy)
    seen = ["item-0"]
    while (item := assign.next_item(db, a, policy)) is not None:
        assert item["id"] not in seen
        seen.append(item["id"])
        assign.submit(db, a, ranked(f"a-{item['id']}-x", item["id"], [1, 1, 2]), policy)
    assert seen == ["item-0", "item-1", "item-2"]
    assert assign.progress(db, a, policy) == {"mine": 3, "items": 3, "complete": 0, "submissions": 3,
                                              "min_annotations": 2}


def test_expired_lease_returns_to_the_pool(db):
    policy = Policy(min_annotations=1, lease_seconds=0.05)
    a, b = people(db, "a", "b")
    assert assign.next_item(db, a, policy)["id"] == "item-0"
    assert assign.next_item(db, b, policy)["id"] == "item-1"
    time.sleep(0.1)
    assert assign.next_item(db, b, policy)["id"] == "item-0"


def test_skips_do_not_count_towards_min_annotations(db):
    a, b = people(db, "a", "b")
    assign.next_item(db, a, POLICY)
    assign.submit(db, a, {"client_id": "skip-aaaa", "item_id": "item-0", "kind": "skip", "reason": "unsure"}, POLICY)
    assert assign.next_item(db, b, POLICY)["id"] == "item-0"
    assert assign.next_item(db, a, POLICY)["id"] == "item-1"


def test_retried_post_is_stored_once(db):
    a, b = people(db, "a", "b")
    assign.next_item(db, a, POLICY)
    body = ranked("retry-123456", "item-0", [2, 1, 1])
    assert assign.submit(db, a, body, POLICY) == {"ok": True, "duplicate": False, "item_id": "item-0", "version": 1}
    assert assign.submit(db, a, body, POLICY)["duplicate"] is True
    assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 1
    with pytest.raises(SubmissionError) as err:  # someone else's client id
        assign.submit(db, b, body, POLICY)
    assert err.value.status == 409


def test_submit_needs_a_lease(db):
    (a,) = people(db, "a")
    with pytest.raises(SubmissionError, match="not leased") as err:
        assign.submit(db, a, ranked("nolease-1", "item-2", [1, 2, 3]), POLICY)
    assert err.value.status == 409
    with pytest.raises(SubmissionError, match="no such item"):
        assign.submit(db, a, ranked("nolease-2", "nope", [1, 2, 3]), POLICY)


def test_going_back_appends_a_version(db):
    (a,) = people(db, "a")
    shown = [r["index"] for r in assign.next_item(db, a, POLICY)["responses"]]
    assign.submit(db, a, ranked("v1-aaaaaaaa", "item-0", [1, 2, 3], note="first"), POLICY)
    with pytest.raises(SubmissionError):
        assign.open_item(db, a, "item-2", POLICY)  # never leased to a
    item = assign.open_item(db, a, "item-0", POLICY)
    assert [r["index"] for r in item["responses"]] == shown
    assert item["previous"]["ranks"] == [1, 2, 3] and item["previous"]["version"] == 1
    assert assign.submit(db, a, ranked("v2-aaaaaaaa", "item-0", [3, 2, 1]), POLICY)["version"] == 2
    (latest,) = [s for s in store.latest_submissions(db) if s["item_id"] == "item-0"]
    assert latest["ranks"] == [3, 2, 1] and latest["version"] == 2 and latest["shown_order"] == shown
    assert [r["version"] for r in assign.history(db, a)] == [2]
    assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 2  # v1 kept


@pytest.mark.parametrize("body, message", [
    ({"kind": "ranked", "ranks": [1, 3, 3]}, "not dense"),
    ({"kind": "ranked", "ranks": [1, 2]}, "every one of the 3"),
    ({"kind": "ranked", "ranks": [1, 2, 3], "ratings": [8, None, None]}, "ratings must be"),
    ({"kind": "ranked", "ranks": [1, 2, 3], "flags": [["made_up"], [], []]}, "flags must be"),
    ({"kind": "ranked", "ranks": [1, 2, 3], "item_flags": ["nice"]}, "item flag"),
    ({"kind": "skip", "reason": "  "}, "needs a reason"),
    ({"kind": "maybe"}, "kind must be"),
])
def test_bad_submissions_are_refused(body, message):
    with pytest.raises(SubmissionError, match=message):
        assign.check_submission(body, 3, POLICY)


def test_extras_are_normalised():
    fields = assign.check_submission({"kind": "ranked", "ranks": [1, 1, 2], "ratings": [None, None, None],
                                      "flags": [[], ["hallucination"], []], "note": "  ok "}, 3, POLICY)
    assert fields["ratings"] is None and fields["flags"] == '[[],["hallucination"],[]]' and fields["note"] == "ok"
    fields = assign.check_submission({"kind": "not_rankable", "ranks": [1, 2, 3], "reason": "gibberish"}, 3, POLICY)
    assert fields["ranks"] is None and fields["reason"] == "gibberish"
