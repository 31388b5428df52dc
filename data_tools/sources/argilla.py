"""Argilla records with a RankingQuestion (one ranking per submitted annotator response).

Four export shapes are read (the record's fields hold the prompt and the ranked responses; the
ranking's option values name those fields, as in Argilla's RLHF guides):

- v2 nested (`dataset.records.to_list(flatten=False)` / `to_json`):
  `{"id", "fields": {...}, "responses": {QUESTION: [{"value": [opt, ...], "user_id", "status"?}]}}`
- v2 flat (`to_list(flatten=True)`, `to_datasets`, `to_hub`): fields as columns plus
  `QUESTION.responses`, `QUESTION.responses.users`, `QUESTION.responses.status`
- v1 FeedbackDataset records: `{"fields": {...}, "responses": [{"user_id", "status",
  "values": {QUESTION: {"value": [{"value": opt, "rank": n}, ...]}}}], "external_id"}`
- v1 `format_as("datasets")`: fields as columns, `QUESTION: [{"user_id", "value", "status"}]`

A v2 value lists the options best first (no ties); a v1 value gives each option a rank (ties allowed).
Options: `question` (default: the only ranking question found), `prompt_field` (default `prompt`,
else the first of instruction/input/question), `statuses` (default `submitted`; comma-separated).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from data_tools.sources.common import Skip, check_chat, first_present, per_record, ranking_row
from rlhf_stack.data import RowError

KINDS = ("rankings", "prompts")
PROMPT_FIELDS = ("prompt", "instruction", "input", "question", "text")


def record_fields(record: dict) -> dict:
    return record["fields"] if isinstance(record.get("fields"), dict) else record


def responses(record: dict, question: str | None) -> tuple[str | None, list[dict]]:
    """(question name, [{"value", "user_id", "status"}]) of the record's ranking responses."""
    nested = record.get("responses")
    found: dict[str, list[dict]] = {}
    if isinstance(nested, dict):  # v2 nested
        found = {q: [r for r in rs if isinstance(r, dict)] for q, rs in nested.items() if isinstance(rs, list)}
    elif isinstance(nested, list):  # v1 records
        for resp in nested:
            if not isinstance(resp, dict):
                raise RowError("each of 'responses' must be an object")
            for q, entry in (resp.get("values") or {}).items():
                found.setdefault(q, []).append({"value": (entry or {}).get("value"), "user_id": resp.get("user_id"),
                                                "status": resp.get("status")})
    else:
        for key, value in record.items():
            if key.endswith(".responses") and isinstance(value, list):  # v2 flat
                users = record.get(f"{key}.users") or [None] * len(value)
                statuses = record.get(f"{key}.status") or [None] * len(value)
                found[key[: -len(".responses")]] = [{"value": v, "user_id": u, "status": s}
                                                    for v, u, s in zip(value, users, statuses, strict=False)]
            elif isinstance(value, list) and value and all(isinstance(v, dict) and "value" in v for v in value):
                found[key] = value  # v1 datasets column
    rankings = {q: rs for q, rs in found.items() if any(_looks_ranked(r.get("value")) for r in rs)}
    if question is not None:
        return question, rankings.get(question, found.get(question, []))
    if len(rankings) > 1:
        raise RowError(f"several ranking questions ({', '.join(sorted(rankings))}); pass --option question=NAME")
    return next(iter(rankings.items()), (None, []))


def _looks_ranked(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 2 and all(
        isinstance(v, str) or (isinstance(v, dict) and "value" in v) for v in value)


def ranked_options(value: Any) -> list[tuple[str, float]]:
    """[(option, rank)] from a v2 ordered list or v1 [{value, rank}] items (unranked items dropped)."""
    if not isinstance(value, list):
        raise RowError(f"a ranking response value must be a list, got {type(value).__name__}")
    out = []
    for position, item in enumerate(value, start=1):
        if isinstance(item, str):
            out.append((item, position))
        elif isinstance(item, dict) and isinstance(item.get("value"), str):
            if isinstance(item.get("rank"), int | float):
                out.append((item["value"], item["rank"]))
        else:
            raise RowError(f"ranking item {position} must be an option name or a {{value, rank}} object")
    return out


def prompt_of(fields: dict, prompt_field: str | None) -> str | list[dict]:
    key = prompt_field or first_present(fields, PROMPT_FIELDS)
    if key is None or key not in fields:
        raise RowError(f"no prompt field (looked for {prompt_field or ', '.join(PROMPT_FIELDS)}); "
                       "pass --option prompt_field=NAME")
    prompt = fields[key]
    if isinstance(prompt, list):  # a v2 ChatField
        return check_chat(prompt, key)
    if not isinstance(prompt, str):
        raise RowError(f"prompt field '{key}' must be text or chat messages")
    return prompt


def convert_record(record: dict, to: str, question: str | None, prompt_field: str | None,
                   statuses: tuple[str, ...]) -> list[dict | Skip]:
    fields = record_fields(record)
    prompt = prompt_of(fields, prompt_field)
    if to == "prompts":
        return [{"prompt": prompt}]
    name, answers = responses(record, question)
    ident = record.get("id", record.get("external_id"))
    out: list[dict | Skip] = []
    for answer in answers:
        if (answer.get("status") or "submitted") not in statuses:
            out.append(Skip(f"response with status {answer.get('status')!r}"))
            continue
        scored = []
        for option, rank in ranked_options(answer.get("value")):
            text = fields.get(option)
            if not isinstance(text, str):
                raise RowError(f"ranking option {option!r} of question '{name}' is not a text field of the record")
            scored.append((text, rank))
        extra = {k: str(v) for k, v in (("annotator", answer.get("user_id")), ("id", ident)) if v is not None}
        out.append(ranking_row(prompt, scored, higher_is_better=False, extra=extra))
    return out or [Skip("record without a ranking response")]


def rows(records: Iterable[tuple[int, dict]], to: str, question: str | None = None, prompt_field: str | None = None,
         statuses: str = "submitted") -> Iterator[dict | Skip]:
    """Argilla records -> one ranking per annotator response, or one prompt per record."""
    wanted = tuple(s.strip() for s in statuses.split(",") if s.strip())
    return per_record(convert_record, records, to, question=question, prompt_field=prompt_field, statuses=wanted)
