"""RobuQ: ternary-weight, low-bit-activation Diffusion Transformers.

Subpackages:
    robuq.models  the PyTorch reference DiT (official state-dict names)
    robuq.quant   the one module of quantization primitives (QAT, exporter and tests import it)
    robuq.engine  the standalone engine over .rq files (Engine, FormatError; no torch needed)
    robuq._C      the torch-free C++ kernels and engine (pybind11)
"""

__version__ = "0.1.0"

from .engine import Engine, FormatError  # noqa: E402

__all__ = ["Engine", "FormatError", "__version__"]
