// The DiT's operations besides the linears that run per token or per (sample, head): GELU, LayerNorm with
// adaLN modulation, the gated residual and multi-head attention. Float32 with the operation order of the
// PyTorch reference (python/robuq/models.py) where it matters.
//
// robuq::ops::* run on the active kernel tier (robuq/cpu.h) and split the work over threads; each token /
// (sample, head) is computed by one thread in a fixed order, so results do not depend on the thread count.
// robuq::ref::*_row / attention_head are the scalar reference (kernels/ref/ops_ref.cpp) the reference and
// generic tiers run; the avx2 tier's kernels (robuq/avx2.h) are bit-identical to it for LayerNorm and the
// gated residual and within a few ulp for GELU, softmax and the attention matmuls (their own fixed order);
// the avx512 tier's attention has the avx2 tier's bits, 16 wide.
#pragma once
#include <cstddef>
#include <cstdint>

#include "robuq/constants.h"

namespace robuq {

namespace ref {

// In place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) elementwise (gelu_tanh_scalar, robuq/qlinear.h).
void gelu_tanh(float* x, int64_t n);

// One row: y = ((x - m) * rstd) * (1 + scale) + shift, LayerNorm without affine: mean and variance in
// float64 over kStatLanes interleaved lanes merged pairwise (ref::lane_sum, the order of the "gauss"
// statistics), rstd = float(1 / sqrt(var + double(kLayerNormEps))).
void layernorm_modulate_row(const float* x, int64_t D, const float* shift, const float* scale, float* y);

// x[k] = x[k] + gate[k] * b[k].
void gated_residual_row(float* x, const float* b, const float* gate, int64_t D);

// One (sample n, head h) of ops::attention in scalar code; scratch: attention_scratch_floats(T, head_dim).
size_t attention_scratch_floats(int64_t T, int64_t head_dim);
void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch);

}  // namespace ref

namespace ops {

// In place: GELU with the tanh approximation (ref::gelu_tanh; the avx2 tier computes the same function as
// x / (1 + exp(-2 u)), which avoids the cancellation of 1 + tanh for x << 0).
void gelu_tanh(float* x, int64_t n, int threads);

// y[n, t] = LayerNorm(x[n, t]) * (1 + scale[n]) + shift[n] for x [N, T, D] (ref::layernorm_modulate_row);
// shift / scale rows are `stride` floats apart.
void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, int threads);

// x[n, t] += gate[n] * b[n, t] for x, b [N, T, D]; gate rows `stride` floats apart.
void gated_residual(float* x, const float* b, const float* gate, int64_t stride, int64_t N, int64_t T, int64_t D,
                    int threads);

// Multi-head self-attention core: qkv [N * T, 3D] (rows [q | k | v], each split into H heads of head_dim) ->
// out [N * T, D] (heads concatenated). With bits > 0, q, k, v are fake-quantized per (token, head) row
// ("minmax", ref::quantize_row then (code - zero) * scale) and the softmax probabilities put on the grid
// round(p * (2^bits - 1)) / (2^bits - 1). Scores are (q . k) * float32(head_dim^-0.5), softmax with max
// subtraction. scratch: threads * attention_scratch_floats(T, head_dim) floats (enough for every tier).
size_t attention_scratch_floats(int64_t T, int64_t head_dim);
void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim, int bits, float* out,
               float* scratch, int threads);

}  // namespace ops
}  // namespace robuq
