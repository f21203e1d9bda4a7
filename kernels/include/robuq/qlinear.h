// The quantized linear layer as the engine runs it: fused Hadamard + per-token quantize, then the
// low-bit GEMM with its epilogue (scales, zero-point correction, low-rank branch, bias).
//
//   xr = x @ H                                     (the layer's Hadamard plan)
//   q, scale, zero = quantize(xr, act_bits, clip_k)  per token       (docs/quantization.md)
//   y[t, r] = scale[t] * s[r] * (sum_k q[t,k] code[r,k] - zero[t] * wsum[r])
//             + ((xr[t] @ down.T) @ up.T)[r] + bias[r]
// With act_bits == 0 (float activations) the first term is s[r] * (xr[t] . code[r]).
//
// The descriptor points at weights in the file's packed layout (docs/rq-format.md); a QLinear may
// repack them once, at construction, into whatever layout its kernels want. forward() dispatches on
// robuq::active_tier() at call time (reference, generic or avx2), so tests can run every tier on the
// same object. Every tier computes the same integer dot products; results differ between tiers only by
// float summation order in the epilogue and the low-rank branch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "robuq/format.h"
#include "robuq/hadamard.h"

namespace robuq {

struct QLinearDesc {
  int64_t in = 0, out = 0;
  WeightFormat format = WeightFormat::Ternary;
  const uint8_t* packed = nullptr;  // [out, packed_cols(format, in)] file layout
  const float* scale = nullptr;     // [out]
  const int32_t* wsum = nullptr;    // [out] sum of codes per row
  const float* bias = nullptr;      // [out] or null
  int64_t rank = 0;
  const float* down = nullptr;  // [rank, in] float32 (converted from the file's F16 by the loader)
  const float* up = nullptr;    // [out, rank] float32
  int act_bits = 0;             // 1..8, or 0 for float activations
  float clip_k = 0.0f;          // <= 0: minmax
  HadamardPlan plan;            // width in
};

// Bytes per packed row of `in` weights in the file layout.
int64_t packed_cols(WeightFormat format, int64_t in);

// "ternary" | "int4" | "int8"; anything else throws std::invalid_argument.
WeightFormat parse_weight_format(const std::string& name);
const char* weight_format_name(WeightFormat format);
// Largest |code| of a format (1, 7, 127): codes are in [-max, max]; ternary code 3, int4 -8 and int8
// -128 are invalid.
int weight_code_max(WeightFormat format);

// Checks every code of a packed [out, in] matrix (file layout). Throws std::invalid_argument naming the
// row, column and code of the first invalid one. Padding positions are not inspected. With `sums`, also
// writes sums[r] = sum_k code[r, k] (what the file's weight_sum must hold) in the same pass.
void check_weight_codes(WeightFormat format, const uint8_t* packed, int64_t out, int64_t in, int32_t* sums = nullptr);

// The kernels keep per-thread scratch between calls (no allocation per call); it grows with the largest call
// a thread has made. This frees the calling thread's scratch of every tier (the next call allocates anew);
// release_scratch(threads) runs it on the caller and on a team of `threads` OpenMP workers.
void release_thread_scratch();
void release_scratch(int threads);

// What QLinear::forward applies to every output after the bias; fused into the GEMM epilogue where the tier
// can (avx2), so the output makes one trip through memory. Results equal the separate pass exactly.
enum class PostOp { None = 0, GeluTanh = 1 };

// GELU (tanh approximation) as the reference and generic tiers compute it, and engine ops::gelu_tanh on
// those tiers: 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))) in float32, in that order. (The avx2 tier
// computes the same function as v / (1 + exp(-2 u)): avx2::gelu_tanh.)
float gelu_tanh_scalar(float v);

class QLinear {
 public:
  // Validates the descriptor (shapes, bits, plan width, weight codes, wsum == the codes' row sums,
  // int32 accumulator range) and prepares kernel-specific layouts; throws std::invalid_argument.
  // The descriptor's pointers must stay valid for the QLinear's lifetime.
  explicit QLinear(const QLinearDesc& desc);
  ~QLinear();
  QLinear(const QLinear&) = delete;
  QLinear& operator=(const QLinear&) = delete;

  // x: [T, in] float32, y: [T, out] float32 (overwritten; must not alias x). threads >= 1. The result
  // does not depend on `threads` (each output is computed by one thread in a fixed order). Safe to call
  // from several threads at once. post: applied to each output after the bias (e.g. the MLP's GELU after
  // fc1), with the same result as applying it afterwards with the active tier's own function.
  void forward(const float* x, int64_t T, float* y, int threads, PostOp post = PostOp::None) const;

  const QLinearDesc& desc() const { return desc_; }

 private:
  QLinearDesc desc_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Dense float32 linear: y[T, out] = x[T, in] @ W[out, in]^T (+ b[out] when b is non-null).
// Dispatches on the active tier like QLinear; results do not depend on `threads` (>= 1) or on T (each
// dot product is summed in one fixed order). y must not alias x or W.
void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads);

}  // namespace robuq
