// Internal to the kernels: the per-tier entry points behind robuq/qlinear.h and the pieces every tier
// shares (code decoding, the epilogue), so that all tiers compute the same integer dot products and the
// same epilogue arithmetic.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "robuq/cpu.h"
#include "robuq/qlinear.h"

namespace robuq {
namespace detail {

// Code k of one packed row (robuq/format.h); QLinear rejects invalid codes at construction.
inline int weight_code(WeightFormat format, const uint8_t* row, int64_t k) {
  return decode_weight_code(format, row, k);
}

// Decodes row r's `in` codes into dst (int8). Codes must be valid.
void decode_row(WeightFormat format, const uint8_t* row, int64_t in, int8_t* dst);

// y = scale_x * s_w * (acc - zero_x * wsum), evaluated in float64 and rounded once to float32. Shared by
// every tier, so tiers agree bit for bit on the quantized term.
inline float qlinear_epilogue(int64_t acc, float scale_x, float zero_x, float s_w, int32_t wsum) {
  const double d = static_cast<double>(acc) - static_cast<double>(zero_x) * static_cast<double>(wsum);
  return static_cast<float>(static_cast<double>(scale_x) * static_cast<double>(s_w) * d);
}

// Threads worth waking for `work` units when each thread should get at least `min_per_thread`: small
// problems run on the calling thread (a parallel region costs microseconds, much more when the machine
// is oversubscribed). Results never depend on this choice.
inline int useful_threads(int threads, int64_t work, int64_t min_per_thread) {
  const int64_t by_work = work / (min_per_thread > 0 ? min_per_thread : 1);
  if (by_work < 2) return 1;
  return by_work < threads ? static_cast<int>(by_work) : threads;
}

// A vector that only grows, one per thread: per-call scratch without an allocation per call.
template <class T>
T* thread_scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace detail

namespace ref {
// Scalar, single-threaded statement of the header formula, reading the packed codes directly.
void qlinear_forward(const QLinearDesc& d, const float* x, int64_t T, float* y);
void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y);
}  // namespace ref

namespace generic {
// Weights re-laid out once for the kernels of one tier. The generic tier holds int8 codes (or float codes
// for float activations). The avx2 tier runs ternary and int4 weights with quantized activations straight
// from the file layout (`direct`: nothing is held) and shares the generic kernels for everything else.
struct Prepared {
  bool direct = false;     // avx2 tier: the kernels read desc.packed
  int64_t ld = 0;          // row stride of w8 / of the activation codes
  std::vector<int8_t> w8;  // [out, ld] codes, for act_bits > 0 (generic integer GEMM)
  std::vector<float> wf;   // [out, in] codes as float, for act_bits == 0
};
// direct: prepare for the avx2 kernels (only when avx2_direct(d), on a CPU with AVX2); otherwise the generic
// layout.
std::unique_ptr<Prepared> prepare(const QLinearDesc& d, bool direct);
bool avx2_direct(const QLinearDesc& d);
void qlinear_forward(const QLinearDesc& d, const Prepared& p, const float* x, int64_t T, float* y, int threads);
// Frees the calling thread's scratch of this tier (release_thread_scratch in robuq/qlinear.h).
void release_qlinear_scratch();
void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads);
}  // namespace generic

namespace avx2 {
// The avx2 tier's QLinear::forward (kernels/avx2/qlinear_avx2.cpp); p from generic::prepare(d, avx2_direct(d)).
// post is applied with avx2::gelu_tanh's arithmetic. tier: Avx2, or Avx512 (the ternary integer GEMM on
// avx512::ternary_gemm, the Hadamard transform and quantizer 16 wide, the same bits), or Amx (the same with
// the ternary GEMM on amx::ternary_gemm).
void qlinear_forward(const QLinearDesc& d, const generic::Prepared& p, const float* x, int64_t T, float* y, int threads,
                     PostOp post, Tier tier = Tier::Avx2);
}  // namespace avx2

}  // namespace robuq
