"""Output paths of the command lines, checked before any work so that a bad path costs nothing and leaves
nothing behind (robuq-train, robuq-eval, robuq-bench; each raises its own usage error with the message)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["output_path_problem"]


def output_path_problem(path: str | None, what: str, directory: bool = False) -> str | None:
    """Why `path` (a file, or with ``directory`` a folder to create) cannot be written, as a message that
    starts with ``what`` (the option, e.g. "--out"); None when it can (or when no path is given)."""
    if not path:
        return None
    p = Path(path)
    if p.exists() and p.is_dir() != directory:
        return f"{what} {path}: " + ("exists and is not a directory" if directory else "is a directory")
    parent = p if directory else p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{what} {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{what} {path}: directory {parent} is not writable"
    return None
