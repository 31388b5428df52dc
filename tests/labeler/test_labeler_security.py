"""Security: inert model text, CSRF, Origin/Host checks, size caps, loopback-only by default."""

from __future__ import annotations

import re
import stat
import subprocess
import sys

import pytest
from labeler_helpers import PORT, REPO, csrf_headers, make_app, write_candidates
from typer.testing import CliRunner

from data_tools.labeler import security, store
from data_tools.labeler.app import STATIC_DIR, render_guidelines
from data_tools.labeler.cli import app as cli_app
from data_tools.labeler.server import ServeSettings
from rlhf_stack.errors import RlhfStackError

SUBMIT = {"client_id": "sec-00000001", "item_id": "item-0", "kind": "ranked", "ranks": [1, 2, 3]}
SAME_ORIGIN = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def client(tmp_path, candidates_file):
    client, _ = make_app(tmp_path, candidates_file)
    client.get("/api/next")
    return client


def test_post_without_or_with_wrong_csrf_token_is_refused(client):
    assert client.post("/api/submit", json=SUBMIT).status_code == 403
    assert client.post("/api/submit", json=SUBMIT, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    headers = csrf_headers(client)
    assert client.post("/api/submit", json=SUBMIT, headers=headers).status_code == 200


def test_csrf_token_of_another_session_is_refused(tmp_path, candidates_file):
    client, _ = make_app(tmp_path, candidates_file)
    other, _ = make_app(tmp_path, None)  # same install secret, different browser
    client.get("/api/next")
    assert client.post("/api/submit", json=SUBMIT, headers=csrf_headers(other)).status_code == 403


def test_foreign_origin_is_refused(client):
    headers = csrf_headers(client)
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{PORT + 1}", "http://localhost.evil.example:8765"):
        response = client.post("/api/submit", json=SUBMIT, headers={**headers, "Origin": origin})
        assert response.status_code == 403, origin
    assert client.post("/api/submit", json=SUBMIT, headers={**headers, "Origin": SAME_ORIGIN}).status_code == 200


def test_unknown_host_header_is_refused(client):
    # DNS rebinding: evil.example resolving to 127.0.0.1 still sends Host: evil.example.
    assert client.get("/api/session", headers={"Host": f"evil.example:{PORT}"}).status_code == 421
    assert client.get("/api/session", headers={"Host": f"127.0.0.1:{PORT + 1}"}).status_code == 421
    assert client.get("/api/session", headers={"Host": f"localhost:{PORT}"}).status_code == 200


def test_oversized_body_is_refused(client):
    headers = {**csrf_headers(client), "Content-Type": "application/json"}
    big = b'{"client_id": "sec-00000001", "note": "' + b"x" * (70 * 1024) + b'"}'
    assert client.post("/api/submit", content=big, headers=headers).status_code == 413
    chunks = (b"x" * 8192 for _ in range(10))  # no Content-Length: counted while streaming
    assert client.post("/api/submit", content=chunks, headers=headers).status_code == 413
    assert client.post("/api/submit", json={**SUBMIT, "note": "y" * 2001}, headers=headers).status_code == 422


def test_session_cookie_flags_and_tampering(tmp_path, candidates_file):
    conn = store.connect(tmp_path / "labels.sqlite")
    store.add_annotator(conn, "first")  # annotator id 1
    token = store.add_annotator(conn, "second")
    conn.close()
    client, settings = make_app(tmp_path, candidates_file, require_tokens=True)
    response = client.post("/api/login", json={"token": token}, headers=csrf_headers(client))
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert client.get("/api/next").status_code == 200
    sid, aid, signature = client.cookies.get("labeler_session").split(".")
    assert aid == "2"
    client.cookies.clear()
    client.cookies.set("labeler_session", f"{sid}.1.{signature}")  # try to become annotator 1
    assert client.get("/api/next").status_code == 401
    client.cookies.clear()
    client.cookies.set("labeler_session", f"{sid}.{aid}.{signature}")
    assert client.get("/api/next").status_code == 200
    secret = settings.secret_path
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert security.load_or_create_secret(secret) == security.load_or_create_secret(secret)  # kept across restarts


def test_model_text_is_never_html():
    # The page puts prompts and responses in the DOM with textContent only; the one innerHTML is the
    # guidelines, rendered server-side with raw HTML off. (The browser test checks the real page.)
    js = (STATIC_DIR / "app.js").read_text()
    assert re.findall(r"\.innerHTML\s*=\s*([^;]+);", js) == ["state.session.guidelines_html"]
    assert "insertAdjacentHTML" not in js and "document.write" not in js and "eval(" not in js


def test_guidelines_markdown_is_sanitised(tmp_path):
    path = tmp_path / "g.md"
    path.write_text("# Title\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[link](javascript:alert(1))\n")
    html = render_guidelines(path)
    assert "<h1>Title</h1>" in html
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html


def test_xss_payload_is_stored_and_served_verbatim(tmp_path):
    payload = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    items = [{"id": "x'); DROP TABLE items; --", "prompt": payload, "completions": [payload, "plain"]}]
    client, _ = make_app(tmp_path, write_candidates(tmp_path / "c.jsonl", items))
    item = client.get("/api/next").json()["item"]
    assert item["id"] == items[0]["id"] and item["prompt"] == payload  # parameterised SQL: stored literally
    assert payload in {r["text"] for r in item["responses"]}


def test_non_loopback_bind_needs_tokens(tmp_path, candidates_file):
    assert security.is_loopback("127.0.0.1") and security.is_loopback("::1") and security.is_loopback("localhost")
    assert not security.is_loopback("0.0.0.0") and not security.is_loopback("192.168.1.5")
    with pytest.raises(RlhfStackError, match="refusing to serve on non-loopback host '0.0.0.0'"):
        ServeSettings(db=tmp_path / "l.sqlite", host="0.0.0.0").validate()
    ServeSettings(db=tmp_path / "l.sqlite", host="0.0.0.0", require_tokens=True).validate()
    result = CliRunner().invoke(cli_app, ["serve", str(candidates_file), "--db", str(tmp_path / "l.sqlite"),
                                          "--host", "192.168.1.5"])
    assert isinstance(result.exception, RlhfStackError) and "--require-tokens" in str(result.exception)
    assert not (tmp_path / "l.sqlite").exists()


def test_non_loopback_server_process_refuses_to_start(tmp_path, candidates_file):
    proc = subprocess.run([sys.executable, "-m", "data_tools.labeler", "serve", str(candidates_file), "--db",
                           str(tmp_path / "l.sqlite"), "--host", "0.0.0.0"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "refusing to serve on non-loopback host" in proc.stderr


def test_tokens_required_but_none_issued(tmp_path, candidates_file):
    result = CliRunner().invoke(cli_app, ["serve", str(candidates_file), "--db", str(tmp_path / "l.sqlite"),
                                          "--host", "0.0.0.0", "--require-tokens"])
    assert isinstance(result.exception, RlhfStackError) and "annotators add" in str(result.exception)
