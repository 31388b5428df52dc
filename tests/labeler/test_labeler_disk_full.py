"""The labeler on a full disk (issue 15): a submission SQLite cannot store is refused with 507 and a
JSON message, nothing of it is stored, reads go on, and once space is back the same POST is stored
exactly once. The failure is SQLite's own SQLITE_FULL: every connection the server opens gets
`PRAGMA max_page_count` pinned to the database's current size, so no new page can be allocated.
The 20 x 50 load variant through an outage is in test_labeler_load.py."""

from __future__ import annotations

import errno
import sqlite3
import uuid

from labeler_helpers import csrf_headers, make_app, sample_items, write_candidates

from data_tools.labeler import store

UNLIMITED_PAGES = 1073741823  # SQLite's default max_page_count


class FullDisk:
    """Wraps store.connect: every connection is kept, and `full(True)` makes SQLite refuse to grow
    the database on all of them (including ones opened later), `full(False)` frees it again."""

    def __init__(self, monkeypatch):
        self.connections: list[sqlite3.Connection] = []
        self.is_full = False
        real_connect = store.connect

        def connect(*args, **kwargs):
            conn = real_connect(*args, **kwargs)
            self.connections.append(conn)
            self._apply(conn)
            return conn

        monkeypatch.setattr(store, "connect", connect)

    def full(self, value: bool) -> None:
        self.is_full = value
        for conn in self.connections:
            self._apply(conn)

    def _apply(self, conn: sqlite3.Connection) -> None:
        # max_page_count cannot go below the current size: 1 pins the database at its size now.
        conn.execute(f"PRAGMA max_page_count={1 if self.is_full else UNLIMITED_PAGES}")


def ranked(item: dict, note: str = "") -> dict:
    return {"client_id": uuid.uuid4().hex, "item_id": item["id"], "kind": "ranked",
            "ranks": list(range(1, item["k"] + 1)), "note": note}


def stored(db) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT client_id FROM submissions ORDER BY id")]
    finally:
        conn.close()


def test_full_disk_refuses_the_submission_stores_nothing_and_keeps_serving_reads(tmp_path, monkeypatch, capsys):
    client, settings = make_app(tmp_path, write_candidates(tmp_path / "candidates.jsonl", sample_items(n=6)))
    disk = FullDisk(monkeypatch)
    headers = csrf_headers(client)
    # A submission of ~2.1 kB (a 2000-character note) fills a 4 kB table page on its own, so the
    # next one needs a new page: refused on a full disk, whatever else the pages hold.
    first = ranked(client.get("/api/next").json()["item"], note="n" * 2000)
    assert client.post("/api/submit", json=first, headers=headers).status_code == 200
    item = client.get("/api/next").json()["item"]

    disk.full(True)
    body = ranked(item, note="m" * 2000)
    refused = client.post("/api/submit", json=body, headers=headers)
    assert refused.status_code == 507
    assert refused.json()["reason"] == "the disk is full"
    assert refused.json()["detail"].startswith("Your answer was NOT saved: the disk is full on the labeling server.")
    assert "database or disk is full" in capsys.readouterr().err  # the operator sees the cause
    assert stored(settings.db) == [first["client_id"]]  # nothing of the refused one

    # reads go on: the same item (its lease survived the rollback), progress, history
    again = client.get("/api/next")
    assert again.status_code == 200 and again.json()["item"]["id"] == item["id"]
    assert again.json()["progress"]["submissions"] == 1
    assert client.get("/api/progress").json()["mine"] == 1
    assert [h["item_id"] for h in client.get("/api/history").json()["items"]] == [first["item_id"]]
    assert client.post("/api/submit", json=body, headers=headers).status_code == 507  # still full: still refused

    disk.full(False)  # space freed: the page's retry of the same POST is stored, once
    ack = client.post("/api/submit", json=body, headers=headers)
    assert ack.status_code == 200 and ack.json()["duplicate"] is False
    assert client.post("/api/submit", json=body, headers=headers).json()["duplicate"] is True
    assert stored(settings.db) == [first["client_id"], body["client_id"]]
    assert client.get("/api/next").json()["item"]["id"] not in (first["item_id"], item["id"])


def test_storage_failures_map_to_507_or_503_and_bugs_stay_bugs():
    assert store.storage_failure(OSError(errno.ENOSPC, "No space left on device")) == (507, "the disk is full")
    assert store.storage_failure(OSError(errno.EDQUOT, "Disk quota exceeded"))[0] == 507
    assert store.storage_failure(OSError(errno.EIO, "Input/output error"))[0] == 503
    assert store.storage_failure(OSError(errno.ENOENT, "No such file")) is None
    assert store.storage_failure(sqlite3.OperationalError("database or disk is full")) == (507, "the disk is full")
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT nope")
    except sqlite3.OperationalError as exc:  # a bug in our SQL: not the disk's fault, stays a 500
        assert store.storage_failure(exc) is None
    assert store.storage_failure(ValueError("x")) is None


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    """SQLite rolls back by itself after SQLITE_FULL; `transaction` must raise that error (not a
    "no transaction is active" from a second ROLLBACK) and leave the connection usable."""
    conn = store.connect(tmp_path / "db.sqlite")
    try:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("PRAGMA max_page_count=1")
        try:
            with store.transaction(conn):
                conn.execute("INSERT INTO t VALUES (?)", ("x" * 5000,))
            raise AssertionError("the insert should not fit")
        except sqlite3.OperationalError as exc:
            assert store.storage_failure(exc) == (507, "the disk is full")
        assert not conn.in_transaction
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        conn.close()
