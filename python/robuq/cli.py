"""Pieces every robuq command line shares: the usage error, atomic file writes and file hashes.

An output file is written under a temporary name in its own folder, flushed to disk, then renamed over the
target and the folder entry synced: a reader (or a resumed run after a crash or power loss) sees either
the old file or the whole new one, never a partial or zero-length file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["UsageError", "sha256_file", "write_atomic", "write_text_atomic"]


class UsageError(Exception):
    """A bad input (missing file, unsafe or foreign checkpoint, unknown option value): the command prints
    it as one ``error:`` line and exits with code 2."""


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path`` and fsync the
    folder; on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``write_atomic`` of UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
