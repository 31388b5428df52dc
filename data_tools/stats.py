"""Check data before spending GPU hours on it: `rlhf-stack data validate` and `rlhf-stack data stats`.

`validate_data` applies exactly the loaders' rules (`rlhf_stack.data`), listing every bad row.
`compute_stats` reports what a practitioner looks at first: rows, K distribution and tie rate of
rankings, token (or character) length percentiles and how many rows exceed the stage's
max_length, repeated prompts, prompts shared with other files (train/eval leakage), annotators.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhf_stack.data import (
    MAX_REPORTED_ERRORS,
    load_rows,
    preferred_pairs,
    prompt_key,
    prompt_messages,
    row_prompt,
    validate_file,
)
from rlhf_stack.errors import DataError

PERCENTILES = (50, 90, 95, 99)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def validate_data(path: str | Path, kind: str, max_errors: int = MAX_REPORTED_ERRORS) -> int:
    """Number of rows when every row is good; else DataError listing `path:line: problem` lines."""
    path_ = Path(path)
    if path_.is_file() and path_.suffix in JSONL_SUFFIXES:
        rows, errors = validate_file(path_, kind, max_errors=max_errors)
        if errors:
            raise DataError("\n".join(errors))
        return len(rows)
    return len(load_rows(str(path), kind))  # Parquet / datasets: the loader's own path and rules


# ---- statistics ---------------------------------------------------------------------------------


def percentiles(values: list[int], qs: Iterable[int] = PERCENTILES) -> dict[str, int]:
    """Nearest-rank percentiles (the value at rank ceil(q/100 * n) of the sorted list) plus max."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{q}": ordered[max(math.ceil(q / 100 * n), 1) - 1] for q in qs}
    out["max"] = ordered[-1]
    out["mean"] = round(sum(ordered) / n, 1)
    return out


def ranking_stats(rows: list[dict]) -> dict[str, Any]:
    """K distribution, tie rates, comparisons (ordered pairs: InstructGPT's K choose 2) and annotators."""
    ks = Counter(len(r["completions"]) for r in rows)
    with_tie = sum(len(set(r["ranks"])) < len(r["ranks"]) for r in rows)
    all_tied = sum(len(set(r["ranks"])) == 1 for r in rows)
    comparisons = sum(len(preferred_pairs(r["ranks"])) for r in rows)
    annotators = Counter(r.get("annotator") or "(none)" for r in rows)
    return {
        "k_distribution": dict(sorted(ks.items())),
        "tie_rate": round(with_tie / len(rows), 4),
        "all_tied_rate": round(all_tied / len(rows), 4),
        "comparisons": comparisons,
        "annotators": dict(annotators.most_common()),
    }


def prompt_stats(keys: list[str]) -> dict[str, Any]:
    counts = Counter(keys)
    repeated = {k: n for k, n in counts.items() if n > 1}
    return {"distinct": len(counts), "rows_repeating_a_prompt": len(keys) - len(counts),
            "prompts_in_several_rows": len(repeated), "max_rows_per_prompt": max(counts.values(), default=0)}


def overlap_stats(keys: set[str], other: str | Path) -> dict[str, Any]:
    """How many of this file's distinct prompts also appear in `other` (train/eval leakage)."""
    theirs = file_prompt_keys(other)
    shared = len(keys & theirs)
    return {"file": str(other), "other_prompts": len(theirs), "shared_prompts": shared,
            "share_of_this": round(shared / max(len(keys), 1), 4)}


def file_prompt_keys(path: str | Path) -> set[str]:
    """Distinct prompt keys of any of our formats (rows without a prompt or text are ignored)."""
    from data_tools.sources.readers import iter_records

    keys = set()
    for _line, record in iter_records(path):
        if isinstance(record, dict) and any(k in record for k in ("prompt", "messages", "text")):
            prompt = row_prompt(record)
            if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)):
                keys.add(prompt_key(prompt))
    return keys


def length_stats(rows: list[dict], kind: str, tokenizer=None, max_length: int | None = None) -> dict[str, Any]:
    """Length percentiles per part (`prompt`, `completion`, `sequence` = what the stage feeds the model).

    With a tokenizer the unit is tokens, rendered through its chat template as the stages do;
    without one it is characters.
    """
    measure = _TokenLengths(tokenizer) if tokenizer is not None else _CharLengths()
    parts: dict[str, list[int]] = {"prompt": [], "completion": [], "sequence": []}
    for row in rows:
        if kind == "corpus":
            parts["sequence"].append(measure.text(row["text"]))
            continue
        prompt = row_prompt(row)
        n_prompt = measure.prompt(prompt)
        parts["prompt"].append(n_prompt)
        for completion in _completions(row, kind):
            n_all = measure.sequence(prompt, completion)
            parts["completion"].append(n_all - n_prompt)
            parts["sequence"].append(n_all)
    if kind == "prompts":
        parts["sequence"] = parts["prompt"]
    out: dict[str, Any] = {"unit": "tokens" if tokenizer is not None else "chars"}
    out.update({name: percentiles(values) for name, values in parts.items() if values})
    if max_length is not None:
        out["max_length"] = max_length
        out["sequences_over_max_length"] = sum(n > max_length for n in parts["sequence"])
    return out


def _completions(row: dict, kind: str) -> list[str]:
    if kind == "rankings":
        return row["completions"]
    if kind == "instructions":
        return [row["messages"][-1]["content"] if "messages" in row else row["response"]]
    return []


class _CharLengths:
    def text(self, text: str) -> int:
        return len(text)

    def prompt(self, prompt) -> int:
        return len(prompt_key(prompt))

    def sequence(self, prompt, completion: str) -> int:
        return len(prompt_key(prompt)) + len(completion)


class _TokenLengths:
    """Token counts through the chat template: a string prompt is one user turn (as the stages do)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _chat(self, messages: list[dict], generation_prompt: bool) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                                 return_dict=True)["input_ids"]
        return len(ids)

    def text(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def prompt(self, prompt) -> int:
        return self._chat(prompt_messages(prompt), True)

    def sequence(self, prompt, completion: str) -> int:
        return self._chat(prompt_messages(prompt, completion), False)


def compute_stats(path: str | Path, kind: str, *, tokenizer: str | None = None, max_length: int | None = None,
                  against: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Every statistic of one file as a JSON-ready dict (the file must validate)."""
    rows = load_rows(str(path), kind)
    stats: dict[str, Any] = {"file": str(path), "kind": kind, "rows": len(rows)}
    keys = [prompt_key(row_prompt(r)) for r in rows]
    if kind == "rankings":
        stats["rankings"] = ranking_stats(rows)
    if kind == "instructions":
        turns = Counter(len(r["messages"]) if "messages" in r else 2 for r in rows)
        stats["turns"] = dict(sorted(turns.items()))
    if kind != "corpus":
        stats["prompts"] = prompt_stats(keys)
    tok = None
    if tokenizer:
        from rlhf_stack.modeling import load_tokenizer

        tok = load_tokenizer(tokenizer)
    stats["lengths"] = length_stats(rows, kind, tok, max_length)
    stats["overlap"] = [overlap_stats(set(keys), other) for other in against]
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """The stats dict as a short human-readable report."""
    lines = [f"{stats['file']}: {stats['rows']} {stats['kind']} rows"]
    if "rankings" in stats:
        r = stats["rankings"]
        ks = ", ".join(f"K={k}: {n}" for k, n in r["k_distribution"].items())
        lines.append(f"  K distribution: {ks}; comparisons (ordered pairs): {r['comparisons']}")
        lines.append(f"  rankings with a tie: {r['tie_rate']:.1%}; all tied (no signal): {r['all_tied_rate']:.1%}")
        top = ", ".join(f"{a}: {n}" for a, n in list(r["annotators"].items())[:10])
        more = f" (+{len(r['annotators']) - 10} more)" if len(r["annotators"]) > 10 else ""
        lines.append(f"  annotators ({len(r['annotators'])}): {top}{more}")
    if "turns" in stats:
        lines.append("  messages per row: " + ", ".join(f"{t}: {n}" for t, n in stats["turns"].items()))
    if "prompts" in stats:
        p = stats["prompts"]
        lines.append(f"  prompts: {p['distinct']} distinct; {p['prompts_in_several_rows']} appear in several rows "
                     f"(up to {p['max_rows_per_prompt']}); {p['rows_repeating_a_prompt']} rows repeat a prompt")
    lengths = stats["lengths"]
    for part in ("prompt", "completion", "sequence"):
        if part in lengths:
            q = lengths[part]
            lines.append(f"  {part} {lengths['unit']}: " + ", ".join(f"{k} {v}" for k, v in q.items()))
    if "max_length" in lengths:
        lines.append(f"  sequences over max_length {lengths['max_length']}: {lengths['sequences_over_max_length']}")
    for o in stats["overlap"]:
        lines.append(f"  shared prompts with {o['file']}: {o['shared_prompts']} "
                     f"({o['share_of_this']:.1%} of this file's prompts)")
    return "\n".join(lines)
