// Per-thread arithmetic of the CUDA backend, compiled twice: by nvcc into the kernels (kernels/cuda/*.cu)
// and by the host compiler into the CPU test suite (python/bindings/cuda_host_bind.cpp, robuq._C.cuda_host),
// where tests/test_cuda_host.py checks it against the CPU reference kernels. Everything here is plain
// integer or IEEE float32 / float64 arithmetic, one operation at a time, with no library math (no expf,
// tanhf, rintf from a math library whose last bit differs between glibc and CUDA): both compilers must
// produce the same bits, which holds because the CPU core is built with -ffp-contract=off and the CUDA
// sources with --fmad=false (no fused multiply-adds on either side).
//
// Specs: docs/quantization.md (activations, Hadamard), docs/rq-format.md (packing, the layer formula),
// docs/cuda.md (the fragment layouts and the decisions of this backend).
#pragma once
#include <stdint.h>

#ifndef __CUDACC__
#include <cmath>
#endif

#include "robuq/constants.h"
#include "robuq/format.h"
#include "robuq/host_device.h"

namespace robuq {
namespace host_device {

// ------------------------------------------------------------------------------------------ bit helpers
ROBUQ_HD uint32_t f32_bits(float v) {
  union {
    float f;
    uint32_t u;
  } c;
  c.f = v;
  return c.u;
}

ROBUQ_HD float bits_f32(uint32_t u) {
  union {
    float f;
    uint32_t u;
  } c;
  c.u = u;
  return c.f;
}

// Round to nearest integer, ties to even, for |v| < 2^22 (the codes' range is far inside): adding and
// subtracting 1.5 * 2^23 leaves exactly the rounded value in the default rounding mode. NaN stays NaN.
ROBUQ_HD float round_half_even(float v) {
  const float magic = 12582912.0f;                     // 1.5 * 2^23
  if (!(v < 4194304.0f && v > -4194304.0f)) return v;  // already integral (or NaN / inf)
  const float t = v + magic;
  return t - magic;
}

ROBUQ_HD float fmin_hd(float a, float b) { return b < a ? b : a; }
ROBUQ_HD float fmax_hd(float a, float b) { return b > a ? b : a; }

// --------------------------------------------------------------------------------------- weight codes
// Ternary byte (docs/rq-format.md: code c = w + 1 in bits 2i..2i+1 of byte j for weight 4j + i) -> the four
// weights as int8 lanes of a 32-bit word, weight 4j + i in byte i (the s8x4 register layout of mma.sync).
// Spread the four 2-bit codes into the low bits of four bytes, then map c -> c - 1 per byte without
// carries: (c + 0x7f) ^ 0x80 is 0xff, 0x00, 0x01 for c = 0, 1, 2. Code 3 (invalid, rejected at load) would
// give 0x02.
ROBUQ_HD uint32_t ternary_byte_to_s8x4(uint32_t byte) {
  const uint32_t spread = (byte & 0x03u) | ((byte & 0x0cu) << 6) | ((byte & 0x30u) << 12) | ((byte & 0xc0u) << 18);
  return (spread + 0x7f7f7f7fu) ^ 0x80808080u;
}

// Two int4 bytes (docs/rq-format.md: column 2j in the low nibble of byte j, two's complement) -> the four
// codes of columns 4i .. 4i + 3 as int8 lanes (b0 holds columns 4i, 4i+1; b1 holds 4i+2, 4i+3).
// Sign-extends each nibble: ((v ^ 8) - 8) on the nibble, done per byte as above.
ROBUQ_HD uint32_t int4_bytes_to_s8x4(uint32_t b0, uint32_t b1) {
  const uint32_t spread = (b0 & 0x0fu) | ((b0 & 0xf0u) << 4) | ((b1 & 0x0fu) << 16) | ((b1 & 0xf0u) << 20);
  // per byte n in 0..15: (n ^ 8) in 0..15, plus 0x78 (no carry: <= 0x87), xor 0x80 -> n ^ 8 - 8 as int8
  return ((spread ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
}

// int8 lane i of a packed word, as int.
ROBUQ_HD int s8_lane(uint32_t w, int i) {
  const int v = static_cast<int>((w >> (8 * i)) & 0xffu);
  return v >= 128 ? v - 256 : v;
}

// ---------------------------------------------------------------------------------- Hadamard pieces
// One butterfly of the Walsh-Hadamard stages: (u, v) -> (u + v, u - v).
ROBUQ_HD void butterfly(float& u, float& v) {
  const float a = u + v;
  const float b = u - v;
  u = a;
  v = b;
}

// Sequential Walsh-Hadamard transform of one segment of M = 2^m floats, stage by stage (h = 1, 2, 4, ...).
// The device kernel runs the same butterflies in parallel, one stage at a time: each value at each stage is
// the same single addition, so the order of the butterflies within a stage does not matter.
ROBUQ_HD void walsh_hadamard(float* x, int64_t M) {
  for (int64_t h = 1; h < M; h *= 2)
    for (int64_t i = 0; i < M; ++i)
      if ((i & h) == 0) butterfly(x[i], x[i + h]);
}

// Y[c, b] of the K-mix: sum_a H_K[a, c] X[a, b], a ascending, the first term starting the sum (the
// reference order). X row-major [K, M], H row-major [K, K] of +-1.
ROBUQ_HD float kmix_value(const float* X, const int8_t* H, int64_t K, int64_t M, int64_t c, int64_t b) {
  float y = H[c] > 0 ? X[b] : -X[b];
  for (int64_t a = 1; a < K; ++a) {
    const float v = X[a * M + b];
    y = H[a * K + c] > 0 ? y + v : y - v;
  }
  return y;
}

// ------------------------------------------------------------------------ per-token quantization

// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
ROBUQ_HD double combine_lanes(const double* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// Lane `lane`'s partial sum: elements k = lane, lane + 8, ... ascending (v = x, or (x - m)^2). The loads
// go eight at a time ahead of the (serial, in-order) additions: on the GPU one thread runs this chain, and
// a load per addition would put the memory latency on it.
ROBUQ_HD double lane_term(float x, double m, bool square) {
  double v = static_cast<double>(x);
  if (square) {
    v = v - m;
    v = v * v;
  }
  return v;
}
ROBUQ_HD double lane_partial(const float* x, int64_t n, int lane, double m, bool square) {
  double s = 0.0;
  int64_t k = lane;
  for (; k + 7 * kStatLanes < n; k += 8 * kStatLanes) {
    float v[8];
    for (int e = 0; e < 8; ++e) v[e] = x[k + e * kStatLanes];
    for (int e = 0; e < 8; ++e) s = s + lane_term(v[e], m, square);
  }
  for (; k < n; k += kStatLanes) s = s + lane_term(x[k], m, square);
  return s;
}

// Clipping range from the row's min / max and (gauss only) its float64 lane sums.
struct Clip {
  float lo, hi;
};

// sqrt in float64: a basic IEEE operation, correctly rounded by both CUDA and the host (sqrtsd).
ROBUQ_HD double sqrt_f64(double v) {
#ifdef __CUDACC__
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

ROBUQ_HD Clip clip_minmax(float mn, float mx) { return Clip{mn, mx}; }

// m = sum / n, sigma = sqrt(ss / n), lo = float(max(mn, m - k sigma)), hi = float(min(mx, m + k sigma)).
ROBUQ_HD Clip clip_gauss(float mn, float mx, double mean, double sumsq, int64_t n, float clip_k) {
  const double sigma = sqrt_f64(sumsq / static_cast<double>(n));
  const double ks = static_cast<double>(clip_k) * sigma;
  const double a = mean - ks, b = mean + ks;
  const double dmn = static_cast<double>(mn), dmx = static_cast<double>(mx);
  const double lo = dmn < a ? a : dmn;  // std::max(mn, a)
  const double hi = b < dmx ? b : dmx;  // std::min(mx, b)
  return Clip{static_cast<float>(lo), static_cast<float>(hi)};
}

struct QuantParams {
  float lo, scale, zero, qmax;
};

// scale = max(hi - lo, 1e-8) / (2^bits - 1); zero = -lo / scale (float32, one operation each).
ROBUQ_HD QuantParams quant_params(Clip r, int bits) {
  QuantParams p;
  p.lo = r.lo;
  p.qmax = static_cast<float>((1 << bits) - 1);
  const float w = r.hi - r.lo;
  p.scale = (w < kScaleEps ? kScaleEps : w) / p.qmax;  // std::max(w, kScaleEps)
  p.zero = -r.lo / p.scale;
  return p;
}

// q = clamp(round_half_even((x - lo) / scale), 0, qmax); NaN -> 0 (as the reference).
ROBUQ_HD uint32_t quant_code(float x, const QuantParams& p) {
  const float d = x - p.lo;
  const float t = d / p.scale;
  float q = round_half_even(t);
  if (!(q >= 0.0f)) q = 0.0f;
  if (q > p.qmax) q = p.qmax;
  return static_cast<uint32_t>(q);
}

// ----------------------------------------------------------------------------------------- epilogue
// scale_x * s_w * (acc - zero_x * wsum) in float64, rounded once (detail::qlinear_epilogue's arithmetic).
ROBUQ_HD float epilogue_quant(int32_t acc, float scale_x, float zero_x, float s_w, int32_t wsum) {
  const double d = static_cast<double>(acc) - static_cast<double>(zero_x) * static_cast<double>(wsum);
  return static_cast<float>(static_cast<double>(scale_x) * static_cast<double>(s_w) * d);
}

// The reference's low-rank term for one output: sum_j u[j] * up[j] in float32, j ascending from 0.
ROBUQ_HD float lowrank_dot(const float* u, const float* up, int64_t R) {
  float acc = 0.0f;
  for (int64_t j = 0; j < R; ++j) acc = acc + u[j] * up[j];
  return acc;
}

// Everything after the dot product of a quantized or float linear, for one output: the low-rank term
// (u_row: the token's u = xr @ down^T, up_row: the output's row of up), the bias, then GELU when asked, in
// the CPU reference's order ((v + lowrank) + bias). u_row / up_row are ignored when R == 0, bias when null.
ROBUQ_HD float gelu_tanh_hd(float v);
ROBUQ_HD float epilogue_finish(float v, const float* u_row, const float* up_row, int64_t R, const float* bias,
                               int gelu) {
  if (R > 0) v = v + lowrank_dot(u_row, up_row, R);
  if (bias != nullptr) v = v + *bias;
  if (gelu) v = gelu_tanh_hd(v);
  return v;
}

// LayerNorm statistics from the combined float64 lane sums (ops::layernorm_modulate): mean = sum / D,
// var = sumsq / D, rstd = float(1 / sqrt(var + double(kLayerNormEps))), mean rounded to float.
ROBUQ_HD void layernorm_stats(double mean, double sumsq, int64_t D, float* m, float* rstd) {
  const double var = sumsq / static_cast<double>(D);
  *m = static_cast<float>(mean);
  *rstd = static_cast<float>(1.0 / sqrt_f64(var + static_cast<double>(kLayerNormEps)));
}

// ------------------------------------------------------------------------------- float functions
// exp(x) in float32 without library calls: x = n ln2 + r (Cody-Waite, two-part ln2), exp(r) by a degree-7
// Taylor-Horner polynomial on |r| <= ln2 / 2, times 2^n built in the exponent bits (two steps, so that
// results down to 2^-149 come out as subnormals). Max error about 2 ulp (tests/test_cuda_host.py measures
// it against float64 exp). exp(x) = +inf for x > 88.72284, 0 for x < -103.97209, NaN for NaN.
ROBUQ_HD float exp_hd(float x) {
  if (!(x == x)) return x;
  if (x > 88.72284f) return bits_f32(0x7f800000u);
  if (x < -103.97209f) return 0.0f;
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f;  // 12 significant bits: n * ln2_hi is exact for |n| < 2^11
  const float ln2_lo = 1.42860682030941723e-6f;
  const float n = round_half_even(x * log2e);
  const float r = (x - n * ln2_hi) - n * ln2_lo;
  float p = 1.98412698e-4f;    // 1/5040
  p = p * r + 1.38888889e-3f;  // 1/720
  p = p * r + 8.33333333e-3f;  // 1/120
  p = p * r + 4.16666667e-2f;  // 1/24
  p = p * r + 1.66666667e-1f;  // 1/6
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int e = static_cast<int>(n);  // -150 .. 128
  // 2^e = 2^e1 * 2^e2 with both factors normal floats
  const int e1 = e / 2, e2 = e - e / 2;
  const float s1 = bits_f32(static_cast<uint32_t>(e1 + 127) << 23);
  const float s2 = bits_f32(static_cast<uint32_t>(e2 + 127) << 23);
  return (p * s1) * s2;
}

// GELU, tanh approximation: 0.5 v (1 + tanh(u)), u = sqrt(2/pi) (v + 0.044715 v^3), written as
// v / (1 + exp(-2u)) (equal in exact arithmetic; no cancellation for v << 0), and as v exp(2u) in the far
// negative tail. Close to robuq::gelu_tanh_scalar (glibc tanhf); the host tests state the bound.
ROBUQ_HD float gelu_tanh_hd(float v) {
  const float beta = 0.7978845608028654f;
  const float kappa = 0.044715f;
  const float u = beta * (v + kappa * (v * v * v));
  const float t = -2.0f * u;
  // far tail (v < -3.3): 1 + e^t = e^t to within e^-20 relative, and v e^-t stays accurate down to the
  // subnormals where v / (1 + e^t) would overflow e^t first
  if (t > 20.0f) return v * exp_hd(-t);
  return v / (1.0f + exp_hd(t));
}

// SiLU: v / (1 + exp(-v)).
ROBUQ_HD float silu_hd(float v) { return v / (1.0f + exp_hd(-v)); }

// adaLN modulate of a normalised value: ((x - mean) * rstd) * (1 + scale) + shift (ops::layernorm_modulate).
ROBUQ_HD float modulate_hd(float x, float mean, float rstd, float scale, float shift) {
  return ((x - mean) * rstd) * (1.0f + scale) + shift;
}

// Gated residual: x + gate * b (ops::gated_residual).
ROBUQ_HD float gated_residual_hd(float x, float gate, float b) { return x + gate * b; }

// Softmax probability on the fixed grid of the quantized attention: clamp(round(p * levels), 0, levels) /
// levels.
ROBUQ_HD float prob_grid(float p, float levels) {
  float q = round_half_even(p * levels);
  q = fmin_hd(fmax_hd(q, 0.0f), levels);
  return q / levels;
}

// Attention operand fake quantization of one (token, head) row of q, k or v (ops::attention with bits > 0):
// minmax range, codes as quant_code, then (code - zero) * scale.
ROBUQ_HD void fake_quant_row(const float* src, int64_t n, int bits, float* dst) {
  float mn = src[0], mx = src[0];
  for (int64_t d = 1; d < n; ++d) {
    mn = fmin_hd(mn, src[d]);
    mx = fmax_hd(mx, src[d]);
  }
  const QuantParams p = quant_params(clip_minmax(mn, mx), bits);
  for (int64_t d = 0; d < n; ++d) dst[d] = (static_cast<float>(quant_code(src[d], p)) - p.zero) * p.scale;
}

// ----------------------------------------------------------------- mma.sync m16n8k32 fragments
// The register layout of mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 (PTX ISA, "Matrix fragments for
// mma.m16n8k32" with 8-bit types), for lane = threadIdx.x % 32, group g = lane / 4, t = lane % 4:
//   A (16 x 32, row-major, u8): 4 registers of 4 bytes; register i holds A[row][k .. k+3] with
//       row = g + 8 * (i & 1), k = 4 t + 16 * (i >> 1).
//   B (32 x 8, "col": column n contiguous over k; our weight row n), s8: 2 registers; register i holds
//       B[k .. k+3][n] with n = g, k = 4 t + 16 i.
//   C / D (16 x 8, s32): 4 registers; register i holds C[row][col], row = g + 8 * (i >> 1), col = 2 t + (i & 1).
ROBUQ_HD int frag_a_row(int lane, int i) { return lane / 4 + 8 * (i & 1); }
ROBUQ_HD int frag_a_k(int lane, int i) { return 4 * (lane % 4) + 16 * (i >> 1); }
ROBUQ_HD int frag_b_col(int lane) { return lane / 4; }
ROBUQ_HD int frag_b_k(int lane, int i) { return 4 * (lane % 4) + 16 * i; }
ROBUQ_HD int frag_c_row(int lane, int i) { return lane / 4 + 8 * (i >> 1); }
ROBUQ_HD int frag_c_col(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

// Register b of a B fragment for weight row `row_bytes` (file layout) and k-tile base k0 (a multiple of 32):
// the four codes k0 + frag_b_k(lane, i) .. + 3, as s8x4. `in` guards the row end: codes at k >= in read as 0
// (their activation codes are 0 too; see docs/cuda.md). format: robuq/format.h.
ROBUQ_HD uint32_t load_b_reg(WeightFormat format, const uint8_t* row_bytes, int64_t in, int64_t k0, int lane, int i) {
  const int64_t k = k0 + frag_b_k(lane, i);
  if (k >= in) return 0u;
  if (format == WeightFormat::Ternary) {
    const uint32_t w = ternary_byte_to_s8x4(row_bytes[k >> 2]);
    // a partial last byte holds padding codes 1 (= weight 0), which decode to 0 already
    return w;
  }
  if (format == WeightFormat::Int4) {
    const int64_t j = k >> 1;
    const uint32_t b0 = row_bytes[j];
    const uint32_t b1 = k + 2 < in ? row_bytes[j + 1] : 0u;  // padding nibbles are 0
    return int4_bytes_to_s8x4(b0, b1);
  }
  uint32_t w = 0;
  for (int q = 0; q < 4; ++q)
    if (k + q < in) w |= static_cast<uint32_t>(row_bytes[k + q]) << (8 * q);
  return w;
}

// ------------------------------------------------------- the ternary fast path (docs/cuda.md, "GEMM")
// The k order inside an integer dot product does not change it, so the fast ternary GEMM pairs activation
// and weight codes in the order that makes both loads wide. A lane with t = lane % 4 takes the 16 codes of
// k group 16 t (of each 64-code step): one 32-bit word of the packed weight row (byte b holds codes
// 16 t + 4 b + s in bits 2 s) and one 16-byte load of the activation row. Register s of the weight word is
// (w >> 2 s) & 0x03030303: byte b = code of k = 16 t + 4 b + s, unsigned 0..2 (= weight + 1). The
// activation codes are stored with the two 2-bit fields of k inside its 16-group swapped
// (interleave16, its own inverse), so word s of the 16-byte load holds the same four k. Sub-step m (0, 1)
// of the 64-code step feeds registers 2m and 2m + 1 to one mma.sync m16n8k32. Unsigned weight codes count
// every activation once more: the kernel subtracts the row sum of the codes, written by the quantizer.
ROBUQ_HD int64_t interleave16(int64_t k) { return (k & ~int64_t{15}) | ((k & 3) << 2) | ((k >> 2) & 3); }
ROBUQ_HD uint32_t ternary_word_u8x4(uint32_t w, int s) { return (w >> (2 * s)) & 0x03030303u; }
// A fragment of sub-step m from the 16-byte loads of rows g (lo) and g + 8 (hi).
ROBUQ_HD void fast_a_frag(const uint32_t lo[4], const uint32_t hi[4], int m, uint32_t a[4]) {
  a[0] = lo[2 * m];
  a[1] = hi[2 * m];
  a[2] = lo[2 * m + 1];
  a[3] = hi[2 * m + 1];
}
ROBUQ_HD void fast_b_frag(uint32_t w, int m, uint32_t b[2]) {
  b[0] = ternary_word_u8x4(w, 2 * m);
  b[1] = ternary_word_u8x4(w, 2 * m + 1);
}

}  // namespace host_device
}  // namespace robuq
