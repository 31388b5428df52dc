"""When does the runner re-run a stage? The staleness rule and the keys it compares.

A stage's config hash covers its config with `@stage` references unresolved, the sha256 of every
data file it reads (each field typed `config.DataPath`) and the config hashes of the stages it
references, so it is stable across run directories and machines, and an upstream change changes
every hash downstream. `checkpoint_id` (the hash of a finished stage's stage.json, which records
when it was written) tells a re-trained upstream apart even when its config is unchanged.
`stage_action` turns those keys (and the number of processes, for a stage to resume) into
reuse / resume / fresh.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlhf_stack.config import is_data_path

# ---- references ---------------------------------------------------------------------------------


def iter_references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key path, stage name) for every `@stage` string in a nested dict/list."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from iter_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from iter_references(value, f"{path}.{n}")
    elif isinstance(node, str) and node.startswith("@"):
        yield path, node[1:]


def resolve_references(node: Any, checkpoints: dict[str, str]) -> Any:
    """A copy of `node` with each `@stage` string replaced by `checkpoints[stage]`."""
    if isinstance(node, dict):
        return {k: resolve_references(v, checkpoints) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_references(v, checkpoints) for v in node]
    if isinstance(node, str) and node.startswith("@"):
        return checkpoints[node[1:]]
    return node


# ---- hashes and fingerprints --------------------------------------------------------------------


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys): equal configs, equal hashes."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def data_files(cfg: BaseModel) -> list[str]:
    """Every data file a stage config reads: the value of each field typed `DataPath` (a file or
    `datasets` name), in nested sections and lists too. A new data field joins the staleness check
    by its type alone; there is no list of field names to keep up to date."""
    found: list[str] = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if is_data_path(info) and isinstance(value, str):
            found.append(value)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found += data_files(item)
    return found


def config_hash(stage: str, config: dict, data: dict[str, str], upstream: dict[str, str]) -> str:
    """The key a finished stage is reused under: its config with `@stage` references unresolved,
    its data fingerprints and the config hashes of the stages it references. How it is launched
    (in-process or accelerate) is recorded in the manifest but is not part of the key: moving a
    finished run to more GPUs does not redo it."""
    return stable_hash({"stage": stage, "config": config, "data": data, "upstream": upstream})


def checkpoint_id(stage_dir: Path, marker: str) -> str | None:
    """Identity of a finished output: the hash of its marker file (stage.json records when it was
    written), so a re-trained upstream with an unchanged config still invalidates what follows."""
    file = stage_dir / marker
    if not file.is_file():
        return None
    return "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()[:32]


# ---- the rule -----------------------------------------------------------------------------------


def stage_action(entry: dict, key: str, inputs: dict, marker: Path, force: bool, world_size: int = 1) -> str:
    """What the runner does with a stage: `reuse` (finished, same config hash and the same
    upstream checkpoints), `resume` (same, started but unfinished: its own checkpoints carry it
    on) or `fresh` (anything else: the output directory is emptied and the stage starts over).

    entry: the stage's manifest entry from earlier runs; key: its config hash now (`config_hash`);
    inputs: the ids of the upstream checkpoints it references now (`checkpoint_id`); marker: the
    file whose presence marks its output finished; force: start over whatever the rest says;
    world_size: the number of processes it would run on now (`manifest.world_size_of`).

    The number of processes is not part of the key: a finished checkpoint is whole and the same
    on any number, so moving a run to more (or fewer) processes re-runs nothing finished. An
    unfinished stage resumes only on the number that wrote its resume state (PPO's holds one RNG
    state per process; a Trainer's data sampler is sharded by process), else it starts over:
    `restart_reason` says so.
    """
    if force or entry.get("config_hash") != key or entry.get("inputs") != inputs:
        return "fresh"
    if marker.is_file():
        return "reuse"
    return "fresh" if restart_reason(entry, world_size) else "resume"


def restart_reason(entry: dict, world_size: int) -> str | None:
    """Why an interrupted stage cannot resume on `world_size` processes (None: it can)."""
    before = entry.get("world_size", 1)
    if "started_at" not in entry or before == world_size:  # never started, or the same number
        return None
    return (f"interrupted on {before} process(es), now {world_size}: its resume state is per process, "
            "so it starts over")
