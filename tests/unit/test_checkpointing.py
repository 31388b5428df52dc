"""checkpointing.py on plain files: the commit protocol, what `verify` catches, which checkpoint a
resume takes, and which failures become the user's CheckpointWriteError (and which stay bugs).
The stages' own fault tests are tests/stages/test_checkpoint_faults.py."""

import errno
import hashlib
import json
import os

import pytest

from rlhf_stack import checkpointing
from rlhf_stack.errors import CheckpointWriteError, disk_full
from tests.faults import DiskFull, flip_byte, sha256_tree, truncate


def write_checkpoint(final, files: dict[str, bytes]):
    with checkpointing.writing(final) as partial:
        for name, data in files.items():
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_bytes(data)
    return final


def test_commit_records_every_file_and_replaces_whole(tmp_path):
    final = write_checkpoint(tmp_path / "ckpts" / "step-1", {"a.bin": b"x" * 1000, "sub/b.json": b"{}"})
    manifest = json.loads((final / checkpointing.MANIFEST_FILE).read_text())
    assert manifest["files"] == {
        "a.bin": {"size": 1000, "sha256": hashlib.sha256(b"x" * 1000).hexdigest()},
        "sub/b.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}}
    assert manifest["total_bytes"] == 1002
    assert checkpointing.verify(final) is None
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-1"]  # no .partial left

    write_checkpoint(final, {"c.bin": b"new"})  # the same name again: replaced whole, old files gone
    assert sorted(sha256_tree(final)) == ["c.bin", checkpointing.MANIFEST_FILE]
    assert checkpointing.verify(final) is None


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda d: (d / checkpointing.MANIFEST_FILE).unlink(), "it has no checkpoint_manifest.json"),
    (lambda d: (d / checkpointing.MANIFEST_FILE).write_text("{not json"), "its checkpoint_manifest.json is unreadable"),
    (lambda d: (d / "w.bin").unlink(), "w.bin is missing"),
    (lambda d: truncate(d / "w.bin", 10), "w.bin is 10 bytes where 64 were written (truncated or overwritten)"),
    (lambda d: flip_byte(d / "w.bin", 3), "w.bin does not match its recorded sha256"),
])
def test_verify_names_what_is_wrong(tmp_path, damage, reason):
    final = write_checkpoint(tmp_path / "step-1", {"w.bin": bytes(range(64)), "state.json": b"{}"})
    damage(final)
    assert checkpointing.verify(final).startswith(reason)


def test_drop_damaged_moves_newer_damaged_ones_aside_and_returns_the_newest_whole(tmp_path, capsys):
    steps = [write_checkpoint(tmp_path / f"step-{n}", {"w.bin": bytes([n]) * 64}) for n in (1, 2, 3, 4)]
    flip_byte(steps[0] / "w.bin")  # older than the newest whole one: never read, left in place
    truncate(steps[2] / "w.bin")
    (steps[3] / checkpointing.MANIFEST_FILE).unlink()
    assert checkpointing.drop_damaged(steps, "test") == steps[1]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"[test] skipping checkpoint {steps[3]}: it has no checkpoint_manifest.json (written by an interrupted or "
        f"older run); moved it to {tmp_path / 'corrupt' / 'step-4'}",
        f"[test] skipping checkpoint {steps[2]}: w.bin is 32 bytes where 64 were written (truncated or overwritten); "
        f"moved it to {tmp_path / 'corrupt' / 'step-3'}"]
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == ["step-3", "step-4"]
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-1", "step-2"]

    whole = write_checkpoint(tmp_path / "step-5", {"w.bin": b"5"})
    assert checkpointing.drop_damaged([steps[1], whole], "test") == whole  # nothing to skip, nothing said
    assert capsys.readouterr().out == ""


def test_a_bug_while_writing_keeps_its_traceback_and_leaves_nothing(tmp_path):
    final = write_checkpoint(tmp_path / "step-1", {"w.bin": b"old"})
    with pytest.raises(ValueError, match="a bug"), checkpointing.writing(final) as partial:
        (partial / "w.bin").write_bytes(b"new")
        raise ValueError("a bug")
    assert not (tmp_path / checkpointing.PARTIAL_DIR).exists()
    assert (final / "w.bin").read_bytes() == b"old" and checkpointing.verify(final) is None


def test_write_failures_become_one_user_error(tmp_path, monkeypatch):
    disk = DiskFull(monkeypatch)
    previous = write_checkpoint(tmp_path / "step-1", {"w.bin": b"old"})
    final = tmp_path / "step-2"

    # ENOSPC from os.write: the estimate, the free space, the intact previous checkpoint
    disk.fill(100)
    with pytest.raises(CheckpointWriteError) as err, \
            checkpointing.writing(final, lambda: 5 * 2**20, previous) as partial:
        checkpointing.write_bytes(partial / "w.bin", b"y" * 1000)
    assert str(err.value) == (f"could not write checkpoint {final}: No space left on device. It needs about 5.0 MiB; "
                              f"0 bytes are free there. Nothing was left half-written. {previous} is intact: free "
                              "space (or move output_dir to a larger disk) and re-run to resume from it.")
    assert not final.exists() and not (tmp_path / checkpointing.PARTIAL_DIR).exists()

    # torch.save's wrapping of ENOSPC (a RuntimeError, no OSError inside): read from the free space
    with pytest.raises(CheckpointWriteError, match=r"No space left on device \(RuntimeError: unexpected pos"), \
            checkpointing.writing(final, lambda: 4096):
        raise RuntimeError("unexpected pos 576 vs 534")
    disk.free()  # the same RuntimeError with room on the disk is a bug
    with pytest.raises(RuntimeError, match="unexpected pos"), checkpointing.writing(final, lambda: 4096):
        raise RuntimeError("unexpected pos 576 vs 534")

    # any other OSError (here: permissions), with its own words
    with pytest.raises(CheckpointWriteError, match=r"step-2: Permission denied\. .* Free space .* starts over"), \
            checkpointing.writing(final):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    assert checkpointing.verify(previous) is None


def test_disk_full_anywhere_else_is_one_message():
    full = disk_full(OSError(errno.ENOSPC, "No space left on device", "/runs/x/logs/ppo_log.jsonl"))
    assert str(full).startswith("could not write /runs/x/logs/ppo_log.jsonl: No space left on device. Free space")
    assert disk_full(OSError(errno.EIO, "Input/output error")) is None
