"""Optional packages: every console script answers a missing one with one error line naming the extra to
install and exit status 2 (``--help`` included), never a traceback, and writes nothing.

The missing package is simulated in a child process by ``sys.modules[name] = None`` (then ``import name``
raises ModuleNotFoundError, as when it is not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from robuq import cli_entry

CHILD = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
sys.argv = [{prog!r}] + {argv!r}
from robuq import cli_entry
sys.exit(cli_entry.{func}())
"""


def run_blocked(
    func: str, prog: str, argv: list[str], blocked: list[str], cwd
) -> subprocess.CompletedProcess:
    code = CHILD.format(blocked=blocked, prog=prog, argv=argv, func=func)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "func,prog,argv,blocked,extra",
    [
        ("train", "robuq-train", ["--help"], ["torch"], "train"),
        ("export", "robuq-export", ["--help"], ["torch"], "train"),
        ("evaluate", "robuq-eval", ["--help"], ["torch"], "train"),
        ("parity", "robuq-parity", ["a.rq", "b.pt"], ["torch"], "train"),
        ("train", "robuq-train", ["--data", "digits", "--steps", "1", "--out", "run"], ["sklearn"], "train"),
    ],
)
def test_missing_optional_package_is_one_error_line(tmp_path, func, prog, argv, blocked, extra):
    r = run_blocked(func, prog, argv, blocked, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr[-2000:]
    assert f"pip install 'robuq[{extra}]'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))


def test_export_onnx_without_onnx_writes_nothing(tmp_path):
    out, onnx = tmp_path / "m.rq", tmp_path / "m.onnx"
    argv = ["--random", "DiT-S/2", "--depth", "1", "--bits", "W1.58A2", "-o", str(out), "--onnx", str(onnx)]
    r = run_blocked("export", "robuq-export", argv, ["onnx"], tmp_path)
    assert r.returncode == 2 and "pip install 'robuq[onnx]'" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists() and not onnx.exists()


def test_engine_commands_need_no_torch(tmp_path):
    """robuq-infer runs the shipped model with torch blocked: the engine and its CLI are torch-free."""
    out = tmp_path / "s.npy"
    argv = ["--class", "3", "--steps", "2", "--threads", "1", "--no-progress", "-o", str(out)]
    r = run_blocked("infer", "robuq-infer", argv, ["torch"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists()


def test_unrelated_import_errors_are_not_hidden():
    assert cli_entry.missing_package_message("robuq.something") is None
    assert "robuq[bench]" in cli_entry.missing_package_message("openvino.runtime")
