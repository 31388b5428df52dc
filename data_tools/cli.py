"""`rlhf-stack data ...`: convert public data, validate, inspect and split it (typer app).

Mounted by `rlhf_stack.cli` as the `data` group. Imports here are typer and the stdlib only; each
command imports what it needs. Bad input raises `DataError` (`path:line: problem` lines), which
the top-level CLI prints before exiting with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help="Data before training: convert public data sets into the four formats, validate, inspect, split.",
    no_args_is_help=True,
)

KINDS = ("instructions", "rankings", "prompts", "corpus")


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r} is not one of {', '.join(KINDS)}", param_hint="--kind")
    return kind


def _parse_options(items: list[str]) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} must look like KEY=VALUE", param_hint="--option")
        options[key.strip()] = value
    return options


@app.command()
def convert(
    input: str = typer.Argument(..., help="A .jsonl/.json/.parquet file (.gz too), a saved dataset dir, or a `datasets` name."),
    source: str = typer.Option(..., "--from", help="hh-rlhf, ultrafeedback, oasst, trl, argilla, labelstudio, alpaca."),
    to: str = typer.Option(..., "--to", help="Output kind: rankings, instructions or prompts (see `data sources`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL file (written whole or not at all)."),
    split: str = typer.Option("train", help="Split to read when INPUT is a `datasets` name."),
    option: list[str] = typer.Option([], "--option", help="Source option KEY=VALUE, repeatable (see `data sources`)."),
    skip_bad_rows: bool = typer.Option(False, help="Skip malformed source records (counted) instead of stopping."),
) -> None:
    """Convert a public data set (HH-RLHF, UltraFeedback, OASST, TRL, Argilla, Label Studio, Alpaca) to our format."""
    from data_tools.convert import convert as run_convert

    result = run_convert(source, input, to, out, split=split, skip_bad_rows=skip_bad_rows, **_parse_options(option))
    typer.echo(result.summary())


@app.command()
def sources() -> None:
    """List the sources `convert` reads, the kinds each gives, and their options."""
    from data_tools.convert import describe_sources

    for name, kinds, options in describe_sources():
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-"
        typer.echo(f"{name:13} --to {'|'.join(kinds):30} options: {opts}")


@app.command()
def validate(
    file: str = typer.Argument(..., help="A data file in our format (or a `datasets` name)."),
    kind: str = typer.Option(..., "--kind", help="instructions, rankings, prompts or corpus."),
    max_errors: int = typer.Option(20, help="List at most this many bad rows."),
) -> None:
    """Check every row with the loaders' rules; list each problem as path:line; exit non-zero on any."""
    from data_tools.stats import validate_data

    n = validate_data(file, _check_kind(kind), max_errors=max_errors)
    typer.echo(f"ok: {n} {kind} rows in {file}")


@app.command()
def stats(
    file: str = typer.Argument(..., help="A data file in our format."),
    kind: str = typer.Option(..., "--kind", help="instructions, rankings, prompts or corpus."),
    tokenizer: str | None = typer.Option(None, help="Count tokens with this model's tokenizer (else characters)."),
    max_length: int | None = typer.Option(None, help="Count the sequences longer than this."),
    against: list[str] = typer.Option([], help="Another file to check for shared prompts (leakage); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Rows, K distribution, tie rate, length percentiles, repeated prompts, overlap with other files, annotators."""
    from data_tools.stats import compute_stats, format_stats

    result = compute_stats(file, _check_kind(kind), tokenizer=tokenizer, max_length=max_length, against=against)
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else format_stats(result))


@app.command()
def split(
    file: str = typer.Argument(..., help="A data file in our format (rankings feed all three stages)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Directory for sft.jsonl, reward.jsonl, ppo.jsonl."),
    kind: str = typer.Option("rankings", "--kind", help="Kind of FILE: rankings, instructions or prompts."),
    ratios: str = typer.Option("2:4:4", help="Shares of the prompts per stage, DeepSpeed-Chat style."),
    stages: str = typer.Option("sft,reward,ppo", help="The stages the ratios refer to, in order."),
    seed: int = typer.Option(0, help="Seed of the prompt order."),
) -> None:
    """Split one data set across the stages by ratio with no prompt in two stages."""
    from data_tools.split import split_for_stages

    names = tuple(s.strip() for s in stages.split(",") if s.strip())
    written = split_for_stages(file, _check_kind(kind), ratios, out_dir, stages=names, seed=seed)
    for stage, (path, n) in written.items():
        typer.echo(f"{stage}: {n} rows -> {path}")
