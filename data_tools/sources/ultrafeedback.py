"""UltraFeedback (Cui et al. 2023, `openbmb/UltraFeedback`): GPT-4 ratings of 4 completions.

Record: `{"instruction", "completions": [{"model", "response", "annotations": {aspect: {"Rating"}},
"fine-grained_score", "overall_score"}, ...]}`. The ratings become one K-wise ranking per
instruction with ties kept (equal scores share a rank) -- what TRL's binarised copy throws away.
The binarised copies (`HuggingFaceH4/ultrafeedback_binarized`) are TRL pairs: use `--from trl`.

Options: `rating` = `fine-grained_score` (default: mean of the four aspect ratings, as the H4
binarisation uses), `overall_score` (the critique score), `mean` (recomputed from the aspect
ratings), or one aspect: `helpfulness`, `honesty`, `instruction_following`, `truthfulness`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from data_tools.sources.common import Skip, best_completion, per_record, ranking_row, require, require_text
from rlhf_stack.data import RowError
from rlhf_stack.errors import DataError

KINDS = ("rankings", "instructions", "prompts")
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
RATINGS = ("fine-grained_score", "overall_score", "mean", *ASPECTS)


def aspect_rating(annotations: dict, aspect: str) -> float | None:
    """One aspect's 1-5 rating (stored as a string, "N/A" when the rater gave none) or None."""
    entry = annotations.get(aspect)
    if isinstance(entry, list):  # some dumps wrap each aspect in a one-element list
        entry = entry[0] if entry else None
    if not isinstance(entry, dict):
        return None
    try:
        return float(entry.get("Rating"))
    except (TypeError, ValueError):
        return None


def completion_score(completion: dict, rating: str) -> float | None:
    """The score `rating` selects for one completion, or None when it is missing / not a number."""
    value = completion.get(rating)
    if type(value) is float or type(value) is int:  # the common case first: this runs 4x per record
        return float(value) if value == value else None  # NaN (pandas' missing) -> None
    annotations = completion.get("annotations") or {}
    if rating in ASPECTS:
        return aspect_rating(annotations, rating)
    if rating == "overall_score":
        return None
    # fine-grained_score missing, or `mean`: the mean of the aspect ratings that were given
    aspects = [r for r in (aspect_rating(annotations, a) for a in ASPECTS) if r is not None]
    return sum(aspects) / len(aspects) if aspects else None


def convert_record(record: dict, to: str, rating: str) -> list[dict | Skip]:
    instruction = require_text(record, "instruction")
    if not instruction.strip():
        return [Skip("empty instruction")]
    if to == "prompts":
        return [{"prompt": instruction}]
    completions = require(record, "completions", list, "a list of {response, annotations} objects")
    scored = []
    for n, completion in enumerate(completions):
        if not isinstance(completion, dict) or not isinstance(completion.get("response"), str):
            raise RowError(f"'completions[{n}]' must be an object with a string 'response'")
        score = completion_score(completion, rating)
        if score is not None:
            scored.append((completion["response"], score))
    row = ranking_row(instruction, scored, higher_is_better=True, scores_key="ratings")
    if isinstance(row, Skip):
        return [row]
    if to == "instructions":
        return [{"prompt": instruction, "response": best_completion(row)}]
    return [row]


def rows(records: Iterable[tuple[int, dict]], to: str, rating: str = "fine-grained_score") -> Iterator[dict | Skip]:
    """UltraFeedback records -> K-wise rankings with ties, instructions (top-rated response) or prompts."""
    if rating not in RATINGS:
        raise DataError(f"ultrafeedback option rating must be one of {', '.join(RATINGS)}; got {rating!r}")
    return per_record(convert_record, records, to, rating=rating)
