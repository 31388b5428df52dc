"""Fault injection at the OS-call level for the checkpoint tests: a disk that fills up, a file that rots.

`DiskFull(monkeypatch)` simulates a disk with a byte budget. Once `fill(bytes_left)` is called,
`os.write` to a regular file writes what still fits (a short write, as the kernel does) and then
fails with ENOSPC, and `os.statvfs` (what `shutil.disk_usage` asks) reports the bytes left.
The two writers checkpoints use that bypass Python's io, safetensors' Rust `serialize_file` and
torch.save's C++ zip writer when given a path, are routed through `os.write` (the same bytes,
from the same serializers), so every checkpoint byte passes the simulated disk. rlhf_stack's own
writes (`checkpointing.write_bytes`) use `os.write` already. Nothing of rlhf_stack is replaced.

`truncate` and `flip_byte` damage a file in place, as a bad disk or an interrupted copy does.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


class _OsWriteFile(io.RawIOBase):
    """A binary file whose every write is an os.write call (torch.save writes into it)."""

    def __init__(self, path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        return done

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


class DiskFull:
    """A disk that fills up on `fill(bytes_left)` and is cleared again by `free()`."""

    def __init__(self, monkeypatch) -> None:
        import safetensors.torch
        import torch
        from safetensors import serialize

        self.left: int | None = None  # None: room for everything
        self.written = 0  # bytes written to regular files through os.write
        self.refused = 0  # os.write calls that failed with ENOSPC
        real_write, real_statvfs, real_save = os.write, os.statvfs, torch.save

        def write(fd, data):
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return real_write(fd, data)
            if self.left is not None and self.left <= 0:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = memoryview(data).cast("B")
            written = real_write(fd, view if self.left is None else view[:self.left])
            self.written += written
            if self.left is not None:
                self.left -= written
            return written

        def statvfs(path):
            real = real_statvfs(path)
            if self.left is None:
                return real
            blocks = self.left // real.f_frsize
            return os.statvfs_result((real.f_bsize, real.f_frsize, real.f_blocks, blocks, blocks, real.f_files,
                                      real.f_ffree, real.f_favail, real.f_flag, real.f_namemax))

        def serialize_file(tensors, filename, metadata=None):
            with _OsWriteFile(filename) as fh:
                fh.write(serialize(tensors, metadata=metadata))

        def save(obj, f, *args, **kwargs):
            if not isinstance(f, str | os.PathLike):
                return real_save(obj, f, *args, **kwargs)
            with _OsWriteFile(f) as fh:
                return real_save(obj, fh, *args, **kwargs)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "statvfs", statvfs)
        monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)
        monkeypatch.setattr(torch, "save", save)

    def fill(self, bytes_left: int) -> None:
        self.left = bytes_left

    def free(self) -> None:
        self.left = None


def truncate(path: Path, keep: int | None = None) -> None:
    """Cut a file to `keep` bytes (default: half)."""
    size = path.stat().st_size
    os.truncate(path, size // 2 if keep is None else keep)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte (default: the last one, inside the tensor data), keeping the size."""
    offset = path.stat().st_size - 1 if offset is None else offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def sha256_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root: a checkpoint's exact content."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
