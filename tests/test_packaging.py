"""Packaging: the MIT LICENSE declared in pyproject.toml, and (slow) the wheel `pip wheel .` builds holds the
package, the extension, the shipped assets and the license, and nothing of the C API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_license_declared():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The RobuQ engine authors" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'(?m)^license = "MIT"$', pyproject)
    assert re.search(r'(?m)^license-files = \["LICENSE"\]$', pyproject)


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    """`pip wheel . --no-build-isolation --no-deps` (CUDA off to save time; a few minutes on 2 cores)."""
    env = dict(os.environ, CMAKE_ARGS="-DROBUQ_CUDA=OFF")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-build-isolation",
        "--no-deps",
        "-w",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = tmp_path.glob("robuq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "robuq/__init__.py",
        "robuq/engine.py",
        "robuq/exporter/__init__.py",
        "robuq/bench/__init__.py",
    ):
        assert name in names, name
    assert any(re.fullmatch(r"robuq/_C\..*\.so", n) for n in names), "no extension module robuq/_C*.so"
    assets = sorted(
        p.relative_to(ROOT / "python").as_posix() for p in (ROOT / "python/robuq/assets").iterdir()
    )
    assert assets and all(a in names for a in assets), sorted(set(assets) - names)
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert not [n for n in names if "librobuq" in n or n.endswith("robuq.h") or "robuq-run" in n]
    assert not [n for n in names if "__pycache__" in n]
