// Numeric constants of the arithmetic (docs/quantization.md), defined once for the scalar reference, every
// CPU tier and the CUDA code (plain constexpr scalars: usable on the host and in device code). The Python
// side's twins: robuq.quant.primitives.SCALE_EPS, robuq.models' LayerNorm eps.
#pragma once

namespace robuq {

// Smallest quantization step range: scale = max(hi - lo, kScaleEps) / (2^bits - 1).
constexpr float kScaleEps = 1e-8f;
// LayerNorm epsilon of the DiT blocks and final layer (float32, added in float64 to the variance).
constexpr float kLayerNormEps = 1e-6f;
// Interleaved float64 partial sums of the "gauss" statistics and LayerNorm (element k into lane k % 8).
constexpr int kStatLanes = 8;

}  // namespace robuq
