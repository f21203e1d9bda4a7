// AVX2 + FMA kernels of the avx2 tier (kernels/avx2/*.cpp, the only files compiled with -mavx2 -mfma -mf16c).
// Call them only when tier_available(Tier::Avx2); the dispatchers in kernels/qlinear.cpp and kernels/ops.cpp do.
//
// Two kinds of contract:
//  * bit-identical to the scalar reference (robuq::ref): the Hadamard transform, the clipping range and the
//    per-token quantization. Every float operation of the reference is done once, in the same order, as a
//    vector operation (butterflies, the K x K step with a ascending, the float64 lane sums of the "gauss"
//    statistics, x - lo, the division, round half to even); min / max agree including the sign of a zero.
//  * deterministic float kernels with their own, fixed summation order (fused multiply-adds): the float32
//    GEMM, GELU, softmax, LayerNorm. Every output is computed by one thread in an order that does not
//    depend on the thread count or on how many tokens are in the call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "robuq/hadamard.h"
#include "robuq/quant.h"

namespace robuq {
namespace avx2 {

// Free the calling thread's scratch of the avx2 QLinear and of the ternary GEMM (robuq::release_thread_scratch).
void release_qlinear_scratch();
void release_gemm_scratch();

// ------------------------------------------------------------------ Hadamard + quantization (== ref)
// Same contracts as the robuq::ref functions of the same names (robuq/hadamard.h, robuq/quant.h).
void hadamard_transform_row(const HadamardPlan& plan, float* row, float* scratch);
ClipRange clip_range(const float* x, int64_t n, float clip_k);
void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero);
// quantize_row of two rows at once (their float64 statistics interleaved), the same bits: x0 -> codes0,
// scale[0], zero[0]; x1 -> codes1, scale[1], zero[1].
void quantize_rows2(const float* x0, const float* x1, int64_t n, int bits, float clip_k, uint8_t* codes0,
                    uint8_t* codes1, float* scale, float* zero);

// The transform of one plan with its K x K sign table prepared once: rot[n] = x @ H for one row (x and rot
// must not alias; scratch: plan.scratch_size() floats). Bit-identical to ref::hadamard_transform_row.
class RowTransform {
 public:
  explicit RowTransform(const HadamardPlan& plan);
  void operator()(const float* x, float* rot, float* scratch) const;
  const float* signs() const { return sgn_.data(); }  // sgn[a * K + c] = +0.0f or -0.0f (full form, K > 1)

 private:
  const HadamardPlan& plan_;
  std::vector<float> sgn_;  // sgn[a * K + c] = +0.0f or -0.0f, the sign of H_K[a, c]
};

// T rows, split over `threads` by token (any split gives the same result): the contract of
// ref::hadamard_quantize. Validates bits, clip_k and plan.n >= 1.
void hadamard_quantize(const HadamardPlan& plan, const float* x, int64_t T, int bits, float clip_k, uint8_t* codes,
                       float* scale, float* zero, float* rotated, int threads);

// ------------------------------------------------------------------------------------ float32 GEMM
// y[t, r] = sum_k x[t, k] W[r, k] (+ b[r]) for x [T, in], W [out, in] (row strides in). Each dot product is one
// chain of fused multiply-adds over k ascending, starting from 0 (the bias is added afterwards), so a row of
// y depends only on its row of x. W is packed into 16-row panels per call.
void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads);

// Panel GEMM core shared by linear_f32 and attention: y[t * ldy + r] = sum_k x[t * ldx + k] * P(r, k) for
// t < T, r < R, with B packed as panels of 16 outputs: P(r, k) = panels[(r / 16) * K * 16 + k * 16 + r % 16]
// (zero padded past R). Single thread; the same fused-multiply-add chain as linear_f32.
void gemm_panels(const float* x, int64_t ldx, int64_t T, const float* panels, int64_t R, int64_t K, float* y,
                 int64_t ldy);
// panels (ceil(R / 16) * K * 16 floats) from a row-major [R, K] matrix W (row stride ldw): P(r, k) = W[r, k].
void pack_panels_rows(const float* W, int64_t ldw, int64_t R, int64_t K, float* panels);
// panels from a column-major view: P(r, k) = V[k * ldv + r] (e.g. V [K, R] row-major).
void pack_panels_cols(const float* V, int64_t ldv, int64_t R, int64_t K, float* panels);

// --------------------------------------------------------------------------------- elementwise, rows
// exp(x) elementwise (y may alias x): Cody-Waite reduction and a degree-6 polynomial, within 2 ulp of
// the correctly rounded result on [-87.3, 88.7]; 0 below, +inf above (inf for +inf, 0 for -inf, NaN
// for NaN).
void exp_f32(const float* x, int64_t n, float* y);
// In place: x / (1 + exp(-2 u)) with u = sqrt(2/pi) (x + 0.044715 x^3) (float32, in that order), which is
// 0.5 x (1 + tanh(u)) (GELU, tanh approximation) without its cancellation for negative x.
void gelu_tanh(float* x, int64_t n);
// `count` rows (1..4) of LayerNorm (no affine, eps 1e-6, float64 mean and variance over 8 interleaved lanes like
// the "gauss" statistics) then y = ((x - m) * rstd) * (1 + scale) + shift; row i is x[i] -> y[i] with shift[i],
// scale[i]. The arithmetic of ops::layernorm_modulate, bit-identical to its scalar version; the rows' float64
// statistics run as interleaved chains, each row's the same as alone.
void layernorm_modulate_rows(int count, const float* const* x, int64_t D, const float* const* shift,
                             const float* const* scale, float* const* y);
// x[k] = x[k] + gate[k] * b[k] (bit-identical to the scalar loop).
void gated_residual_row(float* x, const float* b, const float* gate, int64_t D);
// In place on one row of n scores: s * scale, softmax with max subtraction (exp_f32, the sum over 8
// interleaved lanes combined pairwise), then with levels > 0 the grid round(p * levels) / levels.
void softmax_row(float* s, int64_t n, float scale, int levels);

// One (sample n, head h) of ops::attention (robuq/ops.h): q, k, v fake-quantized per row when bits > 0
// (quantize_row, bit-identical to the reference), S = q k^T and O = P v with gemm_panels, softmax_row.
size_t attention_scratch_floats(int64_t T, int64_t head_dim);
// attention_head's first part, shared with the avx512 tier: Q (fake-quantized) [T, head_dim], the key panels
// (P(j, d) = K[j, d]) and value panels (P(d, j) = V[j, d]) in scratch, and the scores buffer [query_rows, T].
struct AttentionBuffers {
  float *Q, *Kp, *Vp, *S;
  int64_t query_rows;
};
// The regions of one head's scratch (attention_scratch_floats of them), shared by both tiers' attention: Q
// [T, head_dim], key panels [round16(T), head_dim], value panels [round16(head_dim), T], a row staging buffer
// [T, head_dim], scores [query_rows, T], a codes row (head_dim bytes in head_dim floats), and the quantized
// path's per-row / per-key statistics (round16(T) floats each: q's scale, -zero and code sum; k's scale,
// -zero and fma(-head_dim, zero, code sum)). The quantized path keeps its q codes and key-code panels in the Q
// and key-panel regions.
struct AttentionScratch {
  float *Q, *Kp, *Vp, *stage, *S;
  uint8_t* codes;
  float *sq, *nzq, *aq, *sk, *nzk, *ck;
  int64_t query_rows;
};
AttentionScratch attention_scratch(float* scratch, int64_t T, int64_t head_dim);
AttentionBuffers attention_prepare(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim,
                                   int bits, float* scratch);
void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch);

}  // namespace avx2
}  // namespace robuq
