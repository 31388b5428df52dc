"""The labeling web app (FastAPI): one static page plus a small JSON API.

    GET  /                    the page (static/index.html; script and style from /static)
    GET  /api/session         issues the session cookie; returns the CSRF token, flags, guidelines
    POST /api/login           {token} -> a session for that annotator (the page reads #token=...)
    POST /api/logout
    GET  /api/next            my next item (my live lease, or a new one) + progress
    GET  /api/items/{id}      re-open an item I submitted (edits append a new version)
    GET  /api/history         my items, newest first
    POST /api/submit          one submission, idempotent by client_id

Every POST needs the session cookie and its CSRF token in `X-CSRF-Token`; `security.Guard`
checks Host, Origin and body size first. A write the disk refuses (full: 507; busy or failing:
503) is answered with a JSON `detail` and never acknowledged (`storage_response`). Handlers are plain `def` (SQLite is blocking), so
Starlette runs them in its thread pool; each thread keeps its own connection.
"""

from __future__ import annotations

import html
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from data_tools.labeler import assign, security, store
from data_tools.labeler.settings import ServeSettings

STATIC_DIR = Path(__file__).parent / "static"
FlagName = Annotated[str, StringConstraints(max_length=40)]


class SubmissionIn(BaseModel):
    """A POST /api/submit body; sizes are capped here, meaning is checked in `assign`."""

    model_config = ConfigDict(extra="forbid")
    client_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    item_id: str = Field(max_length=200)
    kind: Literal["ranked", "not_rankable", "skip"]
    ranks: list[int] | None = Field(default=None, max_length=9)
    ratings: list[int | None] | None = Field(default=None, max_length=9)
    flags: list[Annotated[list[FlagName], Field(max_length=20)]] | None = Field(default=None, max_length=9)
    item_flags: list[FlagName] = Field(default_factory=list, max_length=4)
    note: str = Field(default="", max_length=2000)
    reason: str = Field(default="", max_length=500)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=100)


class State:
    """What the handlers share: settings, secret, assignment policy, per-thread connections."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.secret = security.load_or_create_secret(settings.secret_path)
        self.policy = assign.Policy(settings.min_annotations, settings.lease_minutes * 60, tuple(settings.flags))
        self.guidelines_html = render_guidelines(settings.guidelines)
        self._local = threading.local()
        self._local_annotator: int | None = None

    def conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = store.connect(self.settings.db)
        return conn

    def local_annotator(self) -> int:
        if self._local_annotator is None:
            self._local_annotator = store.local_annotator_id(self.conn())
        return self._local_annotator


def render_guidelines(path: Path | None) -> str | None:
    """Markdown -> HTML with raw HTML disabled and unsafe link schemes dropped (markdown-it's
    `js-default` preset); plain escaped text when markdown-it-py is not installed."""
    if path is None:
        return None
    text = Path(path).read_text(encoding="utf-8")
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("js-default").render(text)


def create_app(settings: ServeSettings) -> FastAPI:
    state = State(settings)
    app = FastAPI(title="rlhf-stack labeler", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(security.Guard, hosts=security.allowed_hosts(settings.host, settings.allowed_hosts),
                       port=settings.port, max_body_bytes=settings.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.labeler = state

    @app.exception_handler(assign.SubmissionError)
    def refused(request: Request, exc: assign.SubmissionError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(sqlite3.Error)
    @app.exception_handler(OSError)
    def storage_failed(request: Request, exc: Exception):
        return storage_response(request, exc, settings.db)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)  # no icon; answering keeps the browser console clean

    _add_session_routes(app, state)
    _add_work_routes(app, state)
    return app


def storage_response(request: Request, exc: Exception, db: Path) -> JSONResponse:
    """A write the disk refused (full, busy, failing): 507 / 503 with a message for the page, never an
    acknowledgement; the transaction was rolled back whole (`store.transaction`). The operator
    reads the cause on the server's console. Anything else is a bug: re-raised (500)."""
    failure = store.storage_failure(exc)
    if failure is None:
        raise exc
    status, reason = failure
    print(f"labeler: {request.method} {request.url.path} failed: {reason} ({db}): {exc}", file=sys.stderr, flush=True)
    if request.url.path == "/api/submit":
        detail = (f"Your answer was NOT saved: {reason} on the labeling server. It is kept on this page; "
                  "submit it again in a moment (tell the operator if this persists).")
    else:
        detail = f"The labeling server cannot save anything right now: {reason}. Try again in a moment."
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status)


def _set_cookie(response: Response, value: str) -> None:
    response.set_cookie(security.SESSION_COOKIE, value, httponly=True, samesite="strict", path="/",
                        max_age=30 * 24 * 3600)


def _post_session(state: State):
    """Dependency for every POST: a signed session cookie and its CSRF token, or 403."""

    def check(request: Request) -> tuple[str, int | None]:
        session = security.read_session(state.secret, request.cookies.get(security.SESSION_COOKIE))
        if session is None or not security.check_csrf(state.secret, session[0],
                                                      request.headers.get(security.CSRF_HEADER)):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return session

    return check


def _annotator(state: State, request: Request) -> int:
    """The annotator behind this request's session (or `local` when tokens are optional), or 401."""
    session = security.read_session(state.secret, request.cookies.get(security.SESSION_COOKIE))
    aid = session[1] if session else None
    if aid is not None and store.active_annotator(state.conn(), aid) is not None:
        return aid
    if aid is None and not state.settings.require_tokens:
        return state.local_annotator()
    raise HTTPException(401, "log in with your annotator token")


def _add_session_routes(app: FastAPI, state: State) -> None:
    @app.get("/api/session")
    def session_info(request: Request, response: Response):
        session = security.read_session(state.secret, request.cookies.get(security.SESSION_COOKIE))
        if session is None:
            cookie = security.make_session(state.secret, None)
            _set_cookie(response, cookie)
            session = security.read_session(state.secret, cookie)
        sid, aid = session
        name = None
        if aid is not None:
            row = store.active_annotator(state.conn(), aid)
            name = row["name"] if row else None
        elif not state.settings.require_tokens:
            name = store.LOCAL_ANNOTATOR
        return {"csrf": security.csrf_token(state.secret, sid), "annotator": name,
                "require_tokens": state.settings.require_tokens, "min_annotations": state.policy.min_annotations,
                "flags": [{"name": k, "label": v} for k, v in state.settings.flags.items()],
                "likert": [assign.LIKERT_MIN, assign.LIKERT_MAX], "guidelines_html": state.guidelines_html}

    @app.post("/api/login")
    def login(body: LoginIn, response: Response, _session=Depends(_post_session(state))):
        row = store.annotator_by_token(state.conn(), body.token)
        if row is None:
            raise HTTPException(401, "unknown or revoked token")
        cookie = security.make_session(state.secret, row["id"])  # new sid: no session fixation
        _set_cookie(response, cookie)
        sid = security.read_session(state.secret, cookie)[0]
        return {"annotator": row["name"], "csrf": security.csrf_token(state.secret, sid)}

    @app.post("/api/logout")
    def logout(response: Response, _session=Depends(_post_session(state))):
        cookie = security.make_session(state.secret, None)
        _set_cookie(response, cookie)
        return {"csrf": security.csrf_token(state.secret, security.read_session(state.secret, cookie)[0])}


def _add_work_routes(app: FastAPI, state: State) -> None:
    @app.get("/api/next")
    def next_item(request: Request):
        aid = _annotator(state, request)
        item = assign.next_item(state.conn(), aid, state.policy)
        return {"item": item, "progress": assign.progress(state.conn(), aid, state.policy)}

    @app.get("/api/items/{item_id}")
    def open_item(item_id: str, request: Request):
        aid = _annotator(state, request)
        item = assign.open_item(state.conn(), aid, item_id[:200], state.policy)
        return {"item": item, "progress": assign.progress(state.conn(), aid, state.policy)}

    @app.get("/api/history")
    def history(request: Request):
        return {"items": assign.history(state.conn(), _annotator(state, request))}

    @app.get("/api/progress")
    def progress(request: Request):
        return assign.progress(state.conn(), _annotator(state, request), state.policy)

    @app.post("/api/submit")
    def submit(body: SubmissionIn, request: Request, _session=Depends(_post_session(state))):
        aid = _annotator(state, request)
        return assign.submit(state.conn(), aid, body.model_dump(), state.policy)
