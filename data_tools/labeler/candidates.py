"""The candidates file: K sampled responses per prompt, waiting to be ranked.

One JSON object a line (what `rlhf-stack label generate` writes and `label serve` reads):

    {"id": str,                          # unique in the file; an item's key in the database
     "prompt": str | [{"role", "content"}, ...],   # as in the rankings format (chat ends with user)
     "completions": [str, ...],          # K = 2..9 distinct, non-empty responses
     "sampling"?: {...},                 # settings used to sample them (temperature, top_p, seed, ...)
     "model"?: str}                      # the checkpoint that wrote them

K stops at 9 because a response is ranked by pressing a digit (InstructGPT also used K = 4..9).
Completions must be distinct because the rankings format rejects duplicates in one ranking.
`load_candidates` checks every line and raises one `DataError` listing `path:line: problem`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_stack.data import MAX_REPORTED_ERRORS, RowError, check_prompt, iter_jsonl, prompt_key
from rlhf_stack.errors import DataError

MIN_K = 2
MAX_K = 9
MAX_ID_CHARS = 200
KNOWN_KEYS = ("id", "prompt", "completions", "sampling", "model")


@dataclass(frozen=True)
class Candidate:
    """One prompt with its K responses, as read from line `lineno` of `source`."""

    id: str
    prompt: str | list[dict]
    completions: list[str]
    sampling: dict = field(default_factory=dict)
    model: str | None = None
    source: str = ""
    lineno: int = 0

    def to_row(self) -> dict:
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "completions": self.completions}
        if self.sampling:
            row["sampling"] = self.sampling
        if self.model:
            row["model"] = self.model
        return row


def item_id_for(prompt: str | list[dict]) -> str:
    """A stable id for a prompt (its canonical text hashed), used when the prompts file has none."""
    return "p-" + hashlib.sha256(prompt_key(prompt).encode("utf-8")).hexdigest()[:16]


def check_candidate(obj: Any) -> dict:
    """Validate one parsed line; return the normalised row or raise RowError."""
    if not isinstance(obj, dict):
        raise RowError(f"each line must be a JSON object, got {type(obj).__name__}")
    for key in ("id", "prompt", "completions"):
        if key not in obj:
            raise RowError(f"missing '{key}'")
    unknown = sorted(set(obj) - set(KNOWN_KEYS))
    if unknown:
        raise RowError(f"unknown key(s) {', '.join(unknown)}; expected {', '.join(KNOWN_KEYS)}")
    item_id = obj["id"]
    if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > MAX_ID_CHARS:
        raise RowError(f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters")
    prompt = check_prompt(obj["prompt"])
    completions = obj["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise RowError("'completions' must be a list of strings")
    if not MIN_K <= len(completions) <= MAX_K:
        raise RowError(f"K = {len(completions)}: an item needs {MIN_K} to {MAX_K} completions")
    for n, text in enumerate(completions):
        if not text.strip():
            raise RowError(f"completion {n} is empty")
    if len(set(completions)) != len(completions):
        raise RowError("duplicate completions in one item (the rankings format needs distinct ones)")
    sampling = obj.get("sampling", {})
    if not isinstance(sampling, dict):
        raise RowError("'sampling' must be an object")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise RowError("'model' must be a string")
    return {"id": item_id, "prompt": prompt, "completions": completions, "sampling": sampling, "model": model}


def load_candidates(path: str | Path) -> list[Candidate]:
    """Every item of a candidates file, validated; DataError lists each bad line as `path:line: problem`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    items: list[Candidate] = []
    errors: list[str] = []
    n_errors = 0
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        try:
            if isinstance(obj, RowError):
                raise obj
            row = check_candidate(obj)
            if row["id"] in seen:
                raise RowError(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            seen[row["id"]] = lineno
            items.append(Candidate(**row, source=str(path), lineno=lineno))
        except RowError as exc:
            n_errors += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(f"{path}:{lineno}: {exc}")
    if n_errors > len(errors):
        errors.append(f"... and {n_errors - len(errors)} more bad lines in {path}")
    if not items and not errors:
        errors.append(f"{path}: the file has no items")
    if errors:
        raise DataError("\n".join(errors))
    return items
