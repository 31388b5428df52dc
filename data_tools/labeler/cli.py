"""`rlhf-stack label ...`: the labeling tool's commands (mounted by rlhf_stack/cli.py).

Module-level imports are typer and the standard library only, so `rlhf-stack --help` stays fast;
each command imports what it needs. Bad input raises `RlhfStackError` (printed as `error: ...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Collect human rankings of K responses per prompt (the reward model's data).",
                  no_args_is_help=True)
annotators_app = typer.Typer(help="Manage annotators and their login tokens.", no_args_is_help=True)
app.add_typer(annotators_app, name="annotators")

DB_OPTION = typer.Option(Path("labels.sqlite"), "--db", help="The labeling database (SQLite).")


@app.command()
def generate(
    model: str = typer.Option(..., "--model", help="Checkpoint dir, Hub id or alias to sample from (e.g. the SFT output)."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompts file: JSONL rows {\"prompt\": str | messages}."),
    out: Path = typer.Option(Path("candidates.jsonl"), "--out", help="Candidates file to write (appended; re-run to resume)."),
    k: int = typer.Option(4, "-k", "--k", help="Responses per prompt (2..9)."),
    batch_size: int = typer.Option(8, help="Prompts per generate call."),
    max_new_tokens: int = typer.Option(256, help="Longest response in tokens."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1.0 = off)."),
    top_k: int = typer.Option(0, help="Top-k sampling (0 = off)."),
    seed: int = typer.Option(0, help="Base seed (batch b uses seed + b)."),
):
    """Sample K responses per prompt from a checkpoint into a candidates file (resumable)."""
    from data_tools.labeler.generate import SamplingSettings, generate_candidates

    settings = SamplingSettings(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, seed=seed, batch_size=batch_size)
    summary = generate_candidates(model, prompts, out, settings)
    typer.echo(f"{out}: {summary['written']} items written, {summary['already_done']} already there, "
               f"{summary['short']} with fewer than {k} distinct responses, {summary['failed']} left for a re-run")


@app.command()
def serve(
    candidates: Path | None = typer.Argument(None, help="Candidates JSONL to import (omit to serve what the db holds)."),
    db: Path = DB_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to bind; non-loopback needs --require-tokens."),
    port: int = typer.Option(8765, help="TCP port."),
    guidelines: Path | None = typer.Option(None, help="Markdown file shown in the guidelines panel."),
    min_annotations: int = typer.Option(1, help="Different annotators each item needs (overlap for agreement)."),
    require_tokens: bool = typer.Option(False, "--require-tokens", help="Every annotator logs in with a token."),
    lease_minutes: float = typer.Option(30.0, help="How long an item stays reserved for the person it was shown to."),
    flags: str | None = typer.Option(None, help="Comma-separated per-response flags (default: InstructGPT's)."),
    allowed_host: list[str] = typer.Option([], help="Extra Host-header name to accept (repeatable)."),
):
    """Run the local labeling web app (FastAPI + SQLite; works offline)."""
    from data_tools.labeler.server import ServeSettings, parse_flags
    from data_tools.labeler.server import serve as run_server

    settings = ServeSettings(db=db, host=host, port=port, min_annotations=min_annotations,
                             require_tokens=require_tokens, lease_minutes=lease_minutes, guidelines=guidelines,
                             flags=parse_flags(flags), allowed_hosts=tuple(allowed_host))
    run_server(settings, candidates)


@app.command()
def export(
    db: Path = DB_OPTION,
    out: Path = typer.Option(..., "--out", help="Rankings JSONL to write (stage 2 reads it as is)."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Also write TRL-style chosen/rejected pairs here."),
    aggregate: str = typer.Option("none", "--aggregate", help="none (a row per annotator) | borda | ranked_pairs."),
):
    """Export the rankings file (and optionally preference pairs)."""
    from data_tools.labeler.export import export_rankings

    summary = export_rankings(db, out, pairs=pairs, aggregate=aggregate)
    line = (f"{out}: {summary['rows']} rankings of {summary['items']} items "
            f"({summary['not_rankable']} not rankable, {summary['skipped']} skipped, not exported)")
    if pairs is not None:
        line += f"; {pairs}: {summary['pairs']} pairs ({summary['ties_dropped']} tied pairs dropped)"
    typer.echo(line)


@app.command()
def stats(db: Path = DB_OPTION, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Per-annotator counts and speed; pairwise agreement, Kendall tau, Krippendorff's alpha."""
    from data_tools.labeler.stats import compute_stats, format_stats

    result = compute_stats(db)
    typer.echo(json.dumps(result, indent=2) if as_json else format_stats(result))


@annotators_app.command("add")
def annotators_add(name: str = typer.Argument(..., help="Annotator name."), db: Path = DB_OPTION,
                   port: int = typer.Option(8765, help="Port for the login link printed.")):
    """Create an annotator and print their token (shown once; only its hash is stored)."""
    from data_tools.labeler import store

    conn = store.connect(db)
    try:
        token = store.add_annotator(conn, name)
    finally:
        conn.close()
    typer.echo(token)
    typer.echo(f"login link: http://127.0.0.1:{port}/#token={token}", err=True)


@annotators_app.command("list")
def annotators_list(db: Path = DB_OPTION):
    """List annotators with their submission counts."""
    from data_tools.labeler import store

    conn = store.connect(db, create=False)
    try:
        rows = store.list_annotators(conn)
    finally:
        conn.close()
    for row in rows:
        typer.echo(f"{row['name']:<24} {'active' if row['active'] else 'removed':<8} {row['submissions']:>6} submissions")


@annotators_app.command("remove")
def annotators_remove(name: str = typer.Argument(..., help="Annotator name."), db: Path = DB_OPTION):
    """Revoke an annotator's token (their submissions stay and still export)."""
    from data_tools.labeler import store

    conn = store.connect(db, create=False)
    try:
        store.remove_annotator(conn, name)
    finally:
        conn.close()
    typer.echo(f"removed {name}")
