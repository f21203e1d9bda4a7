"""RobuQ: ternary-weight, low-bit-activation Diffusion Transformers.

Subpackages:
    robuq.models  the PyTorch reference DiT (official state-dict names)
    robuq.quant   the one module of quantization primitives (QAT, exporter and tests import it)
    robuq.engine  the standalone engine over .rq files (Engine, FormatError; no torch needed)
    robuq._C      the torch-free C++ kernels and engine (pybind11)
"""

__version__ = "0.1.0"


def _load_extension() -> None:
    """Imports robuq._C with a short OpenMP spin (GOMP_SPINCOUNT=1000: a waiting worker spins a few
    microseconds, then sleeps) for the engine's thread team, unless the user set OMP_WAIT_POLICY or
    GOMP_SPINCOUNT. libgomp reads them once, when it is loaded (with _C), so the variable is set only around
    the import and torch's own OpenMP runtime is not affected. Why: libgomp's default spin (300000 rounds)
    made a forward 3-10x slower on a machine with other busy processes (a spinning thread holds a core its
    partner needs), while sleeping at once (OMP_WAIT_POLICY=PASSIVE, the choice until 2026-12-06) cost a
    wake-up per parallel region: DiT-S/2 forward 0.031 s with the short spin vs 0.038 s passive on a quiet
    machine, the same 0.057-0.064 s with another busy process."""
    import os

    set_here = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if set_here:
        os.environ["GOMP_SPINCOUNT"] = "1000"
    try:
        from . import _C  # noqa: F401
    finally:
        if set_here:
            os.environ.pop("GOMP_SPINCOUNT", None)


_load_extension()

from .engine import Engine, FormatError, NonFiniteError  # noqa: E402

__all__ = ["Engine", "FormatError", "NonFiniteError", "__version__"]
