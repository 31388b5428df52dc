"""The on-disk formats (DESIGN "The on-disk formats"): read, validate, split, fingerprint.

Four kinds, one JSON object a line:

- instructions: {"prompt": str|messages, "response": str}  or  {"messages": [{"role","content"}, ...]}
- rankings:     {"prompt": str|messages, "completions": [str]*K, "ranks": [int]*K,
                 "annotator"?: str, "id"?: str}  (dense ranks, 1 = best, ties share a rank, K >= 2);
                 TRL pairwise rows {"prompt", "chosen", "rejected"} are read as K=2 rankings.
- prompts:      {"prompt": str|messages}
- corpus:       {"text": str}

`load_rows(path, kind)` validates every row and raises one `DataError` listing `path:line: problem`
for each bad row (up to `MAX_REPORTED_ERRORS`). `check_row(obj, kind)` is the single rule book the
loaders, the converters and `rlhf-stack data validate` all share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhf_stack.errors import DataError

Kind = Literal["instructions", "rankings", "prompts", "corpus"]
KINDS: tuple[str, ...] = ("instructions", "rankings", "prompts", "corpus")
MAX_REPORTED_ERRORS = 20
ROLES = ("system", "user", "assistant", "tool")
LINE_KEY = "_line"  # added by load_rows(keep_lines=True): where a row came from


class RowError(ValueError):
    """One row breaks its format; the message says what (the caller adds path:line)."""


@dataclass(frozen=True)
class Ranking:
    """One annotator's ranking of K completions of one prompt."""

    prompt: str | list[dict]  # plain text, or chat messages ending with the user turn
    completions: list[str]  # K responses
    ranks: list[int]  # K dense ranks, 1 = best, equal numbers = tie
    annotator: str | None = None
    id: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # ratings, flags, ... passed through

    @property
    def all_tied(self) -> bool:
        return len(set(self.ranks)) == 1

    def ordered_pairs(self) -> list[tuple[int, int]]:
        """(i, j) index pairs with completion i ranked strictly better than j; ties skipped."""
        return preferred_pairs(self.ranks)


def preferred_pairs(ranks: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """The pair rule of every ranking: (i, j) for each completion i ranked strictly above j.

    Dense ranks, 1 = best; ties state no preference and give no pair; ranks <= 0 are padding.
    The reward loss (`reward.functional.preferred_pairs`, its tensor form), the evaluation's
    margins, the labeler's export and the data statistics all count pairs by this rule.
    """
    k = len(ranks)
    return [(i, j) for i in range(k) for j in range(k) if 0 < ranks[i] < ranks[j]]


# ---- row rules ----------------------------------------------------------------------------------


def check_messages(messages: Any, where: str = "messages") -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{where}' must be a non-empty list of {{role, content}} objects")
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowError(f"'{where}[{n}]' must be an object with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise RowError(f"'{where}[{n}].role' is {msg['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(msg["content"], str):
            raise RowError(f"'{where}[{n}].content' must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_prompt(prompt: Any) -> str | list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RowError("'prompt' is empty")
        return prompt
    if isinstance(prompt, list):
        messages = check_messages(prompt, "prompt")
        if messages[-1]["role"] != "user":
            raise RowError("a chat 'prompt' must end with a user message")
        return messages
    raise RowError("'prompt' must be a string or a list of chat messages")


def _nonempty_str(obj: dict, key: str) -> str:
    if key not in obj:
        raise RowError(f"missing '{key}'")
    value = obj[key]
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"'{key}' is empty")
    return value


def check_instruction(obj: dict) -> dict:
    if "messages" in obj:
        messages = check_messages(obj["messages"])
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise RowError("'messages' must end with a non-empty assistant message")
        return {"messages": messages}
    if "prompt" not in obj:
        raise RowError("missing 'prompt' (or 'messages')")
    return {"prompt": check_prompt(obj["prompt"]), "response": _nonempty_str(obj, "response")}


def check_ranking(obj: dict) -> dict:
    if "chosen" in obj or "rejected" in obj:  # TRL pairwise row -> K=2 ranking
        if "prompt" not in obj:
            raise RowError("pairwise row needs 'prompt' as well as 'chosen' and 'rejected'")
        completions = [_nonempty_str(obj, "chosen"), _nonempty_str(obj, "rejected")]
        if completions[0] == completions[1]:
            raise RowError("'chosen' and 'rejected' are the same text")
        rest = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
        return _ranking_row(check_prompt(obj["prompt"]), completions, [1, 2], rest)
    for key in ("prompt", "completions", "ranks"):
        if key not in obj:
            raise RowError(f"missing '{key}'")
    prompt = check_prompt(obj["prompt"])
    completions, ranks = obj["completions"], obj["ranks"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise RowError("'completions' must be a list of strings")
    if len(completions) < 2:
        raise RowError(f"K = {len(completions)}: a ranking needs at least 2 completions")
    for n, text in enumerate(completions):
        if not text.strip():
            raise RowError(f"completion {n} is empty")
    if len(set(completions)) != len(completions):
        raise RowError("duplicate completions in one ranking")
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise RowError("'ranks' must be a list of integers")
    if len(ranks) != len(completions):
        raise RowError(f"{len(completions)} completions but {len(ranks)} ranks")
    if sorted(set(ranks)) != list(range(1, len(set(ranks)) + 1)):
        raise RowError(f"ranks {ranks} are not dense from 1 (1 = best; ties share a rank, e.g. [1, 2, 2, 3])")
    return _ranking_row(prompt, completions, ranks, obj)


def _ranking_row(prompt, completions: list[str], ranks: list[int], source: dict) -> dict:
    """Normalised ranking row: annotator/id as strings, other keys (ratings, flags, ...) passed through."""
    row = {"prompt": prompt, "completions": completions, "ranks": ranks}
    for key in ("annotator", "id"):
        if source.get(key) is not None:
            row[key] = str(source[key])
    row.update({k: v for k, v in source.items() if k not in row and k not in ("annotator", "id")})
    return row


def check_prompt_row(obj: dict) -> dict:
    if "prompt" not in obj:
        raise RowError("missing 'prompt'")
    return {"prompt": check_prompt(obj["prompt"])}


def check_corpus(obj: dict) -> dict:
    return {"text": _nonempty_str(obj, "text")}


CHECKS = {
    "instructions": check_instruction,
    "rankings": check_ranking,
    "prompts": check_prompt_row,
    "corpus": check_corpus,
}


def check_row(obj: Any, kind: str) -> dict:
    """Validate one parsed row of `kind`; return it normalised; raise RowError if it is bad."""
    if kind not in CHECKS:
        raise DataError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(obj, dict):
        raise RowError(f"each line must be a JSON object, got {type(obj).__name__}")
    return CHECKS[kind](obj)


# ---- reading ------------------------------------------------------------------------------------


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any | RowError]]:
    """Yield (line number, parsed object or RowError) for each non-blank line; streaming."""
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, RowError(f"not valid UTF-8 (byte {exc.start})")
                continue
            try:
                yield lineno, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                # A final line without its newline that fails to parse was most likely cut off.
                hint = " (the last line looks truncated)" if not raw.endswith(b"\n") else ""
                yield lineno, RowError(f"invalid JSON: {exc.msg} at column {exc.colno}{hint}")


def validate_file(path: str | Path, kind: str, max_errors: int = MAX_REPORTED_ERRORS,
                  keep_lines: bool = False) -> tuple[list[dict], list[str]]:
    """All rows of a JSONL file checked; returns (good rows, ["path:line: problem", ...]).

    keep_lines: add `LINE_KEY` (the 1-based line number) to each row, for later `path:line` errors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows, errors = _checked_rows(iter_jsonl(path), kind, str(path), "line", max_errors, keep_lines)
    if not rows and not errors:
        errors.append(f"{path}: the file has no rows")
    return rows, errors


def _checked_rows(numbered: Iterable[tuple[int, Any]], kind: str, where: str, unit: str, max_errors: int,
                  keep_lines: bool) -> tuple[list[dict], list[str]]:
    """(good rows, ["where:n: problem", ...]) from (n, object or RowError) pairs: each row through
    `check_row`, a ranking that repeats an earlier one (`_row_key`) refused, the first `max_errors`
    problems listed and the rest counted. unit: what n counts ("line" of a file, "row" of a dataset)."""
    rows, errors, n_errors = [], [], 0
    seen: dict[str, int] = {}
    for n, obj in numbered:
        try:
            if isinstance(obj, RowError):
                raise obj
            row = check_row(obj, kind)
            if kind == "rankings":
                key = _row_key(row)
                if key in seen:
                    raise RowError(f"duplicate of {unit} {seen[key]} (same prompt, completions and annotator)")
                seen[key] = n
            if keep_lines:
                row[LINE_KEY] = n
            rows.append(row)
        except RowError as exc:
            n_errors += 1
            if len(errors) < max_errors:
                errors.append(f"{where}:{n}: {exc}")
    if n_errors > len(errors):
        errors.append(f"... and {n_errors - len(errors)} more bad rows in {where}")
    return rows, errors


def load_rows(source: str | Path, kind: str, *, columns: dict[str, str] | None = None, split: str = "train",
              max_rows: int | None = None, keep_lines: bool = False) -> list[dict]:
    """Read and validate a JSONL file (or a `datasets` name/dir); raise DataError listing bad rows."""
    if kind not in CHECKS:
        raise DataError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(source)
    if path.is_file() and path.suffix in (".jsonl", ".ndjson") and not columns:
        rows, errors = validate_file(path, kind, keep_lines=keep_lines)
    else:
        rows, errors = _load_dataset_rows(str(source), kind, columns or {}, split, keep_lines)
    if errors:
        raise DataError("\n".join(errors))
    return rows[:max_rows] if max_rows else rows


def _load_dataset_rows(source: str, kind: str, columns: dict[str, str], split: str,
                       keep_lines: bool = False) -> tuple[list[dict], list[str]]:
    """Rows from a local json/parquet file or a `datasets` name, with our<-theirs column mapping."""
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            builder = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix, "json")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one message for the user
        raise DataError(
            f"{source}: could not load as a file or `datasets` name ({type(exc).__name__}: {exc}). "
            "Offline? Pass a local JSONL file, or set HF_DATASETS_OFFLINE=0 with network access."
        ) from None
    rename = {theirs: ours for ours, theirs in columns.items()}
    records = ((n, {rename.get(k, k): v for k, v in record.items()}) for n, record in enumerate(ds, start=1))
    return _checked_rows(records, kind, source, "row", MAX_REPORTED_ERRORS, keep_lines)


def load_rankings(source: str | Path, **kwargs) -> list[Ranking]:
    """Read a rankings file into `Ranking` objects (validated)."""
    out = []
    for row in load_rows(source, "rankings", **kwargs):
        extra = {k: v for k, v in row.items() if k not in ("prompt", "completions", "ranks", "annotator", "id", LINE_KEY)}
        out.append(Ranking(row["prompt"], row["completions"], row["ranks"], row.get("annotator"), row.get("id"), extra))
    return out


# ---- splitting, fingerprints, prompt helpers ----------------------------------------------------


def prompt_key(prompt: str | list[dict]) -> str:
    """Canonical text of a prompt, used for hashing, dedup and leakage checks."""
    if isinstance(prompt, str):
        return prompt.strip()
    return "\n".join(f"{m['role']}: {m['content'].strip()}" for m in prompt)


def prompt_messages(prompt: str | list[dict], response: str | None = None) -> list[dict]:
    """Chat messages of a prompt (text -> one user turn), with `response` as the assistant turn.

    The one place a prompt becomes messages: SFT, rollout, the reward model, the labeler and the
    data statistics all go through it, so every stage sees the same conversation.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages if response is None else [*messages, {"role": "assistant", "content": response}]


def row_prompt(row: dict) -> str | list[dict]:
    """The prompt of any row kind (for `messages` rows: every turn before the last assistant one)."""
    if "prompt" in row:
        return row["prompt"]
    if "messages" in row:
        return row["messages"][:-1]
    return row.get("text", "")


def split_train_eval(rows: list[dict], eval_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic split by prompt hash: every row of a prompt lands on the same side.

    Hashing (not shuffling) keeps the split stable when rows are added, and keeps a prompt's
    rankings from several annotators out of both sides at once (no train/eval leakage).
    """
    if eval_fraction <= 0:
        return list(rows), []
    train, held = [], []
    for row in rows:
        digest = hashlib.sha256(f"{seed}:{prompt_key(row_prompt(row))}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else train).append(row)
    if not held and len(rows) > 1:  # tiny files: hold out at least one prompt
        held, train = [train[-1]], train[:-1]
    return train, held


def load_ranking_splits(data, seed: int, stage: str) -> tuple[list[dict], list[dict], int]:
    """(train, held-out, n_all_tied) rankings of a stage's `config.DataConfig` (the reward and DPO stages).

    Held out: the rows of `data.eval_path`, else `data.eval_fraction` of the prompts (`split_train_eval`).
    A ranking whose completions all tie states no preference and holds no pair to learn from: such
    rows are left out of both sides, counted, and the first few named on stdout under `[stage]`.
    """
    rows = load_rows(data.path, "rankings", columns=data.columns, split=data.split, max_rows=data.max_rows,
                     keep_lines=True)
    if data.eval_path:
        train, held = rows, load_rows(data.eval_path, "rankings", keep_lines=True)
    else:
        train, held = split_train_eval(rows, data.eval_fraction, seed=seed)
    tied = [r for r in train + held if len(set(r["ranks"])) == 1]
    if tied:
        where = ", ".join(f"line {r.get(LINE_KEY, '?')}" for r in tied[:5])
        print(f"[{stage}] {len(tied)} rankings with all completions tied are skipped ({where}"
              f"{', ...' if len(tied) > 5 else ''})")
    train = [r for r in train if len(set(r["ranks"])) > 1]
    held = [r for r in held if len(set(r["ranks"])) > 1]
    if not train:
        raise DataError(f"{data.path}: no training ranking states a preference (all rows tied or held out)")
    return train, held, len(tied)


def fingerprint(source: str | Path) -> str:
    """sha256 of a data file's bytes (or of the name, for a `datasets` id): the runner's input key."""
    path = Path(source)
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return "name:" + str(source)


def write_jsonl(rows, path: str | Path) -> int:
    """Write rows atomically (temp file + rename): a crash never leaves a partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _row_key(row: dict) -> str:
    return json.dumps([prompt_key(row["prompt"]), row["completions"], row.get("annotator")], ensure_ascii=False)
