"""Helpers for the labeling tool's tests (imported as `labeler_helpers`): candidate files, an in-process app, a server process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PORT = 8765  # in-process TestClient apps: the Host/Origin checks accept exactly this port


def write_candidates(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def sample_items(n: int = 3, k: int = 3) -> list[dict]:
    return [{"id": f"item-{i}", "prompt": f"Question {i}: name a fruit.",
             "completions": [f"Fruit answer {i}.{j}" for j in range(k)]} for i in range(n)]


def make_app(tmp_path: Path, candidates: Path | None = None, **overrides):
    """(TestClient, settings) for an app over a fresh database in tmp_path."""
    from fastapi.testclient import TestClient

    from data_tools.labeler.app import create_app
    from data_tools.labeler.server import ServeSettings, prepare

    settings = ServeSettings(db=tmp_path / "labels.sqlite", port=PORT, **overrides)
    if candidates is not None:
        prepare(settings, candidates)
    client = TestClient(create_app(settings), base_url=f"http://127.0.0.1:{PORT}")
    return client, settings


def csrf_headers(client) -> dict:
    return {"X-CSRF-Token": client.get("/api/session").json()["csrf"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m data_tools.labeler serve ...` in its own process, on a free loopback port."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "data_tools.labeler", "serve", *args,
                                          "--port", str(self.port)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                         env=env)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/session", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
