// The DiT's model-level operations around the kernels: timestep features, SiLU of the conditioning
// vector, patchify / unpatchify (float32, the PyTorch reference's operation order, python/robuq/models.py).
// GELU, LayerNorm with modulation, the gated residual and attention are kernels (robuq/ops.h, included
// here: the same namespace robuq::ops), with their tiers and threading.
#pragma once
#include <cstddef>
#include <cstdint>

#include "robuq/ops.h"

namespace robuq {
namespace ops {

constexpr int64_t kFreqDim = 256;  // timestep frequency features

// t [N] -> out [N, 256]: freqs_i = exp(float(-ln 10000) * i / 128) in float32, args = float(t) * freqs,
// out = [cos(args), sin(args)] (robuq.models.timestep_embedding, dim 256).
void timestep_embedding(const int64_t* t, int64_t N, float* out);

// y = x / (1 + exp(-x)) elementwise (y may alias x).
void silu(const float* x, int64_t n, float* y);

// x [N, C, S, S] -> patches [N * T, C * p * p]: token (i, j) row-major over the (S/p)^2 grid, features
// ordered (c, p_row, p_col) like the patch-embedding conv weight [D, C, p, p].
void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out);

// feats [N * T, p * p * C] (features (p_row, p_col, c), c fastest) -> out [N, C, S, S].
void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out);

}  // namespace ops
}  // namespace robuq
