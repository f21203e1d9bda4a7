"""Pieces every robuq command line shares: the usage error, atomic file writes and file hashes.

An output file is written under a temporary name in its own folder, flushed to disk, then renamed over the
target and the folder entry synced: a reader (or a resumed run after a crash or power loss) sees either
the old file or the whole new one, never a partial or zero-length file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["UsageError", "atomic_path", "fsync_path", "sha256_file", "write_atomic", "write_text_atomic"]


class UsageError(Exception):
    """A bad input (missing file, unsafe or foreign checkpoint, unknown option value): the command prints
    it as one ``error:`` line and exits with code 2."""


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder by path (best effort where the file system does not support it)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a fresh temporary name beside ``path`` (mkstemp, given the mode open() would give the file);
    when the block succeeds the file is fsynced, renamed to ``path`` and the folder fsynced; when it raises
    (Ctrl-C included) the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        yield tmp
        fsync_path(tmp)  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
        fsync_path(directory)  # and the rename itself survives a power loss
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` on a temporary file beside ``path`` (its folder created if missing), then
    ``atomic_path``'s fsync and rename; on any error ``path`` is untouched and nothing is left behind."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


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
