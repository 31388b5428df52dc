"""RUN_DIR/manifest.json, the run-directory lock, atomic writes and the world size a stage
runs on: the runner's bookkeeping on disk."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rlhf_stack.errors import ConfigError, RlhfStackError
from rlhf_stack.pipeline.layout import LOCK_FILE, MANIFEST_FILE

MANIFEST_FORMAT = 1
PACKAGES = ("rlhf-stack", "torch", "transformers", "trl", "peft", "accelerate", "datasets")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


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
    with open(run_dir / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RlhfStackError(f"another rlhf-stack run is using {run_dir}") from None
        yield


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def world_size_of(accelerate_config: str | Path | None) -> int:
    """The number of processes `accelerate launch` starts with this config (`num_processes`, all
    machines together); 1 for None (in-process). Recorded per stage in the manifest."""
    if accelerate_config is None:
        return 1
    import yaml

    try:
        data = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"accelerate_config: cannot read {accelerate_config} ({exc})") from None
    return int(data.get("num_processes", 1))
