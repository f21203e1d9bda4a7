"""RobuQ: ternary-weight, low-bit-activation Diffusion Transformers.

Subpackages:
    robuq.models  the PyTorch reference DiT (official state-dict names)
    robuq.quant   the one module of quantization primitives (QAT, exporter and tests import it)
    robuq.engine  the standalone engine over .rq files (Engine, FormatError; no torch needed)
    robuq._C      the torch-free C++ kernels and engine (pybind11)
"""

__version__ = "0.1.0"


def _load_extension() -> None:
    """Imports robuq._C with OpenMP's passive wait policy for the engine's thread team, unless the user set
    OMP_WAIT_POLICY. libgomp reads the variable once, when it is loaded (with _C), so it is set only around
    the import and torch's own OpenMP runtime is not affected. Why: the engine's parallel regions are few and
    long, so sleeping between them costs microseconds, while spinning workers made a forward 3-10x slower on a
    machine with other busy processes (a spinning thread holds a core its partner needs)."""
    import os

    set_here = "OMP_WAIT_POLICY" not in os.environ
    if set_here:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from . import _C  # noqa: F401
    finally:
        if set_here:
            os.environ.pop("OMP_WAIT_POLICY", None)


_load_extension()

from .engine import Engine, FormatError, NonFiniteError  # noqa: E402

__all__ = ["Engine", "FormatError", "NonFiniteError", "__version__"]
