"""Checkpoint directories that are whole or absent: atomic, fsync'd, verified writes.

Every checkpoint a stage writes (PPO's `step-N`, the Trainer stages' `checkpoint-N`, a stage's
final model) follows one protocol:

1. its files go into `<parent>/.partial/<name>` (`start`), never into the final path;
2. `commit` fsyncs each file while hashing it, writes `checkpoint_manifest.json` (every file's
   size and sha256) last, fsyncs the directory, renames it into place and fsyncs the parent, so
   the rename is the commit point and survives a power cut (ext4/xfs order data before a rename
   only when told to);
3. a write that fails (ENOSPC or any OSError, also when a writer wraps it in its own error)
   removes the partial directory and becomes one `CheckpointWriteError` naming the path, the
   bytes the checkpoint needs and the free space (`write_failure`): the previous checkpoint is
   untouched, because nothing was written near it.

A reader trusts a directory only when every file its manifest lists has the recorded size and
sha256 (`verify`). `drop_damaged` walks a stage's checkpoints newest first, moves each one that
fails to `<parent>/corrupt/` with a printed reason, and stops at the first whole one: that is the
one a resume takes. Stdlib only (tensor sizes are read through `.nbytes`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from rlhf_stack.errors import CheckpointWriteError

MANIFEST_FILE = "checkpoint_manifest.json"
PARTIAL_DIR = ".partial"  # beside the final path: same filesystem, so the rename is atomic
CORRUPT_DIR = "corrupt"  # where damaged checkpoints are moved, for inspection
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
_SLACK_BYTES = 1 << 20  # free space below this (or below what is still to write) counts as a full disk


# ---- writing ------------------------------------------------------------------------------------


def partial_path(final: Path) -> Path:
    """Where the files of `final` are written before the commit."""
    return final.parent / PARTIAL_DIR / final.name


def start(final: Path) -> Path:
    """An empty partial directory for `final` (a leftover of a killed write is removed first)."""
    partial = partial_path(final)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def commit(partial: Path, final: Path) -> Path:
    """fsync + hash every file, write the manifest last, rename `partial` onto `final`."""
    files = {}
    for path in sorted(p for p in partial.rglob("*") if p.is_file()):
        files[path.relative_to(partial).as_posix()] = _fsync_and_hash(path)
    manifest = {"format": MANIFEST_FORMAT, "files": files, "total_bytes": sum(f["size"] for f in files.values())}
    write_bytes(partial / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    for directory in [*(p for p in partial.rglob("*") if p.is_dir()), partial]:
        fsync_dir(directory)
    if final.exists():  # a damaged or older checkpoint of the same name: replaced whole
        old = partial.with_name(partial.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(final)
    fsync_dir(final.parent)
    _remove_if_empty(partial.parent)
    return final


@contextmanager
def writing(final: Path, estimate_bytes=lambda: 0, previous: Path | None = None):
    """`with writing(final) as partial:` write files into `partial`; they are committed as `final`
    on exit. A failed write becomes a `CheckpointWriteError` (see `write_failure`); any other
    error keeps its traceback; neither leaves a partial directory behind. For one process."""
    partial = start(final)
    try:
        yield partial
        commit(partial, final)
    except Exception as exc:
        error = write_failure(exc, final, estimate_bytes(), previous)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        discard(final)
        raise


def discard(final: Path) -> None:
    """Remove the partial directory of `final`."""
    partial = partial_path(final)
    shutil.rmtree(partial, ignore_errors=True)
    _remove_if_empty(partial.parent)


def write_failure(exc: Exception, final: Path, estimate_bytes: int,
                  previous: Path | None) -> CheckpointWriteError | None:
    """Remove the partial directory of a failed write of `final`; return the user's error when the
    write itself failed (raise it), None when `exc` is a bug (re-raise that, with its traceback).

    The write failed when an OSError is in `exc`'s chain, or when the disk has less room left than
    the checkpoint still needs: torch.save reports a full disk as a RuntimeError ("unexpected
    pos") and safetensors as a SafetensorError, neither of them an OSError.
    estimate_bytes: what the checkpoint takes (the in-memory size of what it saves; the bytes on
    disk before the failure count when larger). previous: the checkpoint a re-run resumes from.
    """
    if isinstance(exc, CheckpointWriteError):
        return exc
    written = dir_bytes(partial_path(final))
    needed = max(estimate_bytes, written)
    os_error = next((e for e in _chain(exc) if isinstance(e, OSError)), None)
    full = _free_bytes(final) < max(needed - written, _SLACK_BYTES)
    discard(final)
    if os_error is None and not full:
        return None
    if os_error is not None:
        reason = os_error.strerror or str(os_error)
    else:  # the writer's own words, unless they say it already
        said = "" if "No space left" in str(exc) else f" ({type(exc).__name__}: {str(exc)[:200]})"
        reason = f"No space left on device{said}"
    then = (f"{previous} is intact: free space (or move output_dir to a larger disk) and re-run to resume from it."
            if previous is not None else
            "Free space (or move output_dir to a larger disk) and re-run: the stage resumes from its newest "
            "whole checkpoint, or starts over when there is none.")
    return CheckpointWriteError(f"could not write checkpoint {final}: {reason}. It needs about {format_bytes(needed)}; "
                                f"{format_bytes(_free_bytes(final))} are free there. Nothing was left half-written. "
                                f"{then}")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` with os.write (short writes continued) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_and_hash(path: Path) -> dict:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(fh.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---- sizes --------------------------------------------------------------------------------------


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested dict/list/tuple (a state_dict, an optimizer state)."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    nbytes = getattr(obj, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# ---- reading ------------------------------------------------------------------------------------


def verify(path: Path) -> str | None:
    """None when `path` is a whole checkpoint; else why it is not, in a few words.

    Whole: `checkpoint_manifest.json` is readable and every file it lists has the recorded size
    (all checked first: cheap) and sha256.
    """
    try:
        files = json.loads((path / MANIFEST_FILE).read_text())["files"]
        expected = {name: (int(f["size"]), str(f["sha256"])) for name, f in files.items()}
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE} (written by an interrupted or older run)"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST_FILE} is unreadable"
    for name, (size, _) in expected.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes where {size} were written (truncated or overwritten)"
    for name, (_, sha256) in expected.items():
        digest = hashlib.sha256()
        with open(path / name, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"{name} does not match its recorded sha256 (its bytes changed after it was written)"
    return None


def drop_damaged(candidates: list[Path], label: str) -> Path | None:
    """The newest whole checkpoint of `candidates` (ordered oldest to newest), or None.

    Each newer one that fails `verify` is moved to `<its parent>/corrupt/`, with a printed line
    saying which and why, so that neither a resume nor the checkpoint rotation counts it again.
    Older ones are not read. Call it on one process only (it moves directories).
    """
    for path in reversed(candidates):
        reason = verify(path)
        if reason is None:
            return path
        moved = path.parent / CORRUPT_DIR / path.name
        shutil.rmtree(moved, ignore_errors=True)
        moved.parent.mkdir(parents=True, exist_ok=True)
        path.rename(moved)
        print(f"[{label}] skipping checkpoint {path}: {reason}; moved it to {moved}", flush=True)
    return None
