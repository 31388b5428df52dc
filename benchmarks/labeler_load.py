"""Load test of the labeling server on loopback: concurrent annotators, retries, and kill -9.

    .venv/bin/python benchmarks/labeler_load.py [--annotators 20] [--per-annotator 50] [--no-kill] [--disk-full]

Starts `python -m data_tools.labeler serve` as its own process, logs in N annotators (one thread
and one HTTP connection each), and has each submit M rankings: GET /api/next, then POST
/api/submit with a fresh client id, retrying the same body on connection errors and 5xx until it
is acknowledged. With kill on, the server gets SIGKILL once 40% of the submissions are
acknowledged and is started again; clients keep retrying through the outage. With disk_full on
(instead), the disk "fills up" once 40% are acknowledged: every SQLite connection of the server
gets `PRAGMA max_page_count` pinned to the current size (SQLite then fails writes that need a new
page with SQLITE_FULL, as on a full disk) until clients have been refused (507) a few times, then
the space comes back; clients retry 5xx as the page does.

Checks at the end (read straight from SQLite): exactly N*M submissions stored, each client id
once, every acknowledged id present, nobody got the same item twice; with disk_full also how
many 507s the clients saw and whether any other 5xx came back (a 500 would be a bug). Prints
submissions/s and the p50/p95 latency of acknowledged POSTs. Everything is bounded: deadlines,
finite loops.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RETRYABLE = (httpx.TransportError,)

# `python -c FULL_DISK_SERVER FLAG serve ...`: the labeler server, whose SQLite connections refuse
# to grow the database (max_page_count pinned) while the file FLAG exists. Each connection applies
# the pin itself, on its own thread, before its next statement: a pin run from the watching thread
# on a connection that a request thread is using raced with that request (a stray 503 in CI).
FULL_DISK_SERVER = """
import functools, os, sqlite3, sys, threading, time
flag, state = sys.argv.pop(1), {"full": False}

class PinnedConnection(sqlite3.Connection):
    pinned = False

    def execute(self, sql, *args):
        if self.pinned != state["full"]:
            self.pinned = state["full"]
            super().execute("PRAGMA max_page_count=" + ("1" if self.pinned else "1073741823")).fetchall()
        return super().execute(sql, *args)

def watch():
    while True:
        state["full"] = os.path.exists(flag)
        time.sleep(0.005)

sqlite3.connect = functools.partial(sqlite3.connect, factory=PinnedConnection)
threading.Thread(target=watch, daemon=True).start()
from data_tools.labeler.__main__ import main
main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_candidates(path: Path, n_items: int, k: int = 4) -> Path:
    with path.open("w") as fh:
        for i in range(n_items):
            fh.write(json.dumps({"id": f"item-{i}", "prompt": f"Question {i}: say something.",
                                 "completions": [f"answer {i}.{j}" for j in range(k)]}) + "\n")
    return path


def start_server(db: Path, port: int, candidates: Path | None, log: Path, min_annotations: int,
                 full_flag: Path | None = None) -> subprocess.Popen:
    """The server as its own process; with full_flag, under FULL_DISK_SERVER."""
    launch = ["-m", "data_tools.labeler"] if full_flag is None else ["-c", FULL_DISK_SERVER, str(full_flag)]
    cmd = [sys.executable, *launch, "serve", *([str(candidates)] if candidates is not None else []), "--db", str(db),
           "--port", str(port), "--require-tokens", "--min-annotations", str(min_annotations)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    wait_ready(port, proc, log)
    return proc


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/session", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout_s}s")


def add_annotators(db: Path, n: int) -> list[str]:
    from data_tools.labeler import store

    conn = store.connect(db)
    try:
        return [store.add_annotator(conn, f"annotator-{i:02d}") for i in range(n)]
    finally:
        conn.close()


@dataclass
class Tally:
    """What the clients saw, shared between threads (appends under the GIL are atomic)."""

    acked: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    server_errors: list[int] = field(default_factory=list)  # the status of every 5xx answer (retried)


def request(client: httpx.Client, method: str, path: str, tally: Tally, deadline: float, **kwargs) -> httpx.Response:
    """One request, retried (same body) on connection errors and 5xx until `deadline`."""
    delay = 0.05
    while True:
        start = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
            if response.status_code >= 500:
                tally.server_errors.append(response.status_code)
            else:
                response.raise_for_status()
                if method == "POST" and path == "/api/submit":
                    tally.latencies_s.append(time.perf_counter() - start)
                return response
        except RETRYABLE:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} {path} kept failing until the deadline")
        tally.retries += 1
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def annotator_loop(port: int, token: str, n_submissions: int, tally: Tally, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        csrf = request(client, "GET", "/api/session", tally, deadline).json()["csrf"]
        csrf = request(client, "POST", "/api/login", tally, deadline, json={"token": token},
                       headers={"X-CSRF-Token": csrf}).json()["csrf"]
        for _ in range(n_submissions):
            item = request(client, "GET", "/api/next", tally, deadline).json()["item"]
            if item is None:
                raise RuntimeError("ran out of items")
            k = item["k"]
            ranks = [rng.randint(1, k) for _ in range(k)]
            dense = sorted(set(ranks))
            body = {"client_id": uuid.uuid4().hex, "item_id": item["id"], "kind": "ranked",
                    "ranks": [dense.index(r) + 1 for r in ranks]}
            request(client, "POST", "/api/submit", tally, deadline, json=body, headers={"X-CSRF-Token": csrf})
            tally.acked.append(body["client_id"])


def run_load(workdir: Path, n_annotators: int = 20, per_annotator: int = 50, kill: bool = True,
             kill_at: float = 0.4, deadline_s: float = 300.0, disk_full: bool = False,
             full_refusals: int = 20) -> dict:
    """Run the load; return measurements and the checks' inputs (see module docstring).

    disk_full: instead of (or besides) the kill, fill the disk at kill_at until the clients have
    been refused full_refusals times (or 60 s passed), then free it."""
    workdir.mkdir(parents=True, exist_ok=True)
    db, log, port = workdir / "labels.sqlite", workdir / "server.log", free_port()
    total = n_annotators * per_annotator
    # Twice as many item slots as submissions (min 2 annotators per item): nobody can run short.
    candidates = write_candidates(workdir / "candidates.jsonl", total)
    tokens = add_annotators(db, n_annotators)
    flag = workdir / "disk-full" if disk_full else None
    server = start_server(db, port, candidates, log, min_annotations=2, full_flag=flag)
    tally, deadline = Tally(), time.monotonic() + deadline_s
    threads = [threading.Thread(target=_guarded, args=(annotator_loop, tally, port, t, per_annotator, tally, deadline, n))
               for n, t in enumerate(tokens)]
    killed_after = full_after = None
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        if flag is not None:
            full_after = _fill_disk(flag, tally, threads, kill_at * total, full_refusals)
        if kill:
            while len(tally.acked) < kill_at * total and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            killed_after = len(tally.acked)
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            server = start_server(db, port, None, log, min_annotations=2, full_flag=flag)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
        wall_s = time.perf_counter() - start
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return {**verify(db, tally, total), "annotators": n_annotators, "per_annotator": per_annotator,
            "wall_s": wall_s, "submissions_per_s": len(tally.acked) / wall_s, "retries": tally.retries,
            "p50_ms": 1000 * statistics.median(tally.latencies_s) if tally.latencies_s else None,
            "p95_ms": 1000 * _p95(tally.latencies_s) if tally.latencies_s else None,
            "killed_after_acks": killed_after, "client_errors": tally.errors,
            "disk_full_after_acks": full_after, "server_errors": dict(collections.Counter(tally.server_errors))}


def _fill_disk(flag: Path, tally: Tally, threads: list, at_acks: float, refusals: int) -> int:
    """Once at_acks submissions are acknowledged, the disk is full until the clients have seen
    `refusals` answers 507, every client has finished, or 60 s have passed (clients retry with
    backoff, slower on a loaded machine); returns the acks at the moment it filled."""
    while len(tally.acked) < at_acks and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    full_after = len(tally.acked)
    flag.touch()
    until = time.monotonic() + 60
    while (tally.server_errors.count(507) < refusals and time.monotonic() < until
           and any(t.is_alive() for t in threads)):
        time.sleep(0.01)
    flag.unlink()
    return full_after


def _guarded(fn, tally: Tally, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the result, the run goes on
        tally.errors.append(f"{type(exc).__name__}: {exc}")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def verify(db: Path, tally: Tally, expected: int) -> dict:
    conn = sqlite3.connect(db)
    try:
        ids = [r[0] for r in conn.execute("SELECT client_id FROM submissions")]
        pairs = conn.execute("SELECT COUNT(DISTINCT item_id || '/' || annotator_id) FROM submissions").fetchone()[0]
    finally:
        conn.close()
    stored = set(ids)
    return {"expected": expected, "acked": len(tally.acked), "stored": len(ids), "distinct_client_ids": len(stored),
            "acked_missing": len(set(tally.acked) - stored), "repeat_item_for_annotator": len(ids) - pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--per-annotator", type=int, default=50)
    parser.add_argument("--no-kill", action="store_true", help="measure without killing the server")
    parser.add_argument("--disk-full", action="store_true", help="fill the disk for a while midway")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="labeler-load-"))
    result = run_load(workdir, args.annotators, args.per_annotator, kill=not args.no_kill, disk_full=args.disk_full)
    print(json.dumps(result, indent=2))
    ok = (result["stored"] == result["expected"] == result["distinct_client_ids"] == result["acked"]
          and result["acked_missing"] == 0 and result["repeat_item_for_annotator"] == 0 and not result["client_errors"]
          and set(result["server_errors"]) <= ({507} if args.disk_full else set()))
    print(f"{result['stored']}/{result['expected']} stored exactly once; "
          f"{result['submissions_per_s']:.1f} submissions/s; p95 {result['p95_ms']:.1f} ms; "
          + (f"kill -9 after {result['killed_after_acks']} acks: {'none lost' if ok else 'LOST DATA'}"
             if result["killed_after_acks"] is not None else "no kill")
          + (f"; disk full after {result['disk_full_after_acks']} acks, {result['server_errors']} answers refused"
             if args.disk_full else ""))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
