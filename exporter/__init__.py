"""robuq.exporter: QAT checkpoint -> .rq file (sources in the repository's top-level exporter/).

Modules:
    rq           the .rq container: aligned safetensors writer, numpy reader ``load_rq`` (torch-free)
    packing      ternary / int4 / int8 weight-code packing in numpy (torch-free)
    checkpoint   safe checkpoint loading, config inference for official DiT files, validation
    export       layout planning and per-layer conversion of a state dict to .rq
    random_model lazily generated random-weight models for benchmarks (``--random``)
    onnx_export  the QAT model as a standard ONNX graph
    cli          the ``robuq-export`` command
"""

from .rq import load_rq

__all__ = ["load_rq"]
