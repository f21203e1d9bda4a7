"""robuq.quant: the one module of quantization primitives.

QAT, the exporter, the engine's tests and the benchmarks all import these definitions, so the trained
model and the deployed one cannot drift. The exact arithmetic is in docs/quantization.md.
"""

from .config import ADALN, BLOCK_LINEARS, LayerQuant, QuantConfig, preset
from .hadamard import (
    base_construction,
    block_size,
    factorize,
    fast_hadamard,
    hadamard_base,
    hadamard_matrix,
    sylvester,
)
from .primitives import (
    CLIPS,
    activation_range,
    clip_constant,
    dequantize_activations,
    fake_quantize_activations,
    fake_quantize_probs,
    fake_quantize_weight,
    gauss_clip_ratio,
    gauss_quant_mse,
    quantize_activations,
    quantize_weight,
    symmetric_quantize,
    ternary_quantize,
    weight_bits,
)
from .qlinear import QLinear, quantize_model

__all__ = [
    "ADALN",
    "BLOCK_LINEARS",
    "CLIPS",
    "LayerQuant",
    "QLinear",
    "QuantConfig",
    "activation_range",
    "base_construction",
    "block_size",
    "clip_constant",
    "dequantize_activations",
    "factorize",
    "fake_quantize_activations",
    "fake_quantize_probs",
    "fake_quantize_weight",
    "fast_hadamard",
    "gauss_clip_ratio",
    "gauss_quant_mse",
    "hadamard_base",
    "hadamard_matrix",
    "preset",
    "quantize_activations",
    "quantize_model",
    "quantize_weight",
    "symmetric_quantize",
    "sylvester",
    "ternary_quantize",
    "weight_bits",
]
