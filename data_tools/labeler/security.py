"""Security for the labeling server (issue 6, "Security"), kept free of web-framework imports.

- `check_bind`: loopback by default; any other address only when annotator tokens are required.
- `load_or_create_secret`: one random secret per install, a file created 0600 beside the database;
  it signs session cookies and derives CSRF tokens, so sessions survive a server restart.
- Sessions are `sid.annotator.signature` cookies (HttpOnly, SameSite=Strict); the CSRF token is
  HMAC(secret, sid) and must come back in the `X-CSRF-Token` header of every POST.
- `Guard` (plain ASGI middleware): the Host header must name this server (defeats DNS rebinding),
  a POST's Origin must be this server, and bodies are capped before the app reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

from rlhf_stack.errors import RlhfStackError

SESSION_COOKIE = "labeler_session"
CSRF_HEADER = "x-csrf-token"
SECRET_BYTES = 32
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# The page loads only its own script and style; inline script is never run, so even a response
# that slipped through as markup could not execute (defence in depth beside textContent rendering).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, require_tokens: bool) -> None:
    """Refuse to listen beyond this machine unless every request must carry an annotator's token."""
    if not is_loopback(host) and not require_tokens:
        raise RlhfStackError(
            f"refusing to serve on non-loopback host {host!r} without annotator tokens: anyone on the network "
            "could label. Add people with `rlhf-stack label annotators add NAME` and pass --require-tokens")


def allowed_hosts(bind_host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """Host-header names this server answers to: loopback names, the bound address, and `extra`."""
    names = set(LOOPBACK_NAMES) | {h.lower() for h in extra}
    if not is_loopback(bind_host):
        names.add(bind_host.strip("[]").lower())
        if bind_host in ("0.0.0.0", "::"):  # all interfaces: the machine's own names
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def load_or_create_secret(path: str | Path) -> bytes:
    """The install secret: created once with mode 0600 (O_EXCL, so two servers never race)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) < SECRET_BYTES:
            raise RlhfStackError(f"{path}: secret file is damaged; delete it (sessions will log out)") from None
        return secret
    secret = secrets.token_bytes(SECRET_BYTES)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return secret


def _sign(secret: bytes, purpose: str, value: str) -> str:
    return hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def make_session(secret: bytes, annotator_id: int | None) -> str:
    """A new session cookie value: a random id plus the annotator (or '-'), signed."""
    body = f"{secrets.token_urlsafe(18)}.{annotator_id if annotator_id is not None else '-'}"
    return f"{body}.{_sign(secret, 'session', body)}"


def read_session(secret: bytes, cookie: str | None) -> tuple[str, int | None] | None:
    """(sid, annotator id or None) from a cookie with a valid signature; None otherwise."""
    if not cookie or cookie.count(".") != 2 or len(cookie) > 200:
        return None
    sid, aid, signature = cookie.split(".")
    if not hmac.compare_digest(signature, _sign(secret, "session", f"{sid}.{aid}")):
        return None
    return sid, (None if aid == "-" else int(aid))


def csrf_token(secret: bytes, sid: str) -> str:
    return _sign(secret, "csrf", sid)


def check_csrf(secret: bytes, sid: str, header_value: str | None) -> bool:
    return bool(header_value) and hmac.compare_digest(header_value, csrf_token(secret, sid))


class Guard:
    """ASGI middleware: Host and Origin checks, body size cap, security headers on every answer."""

    def __init__(self, app, hosts: frozenset[str], port: int, max_body_bytes: int):
        self.app = app
        self.hosts = hosts
        self.port = port
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._check_headers(scope["method"], headers)
        if problem:
            return await _refuse(send, *problem)
        if scope["method"] not in SAFE_METHODS:
            body = await _read_capped(receive, self.max_body_bytes, headers.get("content-length"))
            if body is None:
                return await _refuse(send, 413, f"request body over {self.max_body_bytes} bytes")
            receive = _replay(body, receive)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _check_headers(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        if not self._ours("http", headers.get("host", "")):
            return 421, "unknown Host header (this server only answers to its own name)"
        origin = headers.get("origin")
        if method not in SAFE_METHODS and origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not self._ours(parts.scheme, parts.netloc):
                return 403, "cross-origin request refused"
        return None

    def _ours(self, scheme: str, netloc: str) -> bool:
        """Does `host[:port]` name this server? (A missing port means the scheme's default.)"""
        parts = urlsplit("//" + netloc)
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return False
        return (parts.hostname or "") in self.hosts and port == self.port


async def _read_capped(receive, limit: int, content_length: str | None) -> bytes | None:
    if content_length is not None and (not content_length.isdigit() or int(content_length) > limit):
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the already-read body, then waits on the real channel."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send, status: int, message: str) -> None:
    payload = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": payload})
