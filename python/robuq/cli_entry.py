"""Console-script entry points (pyproject [project.scripts]): each imports its command's module only when
run, so a missing optional package (torch, scikit-learn, onnx, ...) becomes one ``error:`` line naming the
extra to install and exit status 2, also for ``--help``, instead of a traceback.

The package itself needs only numpy, safetensors, pillow and tqdm (the engine, ``robuq-infer``,
``robuq-sample``); the extras (pyproject.toml) add the rest: ``robuq[train]`` torch + scikit-learn
(robuq-train, -eval, -export, -parity), ``robuq[onnx]``, ``robuq[vae]``, ``robuq[bench]``.
"""

from __future__ import annotations

import importlib
import sys

#: top-level module -> (what it is, the extra that installs it)
OPTIONAL = {
    "torch": ("PyTorch", "train"),
    "sklearn": ("scikit-learn", "train"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "diffusers": ("diffusers", "vae"),
    "openvino": ("OpenVINO", "bench"),
    "nncf": ("NNCF", "bench"),
}

TORCH_FIRST = (
    " (install a CPU build of torch first, e.g. pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu, so that the extra cannot pull a CUDA build; DEVELOPERS.md)"
)


def missing_package_message(name: str | None) -> str | None:
    """The error text for a ModuleNotFoundError of an optional package; None for any other module."""
    top = (name or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    what, extra = OPTIONAL[top]
    return f"{what} ({top}) is not installed: pip install 'robuq[{extra}]'" + (
        TORCH_FIRST if extra in ("train", "vae") else ""
    )


def _run(prog: str, module: str, func: str = "main") -> int:
    try:
        main = getattr(importlib.import_module(module), func)
        return int(main() or 0)
    except ModuleNotFoundError as e:
        msg = missing_package_message(e.name)
        if msg is None:
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2


def train() -> int:
    return _run("robuq-train", "robuq.train")


def export() -> int:
    return _run("robuq-export", "robuq.exporter.cli")


def evaluate() -> int:
    return _run("robuq-eval", "robuq.evaluate")


def infer() -> int:
    return _run("robuq-infer", "robuq.infer")


def sample() -> int:
    return _run("robuq-sample", "robuq.sample_many")


def parity() -> int:
    return _run("robuq-parity", "robuq.parity")


def bench() -> int:
    return _run("robuq-bench", "robuq.bench.cli")
