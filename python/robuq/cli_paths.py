"""Shared pieces of the command lines: output paths checked before any work, so that a bad path costs
nothing and leaves nothing behind (robuq-train, robuq-eval, robuq-bench; each raises its own usage error
with the message), and the --help formatter that states only defaults that mean something."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["DefaultsHelpFormatter", "output_path_problem"]


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


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where it tells something: not for flags (store_true / store_false,
    whose "default" is just the flag's absence), not for None, and not when the help already states its
    default (a "default" word or a trailing "[value]" note)."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if flag or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if "default" in text or text.rstrip().endswith("]"):  # "(default: ...)" or a trailing "[value]" note
            return text
        return super()._get_help_string(action)
