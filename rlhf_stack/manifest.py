"""Run bookkeeping for the runner: `@stage` references, config hashes, data fingerprints, the
manifest file, the run-directory lock and the rule that decides reuse / resume / fresh.

A stage's config hash covers its config with references unresolved, its data files' sha256 and the
config hashes of the stages it references, so it is stable across run directories and machines,
and an upstream change changes every hash downstream. `checkpoint_id` (the hash of a finished
stage's stage.json, which records when it was written) tells a re-trained upstream apart even when
its config is unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlhf_stack.config import DataConfig
from rlhf_stack.errors import RlhfStackError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DATA_FIELDS = ("prompts", "corpus", "rankings", "normalize_with")  # string fields that name a data file
PACKAGES = ("rlhf-stack", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


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
    """Every data file a stage config reads: DataConfig paths anywhere in it, and the plain string
    fields that name a data file (`DATA_FIELDS`, e.g. the evaluation's prompts, the RM's normalize_with)."""
    if isinstance(cfg, DataConfig):
        return [p for p in (cfg.path, cfg.eval_path) if p]
    found: list[str] = []
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if name in DATA_FIELDS and isinstance(value, str):
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


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---- the manifest -------------------------------------------------------------------------------


def read_manifest(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Temp file + rename: a kill never leaves a half-written manifest."""
    manifest["updated_at"] = now()
    tmp = run_dir / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(run_dir / MANIFEST_FILE)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@contextmanager
def run_lock(run_dir: Path):
    """One runner per run directory; the OS drops the lock when the process dies (even SIGKILL)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RlhfStackError(f"another rlhf-stack run is using {run_dir}") from None
        yield



# ---- reuse ------------------------------------------------------------------------------------------


def decide(entry: dict, key: str, inputs: dict, marker: Path, force: bool) -> str:
    """`reuse` (finished, same config and inputs), `resume` (same, started but unfinished) or `fresh`."""
    if force or entry.get("config_hash") != key or entry.get("inputs") != inputs:
        return "fresh"
    return "reuse" if marker.is_file() else "resume"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
