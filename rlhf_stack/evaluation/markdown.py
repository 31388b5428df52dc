"""The report's Markdown pieces: number and text cells, tables, a win rate with its interval, and
the sentence that places a policy against the best-of-n curve. `report.py` says what the report
holds; this file how a value is written in it.
"""

from __future__ import annotations

import json
import math

from rlhf_stack.pipeline.layout import PLOTS_DIR

CELL_CHARS = 400


def fmt(value, digits: int = 3) -> str:
    """A table cell: numbers to `digits` significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}g}"


def cell(text, limit: int = CELL_CHARS) -> str:
    """Text made safe for one Markdown table cell (pipes escaped, newlines as <br>)."""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False) if not isinstance(text, int | float) else fmt(text)
    text = text if len(text) <= limit else text[:limit].rstrip() + " …"
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def win_text(row: dict) -> str | float | None:
    """A win rate as `64.1% [55.2, 72.7]` (with its interval, in percent); a bare number when the
    results predate intervals; None when there is none."""
    win, low, high = row.get("win_rate"), row.get("win_rate_low"), row.get("win_rate_high")
    if win is None or low is None or high is None:
        return win
    return f"{100 * win:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def frontier_sentence(placed: dict, last: dict | None) -> str:
    """Where one policy lies against the best-of-n curve (`frontier.policies` of results.json)."""
    label, kl, position = placed["label"], placed.get("kl"), placed["position"]
    if position in ("above", "below", "on"):
        where = "on" if position == "on" else f"{100 * abs(placed['margin']):.1f} points {position}"
        text = (f"{label} lies {where} best-of-n at its KL (KL {fmt(kl)} nats; best-of-n interpolated at "
                f"that KL: {100 * placed['curve_win_rate']:.1f}%).")
        if placed.get("intervals_overlap"):
            text += " Its interval overlaps the curve's there: not a clear separation."
        return text
    if position == "beyond the curve" and last is not None:
        text = (f"{label}'s KL ({fmt(kl)} nats) is beyond the best-of-n curve, which ends at best-of-{last['n']} "
                f"({fmt(last['kl'])} nats)")
        if placed.get("margin") is None:  # results.json from before the margin was kept beyond the curve
            return text + ": no best-of-n point at its KL."
        n, curve_win, points = placed["between_n"][0], 100 * placed["curve_win_rate"], 100 * abs(placed["margin"])
        if placed["margin"] < 0:
            text += (f", and best-of-{n} wins {points:.1f} points more at less KL ({curve_win:.1f}%): {label} lies "
                     f"below the curve.")
            if placed.get("intervals_overlap"):
                text += " Its interval overlaps best-of-n's there: not a clear separation."
            return text
        return (text + f"; {label} wins {points:.1f} points more than the best best-of-n point (best-of-{n}, "
                f"{curve_win:.1f}%), but the curve does not reach its KL: not placed.")
    if position == "before the curve":
        return f"{label}'s KL ({fmt(kl)} nats) is below the first best-of-n point: no best-of-n point at its KL."
    return f"{label}: no KL to the reference, so no place against the best-of-n curve."


def prompt_text(prompt) -> str:
    """A prompt as text: a string as it is, chat messages one `role: content` line each."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def image(name: str, alt: str) -> str:
    """A Markdown image of the run's plot `name`, linked relative to report.md."""
    return f"![{alt}]({PLOTS_DIR}/{name})"
