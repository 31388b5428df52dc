"""Shared by the data tools tests: the source fixtures, the (source, file, kinds) cases, a JSONL reader."""

import json
from pathlib import Path

SOURCE_FIXTURES = Path(__file__).parent / "fixtures"

# (source, fixture file, kinds the source gives)
CASES = [
    ("hh-rlhf", "hh_rlhf.jsonl", ("rankings", "instructions", "prompts")),
    ("ultrafeedback", "ultrafeedback.jsonl", ("rankings", "instructions", "prompts")),
    ("oasst", "oasst_messages.jsonl", ("rankings", "instructions", "prompts")),
    ("oasst", "oasst_trees.jsonl", ("rankings", "instructions", "prompts")),
    ("trl", "trl_standard_explicit.jsonl", ("rankings", "instructions", "prompts")),
    ("trl", "trl_standard_implicit.jsonl", ("rankings", "instructions", "prompts")),
    ("trl", "trl_conversational_explicit.jsonl", ("rankings", "instructions", "prompts")),
    ("trl", "trl_conversational_implicit.jsonl", ("rankings", "instructions", "prompts")),
    ("argilla", "argilla_v2.jsonl", ("rankings", "prompts")),
    ("argilla", "argilla_v2_flat.jsonl", ("rankings", "prompts")),
    ("argilla", "argilla_v1.json", ("rankings", "prompts")),
    ("argilla", "argilla_v1_datasets.jsonl", ("rankings", "prompts")),
    ("labelstudio", "labelstudio_ranker.json", ("rankings", "prompts")),
    ("labelstudio", "labelstudio_pairwise.json", ("rankings", "prompts")),
    ("alpaca", "alpaca.json", ("instructions", "prompts")),
    ("alpaca", "dolly.jsonl", ("instructions", "prompts")),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
