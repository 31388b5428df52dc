"""One data set split across the three stages, no prompt in two (`rlhf-stack data split`).

DeepSpeed-Chat's `data_split: 2,4,4` gives each InstructGPT stage its own share of one data set,
so the reward model and PPO never see prompts the SFT stage memorised. Here the share is taken by
distinct prompt (all rows of a prompt go to one stage) in a seeded hash order, and each stage gets
rows in its own format:

- `sft`    -> instructions (a ranking's best completion is the response)
- `reward` -> rankings (every annotator's row of the prompt)
- `ppo`    -> prompts (one row per prompt)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from data_tools.sources.common import best_completion
from rlhf_stack.data import load_rows, prompt_key, row_prompt, write_jsonl
from rlhf_stack.errors import DataError

STAGE_KINDS = {"sft": "instructions", "reward": "rankings", "ppo": "prompts"}
# Which input kinds can feed which stage.
FEEDS = {"rankings": ("sft", "reward", "ppo"), "instructions": ("sft", "ppo"), "prompts": ("ppo",)}


def parse_ratios(text: str) -> list[float]:
    """`2:4:4` or `2,4,4` -> [0.2, 0.4, 0.4]."""
    try:
        parts = [float(p) for p in text.replace(",", ":").split(":")]
    except ValueError:
        raise DataError(f"ratios {text!r} must be numbers like 2:4:4") from None
    if any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DataError(f"ratios {text!r} must be >= 0 and not all 0")
    return [p / sum(parts) for p in parts]


def assign_prompts(keys: list[str], ratios: list[float], seed: int = 0) -> dict[str, int]:
    """Distinct prompt key -> part index, cutting a seeded hash order at the cumulative ratios.

    The cut points are rounded from the cumulative shares, so part sizes are within one prompt of
    `ratio * n` and every prompt lands in exactly one part.
    """
    order = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())
    n, bounds, total = len(order), [], 0.0
    for ratio in ratios:
        total += ratio
        bounds.append(round(total * n))
    part_of, start = {}, 0
    for part, end in enumerate(bounds):
        for key in order[start:end]:
            part_of[key] = part
        start = end
    return part_of


def stage_row(row: dict, kind: str, stage: str) -> dict:
    """One input row in the stage's format."""
    if stage == "reward" or (stage == "sft" and kind == "instructions"):
        return row
    prompt = row_prompt(row)
    if stage == "ppo":
        return {"prompt": prompt}
    return {"prompt": prompt, "response": best_completion(row)}


def split_for_stages(path: str | Path, kind: str, ratios: str | list[float], out_dir: str | Path, *,
                     stages: tuple[str, ...] = ("sft", "reward", "ppo"), seed: int = 0) -> dict[str, tuple[Path, int]]:
    """Write `out_dir/{stage}.jsonl` for each stage with a share > 0; return {stage: (file, rows)}."""
    shares = parse_ratios(ratios) if isinstance(ratios, str) else list(ratios)
    if len(shares) != len(stages):
        raise DataError(f"{len(shares)} ratios for {len(stages)} stages ({', '.join(stages)})")
    for stage, share in zip(stages, shares, strict=True):
        if stage not in STAGE_KINDS:
            raise DataError(f"unknown stage {stage!r}; expected sft, reward or ppo")
        if share > 0 and stage not in FEEDS.get(kind, ()):
            raise DataError(f"{kind} rows cannot feed the {stage} stage (it needs {STAGE_KINDS[stage]})")
    rows = load_rows(str(path), kind)
    keys = [prompt_key(row_prompt(r)) for r in rows]
    part_of = assign_prompts(keys, shares, seed)
    outputs: dict[str, list[dict]] = {s: [] for s, share in zip(stages, shares, strict=True) if share > 0}
    first_row_of: set[tuple[str, str]] = set()
    for row, key in zip(rows, keys, strict=True):
        stage = stages[part_of[key]]
        if stage != "reward" and (stage, key) in first_row_of:
            continue  # SFT and PPO take one row per prompt; the reward model keeps every annotator
        first_row_of.add((stage, key))
        outputs[stage].append(stage_row(row, kind, stage))
    empty = [s for s, out in outputs.items() if not out]
    if empty:
        raise DataError(f"{path}: too few distinct prompts ({len(set(keys))}) to give {', '.join(empty)} any")
    out_dir = Path(out_dir)
    return {s: (out_dir / f"{s}.jsonl", write_jsonl(out, out_dir / f"{s}.jsonl")) for s, out in outputs.items()}
