// The DiT's non-linear-layer operations, in float32 with the operation order of the PyTorch reference
// (python/robuq/models.py) where it matters. Each token / (sample, head) is computed by one thread in a
// fixed order, so results do not depend on the thread count. On the avx2 tier GELU, LayerNorm, the gated
// residual and attention run the kernels of robuq/avx2.h (LayerNorm and the gated residual bit-identical to
// the scalar code here; GELU, softmax and the attention matmuls in their own fixed order, within a few ulp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "robuq/constants.h"

namespace robuq {
namespace ops {

constexpr int64_t kFreqDim = 256;    // timestep frequency features
using robuq::kLayerNormEps;  // robuq/constants.h

// t [N] -> out [N, 256]: freqs_i = exp(float(-ln 10000) * i / 128) in float32, args = float(t) * freqs,
// out = [cos(args), sin(args)] (robuq.models.timestep_embedding, dim 256).
void timestep_embedding(const int64_t* t, int64_t N, float* out);

// y = x / (1 + exp(-x)) elementwise (y may alias x).
void silu(const float* x, int64_t n, float* y);

// In place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GELU, tanh approximation; the avx2 tier computes
// the same function as x / (1 + exp(-2 u)), which avoids the cancellation of 1 + tanh for x << 0).
void gelu_tanh(float* x, int64_t n, int threads);

// x [N, C, S, S] -> patches [N * T, C * p * p]: token (i, j) row-major over the (S/p)^2 grid, features
// ordered (c, p_row, p_col) like the patch-embedding conv weight [D, C, p, p].
void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out);

// feats [N * T, p * p * C] (features (p_row, p_col, c), c fastest) -> out [N, C, S, S].
void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out);

// y[n, t] = LayerNorm(x[n, t]) * (1 + scale[n]) + shift[n] for x [N, T, D]; LayerNorm without affine,
// eps 1e-6, mean and variance accumulated in float64 over 8 interleaved lanes merged pairwise (the order of
// the "gauss" statistics, docs/quantization.md). shift / scale rows are `stride` floats apart.
void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, int threads);

// x[n, t] += gate[n] * b[n, t] for x, b [N, T, D]; gate rows `stride` floats apart.
void gated_residual(float* x, const float* b, const float* gate, int64_t stride, int64_t N, int64_t T, int64_t D,
                    int threads);

// Multi-head self-attention core: qkv [N * T, 3D] (rows [q | k | v], each split into H heads of head_dim) ->
// out [N * T, D] (heads concatenated). With bits > 0, q, k, v are fake-quantized per (token, head) row
// ("minmax", ref::quantize_row then (code - zero) * scale) and the softmax probabilities put on the grid
// round(p * (2^bits - 1)) / (2^bits - 1). Scores are (q . k) * float32(head_dim^-0.5), softmax with max
// subtraction. scratch: threads * attention_scratch_floats(T, head_dim) floats.
size_t attention_scratch_floats(int64_t T, int64_t head_dim);
void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim, int bits, float* out, float* scratch,
               int threads);

}  // namespace ops
}  // namespace robuq
