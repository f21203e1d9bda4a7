// Per-token asymmetric uniform activation quantization (1..8 bits, "minmax" or "gauss" clipping) and
// the fused Hadamard-then-quantize pass. Arithmetic: docs/quantization.md ("Activations").
//
// For one row x of n floats:
//   mn = min(x), mx = max(x)
//   minmax (clip_k <= 0): lo = mn, hi = mx
//   gauss  (clip_k >  0): m, sigma = mean and population std in float64, each sum taken over
//                         kStatLanes = 8 interleaved partial sums (element k into lane k % 8, k
//                         ascending in a lane) combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7));
//                         lo = float(max(mn, m - k sigma)), hi = float(min(mx, m + k sigma)),
//                         k = (double)clip_k (a float32 constant)
//   scale = max(hi - lo, kScaleEps = 1e-8f) / (2^bits - 1)        (float32)
//   q     = clamp(nearbyint((x - lo) / scale), 0, 2^bits - 1)     (float32 ops, round half to even)
//   zero  = -lo / scale                                            (float32)
//   dequantize: x_hat = (q - zero) * scale
#pragma once
#include <cstdint>

#include "robuq/constants.h"
#include "robuq/hadamard.h"

namespace robuq {

constexpr int kMinActBits = 1;
constexpr int kMaxActBits = 8;

// Throws std::invalid_argument unless 1 <= bits <= 8.
void check_act_bits(int bits);
// Throws std::invalid_argument when clip_k is NaN or infinite.
void check_clip_k(float clip_k);

// The clipping range [lo, hi] of one row (n >= 1), as in steps 1-2 above.
struct ClipRange {
  float lo = 0.0f;
  float hi = 0.0f;
};

namespace ref {

// sum_k v_k (v_k = x_k, or (x_k - m)^2 when square) over kStatLanes interleaved float64 lanes combined
// pairwise: the statistics order of the "gauss" clipping and of the engine's LayerNorm.
double lane_sum(const float* x, int64_t n, double m, bool square);

ClipRange clip_range(const float* x, int64_t n, float clip_k);

// One row: codes[n] (uint8), *scale, *zero. n >= 1; bits and clip_k are not re-validated here.
void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero);

// T rows of n floats (row-major). codes: T * n, scale / zero: T. Validates bits, clip_k and n >= 1.
void quantize_tokens(const float* x, int64_t T, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale,
                     float* zero);

// Fused pass over T rows of plan.n floats: copy the row to a scratch buffer, transform it
// (hadamard_transform_row), quantize it. x is not modified. When rotated is non-null the transformed
// float row is also written there (T * plan.n floats; the low-rank branch reads it). The result is
// bit-identical to quantize_tokens(hadamard_transform(x)).
void hadamard_quantize(const HadamardPlan& plan, const float* x, int64_t T, int bits, float clip_k, uint8_t* codes,
                       float* scale, float* zero, float* rotated);

}  // namespace ref
}  // namespace robuq
