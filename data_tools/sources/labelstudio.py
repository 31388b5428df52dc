"""Label Studio JSON exports (a JSON array, or JSONL, of tasks) with Ranker or Pairwise results.

Task: `{"id", "data": {...}, "annotations": [{"completed_by", "was_cancelled", "result": [...]}]}`.
One ranking per (not cancelled) annotation:

- Ranker (`<List name=... value="$items"/><Ranker .../>`): `data.items` is `[{id, title, body}]`;
  the result value `{"ranker": {LIST: [ids best first]}}` is a full order. With `<Bucket>`s the
  value is `{"ranker": {bucket: [ids], ...}}`: buckets rank in export order (or `bucket_order`),
  the items of one bucket tie, and the unsorted `_` column is dropped.
- Pairwise (`<Pairwise toName="a,b"/>`): result value `{"selected": "left"|"right"}`; left and right
  are the task fields named in `toName` (or `left_field` / `right_field`).

Options: `prompt_field` (default `prompt`, else the first of instruction/question/text),
`items_field` (default: the task field holding `[{id, ...}]`), `left_field`, `right_field`,
`bucket_order` (comma-separated bucket names, best first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_tools.sources.common import Skip, first_present, per_record, ranking_row, require
from rlhf_stack.data import RowError

KINDS = ("rankings", "prompts")
PROMPT_FIELDS = ("prompt", "instruction", "question", "text", "input")
ITEM_TEXT = ("body", "html", "title", "text")


def annotator_of(annotation: dict) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def item_texts(data: dict, items_field: str | None) -> dict[str, str]:
    """{item id: text} from the task's List data (`[{id, title, body}]`)."""
    key = items_field or next((k for k, v in data.items() if isinstance(v, list) and v
                               and all(isinstance(i, dict) and "id" in i for i in v)), None)
    if key is None or not isinstance(data.get(key), list):
        raise RowError("no list of {id, title, body} items in the task data; pass --option items_field=NAME")
    texts = {}
    for item in data[key]:
        text_key = first_present(item, ITEM_TEXT) if isinstance(item, dict) else None
        if text_key is None or not isinstance(item[text_key], str):
            raise RowError(f"item {item!r:.60} in '{key}' has no text (body, html or title)")
        texts[str(item["id"])] = item[text_key]
    return texts


def ranker_scores(value: dict, texts: dict[str, str], bucket_order: list[str] | None) -> list[tuple[str, int]]:
    """(text, rank) pairs: one ordered column, or buckets whose members tie."""
    columns = value.get("ranker")
    if not isinstance(columns, dict) or not columns:
        raise RowError("a ranker result needs value.ranker = {column: [item ids]}")
    if len(columns) == 1:
        ids = next(iter(columns.values()))
        return [(_text(texts, i), n) for n, i in enumerate(ids, start=1)]
    names = bucket_order or [name for name in columns if name != "_"]
    scored = []
    for rank, name in enumerate(names, start=1):
        scored.extend((_text(texts, i), rank) for i in columns.get(name) or [])
    return scored


def _text(texts: dict[str, str], item_id) -> str:
    if str(item_id) not in texts:
        raise RowError(f"ranked item id {item_id!r} is not in the task's items")
    return texts[str(item_id)]


def pairwise_scores(result: dict, data: dict, left_field: str | None, right_field: str | None) -> list[tuple[str, int]]:
    selected = (result.get("value") or {}).get("selected")
    if selected not in ("left", "right"):
        raise RowError(f"a pairwise result needs value.selected = 'left' or 'right', got {selected!r}")
    names = [n.strip() for n in str(result.get("to_name", "")).split(",")]
    left, right = left_field or names[0], right_field or (names[1] if len(names) > 1 else "")
    for key in (left, right):
        if not isinstance(data.get(key), str):
            raise RowError(f"pairwise side {key!r} is not a text field of the task data; "
                           "pass --option left_field=NAME --option right_field=NAME")
    return [(data[left], 1 if selected == "left" else 2), (data[right], 1 if selected == "right" else 2)]


def convert_record(task: dict, to: str, prompt_field: str | None, items_field: str | None,
                   left_field: str | None, right_field: str | None, bucket_order: list[str] | None) -> list:
    data = require(task, "data", dict, "an object of task fields")
    key = prompt_field or first_present(data, PROMPT_FIELDS)
    if key is None or not isinstance(data.get(key), str):
        raise RowError(f"no text prompt field in the task data (looked for {prompt_field or ', '.join(PROMPT_FIELDS)})")
    prompt = data[key]
    if to == "prompts":
        return [{"prompt": prompt}]
    annotations = task.get("annotations") or task.get("completions") or []  # `completions`: LS < 1.0
    out: list = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            raise RowError("each of 'annotations' must be an object")
        if annotation.get("was_cancelled"):
            out.append(Skip("cancelled annotation"))
            continue
        results = [r for r in annotation.get("result") or [] if r.get("type") in ("ranker", "pairwise")]
        if not results:
            out.append(Skip("annotation without a ranker or pairwise result"))
            continue
        result = results[0]
        if result["type"] == "ranker":
            scored = ranker_scores(result.get("value") or {}, item_texts(data, items_field), bucket_order)
        else:
            scored = pairwise_scores(result, data, left_field, right_field)
        extra = {k: v for k, v in (("annotator", annotator_of(annotation)), ("id", task.get("id"))) if v is not None}
        out.append(ranking_row(prompt, scored, higher_is_better=False, extra={k: str(v) for k, v in extra.items()}))
    return out or [Skip("task without annotations")]


def rows(records: Iterable[tuple[int, dict]], to: str, prompt_field: str | None = None, items_field: str | None = None,
         left_field: str | None = None, right_field: str | None = None,
         bucket_order: str | None = None) -> Iterator[dict | Skip]:
    """Label Studio tasks -> one ranking per annotation (Ranker or Pairwise), or one prompt per task."""
    order = [b.strip() for b in bucket_order.split(",")] if bucket_order else None
    return per_record(convert_record, records, to, prompt_field=prompt_field, items_field=items_field,
                      left_field=left_field, right_field=right_field, bucket_order=order)
