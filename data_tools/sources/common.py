"""Helpers every source module shares: skips, located errors, rank arithmetic, field access."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rlhf_stack.data import ROLES, RowError


class Skip:
    """A well-formed record that yields no row (the reason is counted in the convert summary)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class BadRow(Skip):
    """A malformed record met by a per-record converter: fatal, or counted with `skip_bad_rows`."""

    __slots__ = ("problem",)

    def __init__(self, problem: str):
        super().__init__("bad input rows")
        self.problem = problem


class LineError(RowError):
    """A RowError that knows its own line (a message found while assembling a whole OASST tree)."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


def dense_ranks(scores: list[float], higher_is_better: bool = True) -> list[int]:
    """Dense ranks, 1 = best, equal scores share a rank: [8, 9, 8, 3] -> [2, 1, 2, 3]."""
    distinct = sorted(set(scores), reverse=higher_is_better)
    rank_of = {score: n for n, score in enumerate(distinct, start=1)}
    return [rank_of[s] for s in scores]


def require(record: dict, key: str, expected: type | tuple[type, ...], what: str) -> Any:
    """record[key] with the right type, else a RowError naming the key and the expected `what`."""
    if key not in record or record[key] is None:
        raise RowError(f"missing '{key}'")
    value = record[key]
    if not isinstance(value, expected):
        raise RowError(f"'{key}' must be {what}, got {type(value).__name__}")
    return value


def require_text(record: dict, key: str) -> str:
    return require(record, key, str, "a string")


def first_present(record: dict, keys: Iterable[str]) -> str | None:
    """The first of `keys` that the record has (with a non-null value)."""
    for key in keys:
        if record.get(key) is not None:
            return key
    return None


def check_chat(messages: Any, where: str) -> list[dict]:
    """A list of {role, content} messages with roles we know, or a RowError saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise RowError(f"'{where}' must be a non-empty list of {{role, content}} messages")
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise RowError(f"'{where}[{n}]' must be an object with string 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise RowError(f"'{where}[{n}].role' is {msg['role']!r}; expected one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def pair_ranking(prompt: str | list[dict], chosen: str, rejected: str, extra: dict | None = None) -> dict | Skip:
    """A K=2 ranking (chosen rank 1), or a Skip when the pair carries no preference."""
    if not chosen.strip() or not rejected.strip():
        return Skip("empty chosen or rejected response")
    if chosen.strip() == rejected.strip():
        return Skip("identical chosen and rejected responses")
    return {"prompt": prompt, "completions": [chosen, rejected], "ranks": [1, 2], **(extra or {})}


def ranking_row(prompt: str | list[dict], scored: list[tuple[str, float]], higher_is_better: bool,
                extra: dict | None = None, scores_key: str | None = None) -> dict | Skip:
    """A K-wise ranking from (completion, score) pairs: empty and repeated texts dropped, ties kept.

    A repeated completion keeps its best score; fewer than two distinct completions is a Skip.
    `scores_key`: also store the kept scores under this key (e.g. UltraFeedback's `ratings`).
    """
    best: dict[str, float] = {}
    for text, score in scored:
        key = text.strip()
        if key and (key not in best or (score > best[key] if higher_is_better else score < best[key])):
            best[key] = score
    if len(best) < 2:
        return Skip("fewer than 2 distinct rated completions")
    completions = list(best)
    scores = [best[c] for c in completions]
    row = {"prompt": prompt, "completions": completions, "ranks": dense_ranks(scores, higher_is_better)}
    if scores_key:
        row[scores_key] = scores
    if extra:
        row.update(extra)
    return row


# A record shape the converter did not foresee (a number where a list should be): still bad input.
SHAPE_ERRORS = (KeyError, TypeError, AttributeError, IndexError)


def per_record(convert_one, records: Iterable[tuple[int, dict]], to: str, **options) -> Iterator[dict | Skip]:
    """Drive a one-record-at-a-time converter: `convert_one(record, to, **options) -> list[row | Skip]`.

    A malformed record becomes a `BadRow` (the driver stops there, or skips it on request).
    """
    for _line, record in records:
        try:
            out = convert_one(record, to, **options)
        except RowError as exc:
            out = [BadRow(str(exc))]
        except SHAPE_ERRORS as exc:
            out = [BadRow(f"unexpected record shape ({type(exc).__name__}: {exc})")]
        yield from out


def best_completion(row: dict) -> str:
    """The first completion of a ranking with rank 1 (the SFT target a ranking implies)."""
    return row["completions"][row["ranks"].index(1)]
