"""`rlhf-stack label serve`: start-up checks, and uvicorn (imported only when serving)."""

from __future__ import annotations

from pathlib import Path

from data_tools.labeler.settings import DEFAULT_FLAGS, ServeSettings, parse_flags  # noqa: F401  (public here)
from rlhf_stack.errors import RlhfStackError


def prepare(settings: ServeSettings, candidates: Path | None) -> dict:
    """Checks and imports that must pass before the port opens; returns a summary for the banner."""
    from data_tools.labeler import store
    from data_tools.labeler.candidates import load_candidates

    settings.validate()
    items = load_candidates(candidates) if candidates is not None else []
    conn = store.connect(settings.db)
    try:
        added, present = store.import_items(conn, items) if items else (0, 0)
        n_items = store.count_items(conn)
        if n_items == 0:
            raise RlhfStackError(f"{settings.db}: no items to label; pass a candidates file (`label generate` makes one)")
        if settings.require_tokens and store.count_token_annotators(conn) == 0:
            raise RlhfStackError("--require-tokens but no annotators: add one with `rlhf-stack label annotators add NAME`")
    finally:
        conn.close()
    from data_tools.labeler.security import load_or_create_secret

    load_or_create_secret(settings.secret_path)
    return {"added": added, "already_present": present, "items": n_items}


def serve(settings: ServeSettings, candidates: Path | None = None) -> None:
    """Validate, import the candidates, then run the app until Ctrl-C."""
    summary = prepare(settings, candidates)
    import uvicorn

    from data_tools.labeler.app import create_app

    app = create_app(settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"labeling {summary['items']} items ({summary['added']} new) from {settings.db}")
    print(f"open http://{host}:{settings.port}/" + ("  (log in with your annotator token)" if settings.require_tokens else ""),
          flush=True)
    # No access log: it would only add noise, and nothing secret travels in URLs anyway.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
