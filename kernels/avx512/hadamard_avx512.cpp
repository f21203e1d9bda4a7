// AVX-512 Hadamard transform and per-token quantization of one row, bit-identical to the reference tier (and so
// to the avx2 tier, kernels/avx2/hadamard_quant_avx2.cpp).
//
// Hadamard: the
// avx2 kernels' mapping of every reference operation onto vectors (kernels/avx2/hadamard_quant_avx2.cpp), 16
// floats wide:
//  * butterflies: stages h = 1, 2, 4, 8 inside a vector (lane permutation p of v, then p + (v ^ sign): u + v in
//    the lower and u - v == u + (-v) in the upper lane of each pair), stages h >= 16 pair whole vectors;
//  * K x K step: Y[c, b..b+16) = sum_a H_K[a, c] X[a, b..b+16), a ascending, first term +-X[0], then
//    y + (x ^ sign); up to 18 outputs c per pass in registers; then the product with the float32 normaliser.
// Quantization (avx2::quantize_row's operations): min / max per lane (a zero result takes the sign of the row's
// first zero, as the sequential scan does), the "gauss" statistics in float64 over the reference's 8 interleaved
// lanes (one 8-double vector), then (x - lo) / scale, round to nearest even, clamp, to bytes.
#include "avx512_common.h"  // first

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../hadamard_signs.h"
#include "robuq/avx512.h"
#include "robuq/constants.h"
#include "robuq/hadamard.h"
#include "robuq/quant.h"

namespace robuq {
namespace {

inline __m512 sign_lanes(int bit) {
  alignas(64) float s[16];
  for (int i = 0; i < 16; ++i) s[i] = (i & bit) ? -0.0f : 0.0f;
  return _mm512_load_ps(s);
}

inline __m512 xorps(__m512 a, __m512 b) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}

// Butterfly stages h = 1, 2, 4, 8 inside one vector.
inline __m512 butterfly16(__m512 v, __m512 s1, __m512 s2, __m512 s4, __m512 s8) {
  // p + v * (+-1): one rounding of p + (+-v), as p + (v ^ sign) is (one fused instruction instead of two)
  v = _mm512_fmadd_ps(v, s1, _mm512_permute_ps(v, 0xB1));           // lanes [1, 0, 3, 2, ...]
  v = _mm512_fmadd_ps(v, s2, _mm512_permute_ps(v, 0x4E));           // lanes [2, 3, 0, 1, ...]
  v = _mm512_fmadd_ps(v, s4, _mm512_shuffle_f32x4(v, v, 0xB1));     // 128-bit blocks [1, 0, 3, 2]
  return _mm512_fmadd_ps(v, s8, _mm512_shuffle_f32x4(v, v, 0x4E));  // 128-bit blocks [2, 3, 0, 1]
}

// All stages of one segment of NV vectors (M = 16 NV floats) in registers: the stages h >= 16 pair vectors
// i and i + h / 16 in the same order as the pass-per-stage loop below.
template <int NV>
void butterflies_regs(const float* src, float* dst, int64_t n, __m512 s1, __m512 s2, __m512 s4, __m512 s8) {
  for (int64_t i = 0; i < n; i += 16 * NV) {
    __m512 v[NV];
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) v[k] = butterfly16(_mm512_loadu_ps(src + i + 16 * k), s1, s2, s4, s8);
#pragma GCC unroll 4
    for (int h = 1; h < NV; h *= 2)
#pragma GCC unroll 16
      for (int k = 0; k < NV; ++k)
        if ((k & h) == 0) {
          const __m512 u = v[k], w = v[k + h];
          v[k] = _mm512_add_ps(u, w);
          v[k + h] = _mm512_sub_ps(u, w);
        }
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) _mm512_storeu_ps(dst + i + 16 * k, v[k]);
  }
}

// dst = Walsh-Hadamard butterflies of src over consecutive segments of M floats (M a power of two >= 16, n a
// multiple of M). src may equal dst.
void butterflies(const float* src, float* dst, int64_t n, int64_t M) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 s1 = xorps(one, sign_lanes(1)), s2 = xorps(one, sign_lanes(2)), s4 = xorps(one, sign_lanes(4));
  const __m512 s8 = xorps(one, sign_lanes(8));
  switch (M) {  // segments of up to 16 vectors stay in registers (XL/2: 32 and 128 floats)
    case 16: butterflies_regs<1>(src, dst, n, s1, s2, s4, s8); return;
    case 32: butterflies_regs<2>(src, dst, n, s1, s2, s4, s8); return;
    case 64: butterflies_regs<4>(src, dst, n, s1, s2, s4, s8); return;
    case 128: butterflies_regs<8>(src, dst, n, s1, s2, s4, s8); return;
    case 256: butterflies_regs<16>(src, dst, n, s1, s2, s4, s8); return;
    default: break;
  }
  for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(dst + i, butterfly16(_mm512_loadu_ps(src + i), s1, s2, s4, s8));
  for (int64_t h = 16; h < M; h *= 2)
    for (int64_t start = 0; start < n; start += 2 * h)
      for (int64_t i = start; i < start + h; i += 16) {
        const __m512 u = _mm512_loadu_ps(dst + i);
        const __m512 v = _mm512_loadu_ps(dst + i + h);
        _mm512_storeu_ps(dst + i, _mm512_add_ps(u, v));
        _mm512_storeu_ps(dst + i + h, _mm512_sub_ps(u, v));
      }
}

void scale_row(float* x, int64_t n, float norm) {
  const __m512 vn = _mm512_set1_ps(norm);
  for (int64_t i = 0; i < n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vn));
}

// Y[c, :] = norm * sum_a H_K[a, c] X[a, :] for c = c0 .. c0 + NC - 1; sgn[a * K + c] = +0.0f or -0.0f.
template <int NC>
void kxk_group(const float* X, int64_t M, int64_t K, const float* sgn, int64_t c0, float norm, float* Y) {
  const __m512 vn = _mm512_set1_ps(norm);
  for (int64_t b = 0; b < M; b += 16) {
    __m512 acc[NC];
    const __m512 x0 = _mm512_loadu_ps(X + b);
#pragma GCC unroll 18
    for (int j = 0; j < NC; ++j) acc[j] = xorps(x0, _mm512_set1_ps(sgn[c0 + j]));
    for (int64_t a = 1; a < K; ++a) {
      const __m512 x = _mm512_loadu_ps(X + a * M + b);
      const float* s = sgn + a * K + c0;
#pragma GCC unroll 18
      for (int j = 0; j < NC; ++j) acc[j] = _mm512_add_ps(acc[j], xorps(x, _mm512_set1_ps(s[j])));
    }
#pragma GCC unroll 18
    for (int j = 0; j < NC; ++j) _mm512_storeu_ps(Y + (c0 + j) * M + b, _mm512_mul_ps(acc[j], vn));
  }
}

// ---- K x K step with the signs known at compile time (the K of DiT's widths: 12 and 36)
// Each term y + (+-x) is one rounding of the exact sum, whichever instruction computes it: vaddps / vsubps, or
// vfmadd / vfnmadd with x * 1.0 (exact). Zen 4 runs float adds and fused multiply-adds on different pipes, so
// half the outputs of a pass take the add form and half the fma form: about 1.7 terms per cycle instead of the
// 0.7 of the sign-xor-then-add form, with the same bits.
template <bool Neg, bool Fma>
inline __attribute__((always_inline)) __m512 term(__m512 acc, __m512 x, __m512 one) {
  if (Fma) return Neg ? _mm512_fnmadd_ps(x, one, acc) : _mm512_fmadd_ps(x, one, acc);
  return Neg ? _mm512_sub_ps(acc, x) : _mm512_add_ps(acc, x);
}

// Keeps the N accumulators of a pass in registers from one row to the next: an empty asm that takes them as
// register operands. Without it GCC 12 interleaved the rows' chains and spilled accumulators to the stack (112
// stack references per 630 terms of a 36-row pass). scripts/emulate_avx512.sh compiles this file against
// emulated vectors, which are not registers: there the pin is left out (it changes no value either way).
template <int N>
inline __attribute__((always_inline)) void pin(__m512* a) {
#ifndef ROBUQ_SIMDE_SHIM
  static_assert(N == 12 || N == 18, "pinned as 12 or 18 registers");
  if constexpr (N == 12) {
    __asm__(""
            : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]), "+v"(a[6]), "+v"(a[7]),
              "+v"(a[8]), "+v"(a[9]), "+v"(a[10]), "+v"(a[11]));
  } else {
    // (two statements: an asm takes at most 30 operands, and each in-out one counts twice)
    __asm__(""
            : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]), "+v"(a[6]), "+v"(a[7]),
              "+v"(a[8]));
    __asm__(""
            : "+v"(a[9]), "+v"(a[10]), "+v"(a[11]), "+v"(a[12]), "+v"(a[13]), "+v"(a[14]), "+v"(a[15]), "+v"(a[16]),
              "+v"(a[17]));
  }
#else
  (void)a;
#endif
}

// One row a = A of a pass's terms. M is the segment length, an int64_t or, for DiT's widths (M = 32 .. 256), a
// std::integral_constant, so that every row is a constant displacement from one pointer (a run-time M left
// GCC 35 row pointers to keep on the stack). Which instruction computes which term depends on neither, so
// neither changes the bits.
template <int K, int C0, int A, class Mt, int... J>
inline __attribute__((always_inline)) void kxk_row(const float* xb, Mt M, __m512* acc, __m512 one,
                                                   std::integer_sequence<int, J...>) {
  const __m512 x = _mm512_loadu_ps(xb + A * M);
  ((acc[J] = term<(c_hadamard(K, A, C0 + J) < 0), (J & 1) != 0>(acc[J], x, one)), ...);
  pin<sizeof...(J)>(acc);
}

template <int K, int C0, int NC, class Mt, int... A>
inline __attribute__((always_inline)) void kxk_rows(const float* xb, Mt M, __m512* acc, __m512 one,
                                                    std::integer_sequence<int, A...>) {
  (kxk_row<K, C0, A + 1>(xb, M, acc, one, std::make_integer_sequence<int, NC>{}), ...);
}

template <int K, int C0, int... J>
inline __attribute__((always_inline)) void kxk_first(const float* X, __m512* acc, __m512 neg0,
                                                     std::integer_sequence<int, J...>) {
  const __m512 x0 = _mm512_loadu_ps(X);
  ((acc[J] = c_hadamard(K, 0, C0 + J) < 0 ? xorps(x0, neg0) : x0), ...);
}

// Y[c, :] = norm * sum_a H_K[a, c] X[a, :] for c = C0 .. C0 + NC - 1, a ascending (the reference's order).
template <int K, int C0, int NC, class Mt>
void kxk_fixed_group(const float* X, Mt M, float norm, float* Y) {
  const __m512 vn = _mm512_set1_ps(norm), one = _mm512_set1_ps(1.0f), neg0 = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < M; b += 16) {
    __m512 acc[NC];
    kxk_first<K, C0>(X + b, acc, neg0, std::make_integer_sequence<int, NC>{});
    kxk_rows<K, C0, NC>(X + b, M, acc, one, std::make_integer_sequence<int, K - 1>{});
#pragma GCC unroll 18
    for (int j = 0; j < NC; ++j) _mm512_storeu_ps(Y + (C0 + j) * M + b, _mm512_mul_ps(acc[j], vn));
  }
}

// The passes of one K (NC outputs each) for one M, compile-time where DiT's widths put it.
template <int K, int NC, int... G>
void kxk_fixed_passes(const float* X, int64_t M, float norm, float* Y, std::integer_sequence<int, G...>) {
  static_assert(K % NC == 0, "whole passes");
  switch (M) {
    case 32: (kxk_fixed_group<K, G * NC, NC>(X, std::integral_constant<int64_t, 32>{}, norm, Y), ...); return;
    case 64: (kxk_fixed_group<K, G * NC, NC>(X, std::integral_constant<int64_t, 64>{}, norm, Y), ...); return;
    case 128: (kxk_fixed_group<K, G * NC, NC>(X, std::integral_constant<int64_t, 128>{}, norm, Y), ...); return;
    case 256: (kxk_fixed_group<K, G * NC, NC>(X, std::integral_constant<int64_t, 256>{}, norm, Y), ...); return;
    default: (kxk_fixed_group<K, G * NC, NC>(X, M, norm, Y), ...);
  }
}

// The K x K step for K = 12 or 36 with compile-time signs; false for other K.
bool kxk_fixed(const float* X, int64_t M, int64_t K, const float* sgn, float norm, float* Y) {
  if (K == 36) {
    static const bool ok = fixed_signs_match<36>(sgn);
    if (!ok) return false;
    kxk_fixed_passes<36, 18>(X, M, norm, Y, std::make_integer_sequence<int, 2>{});
    return true;
  }
  if (K == 12) {
    static const bool ok = fixed_signs_match<12>(sgn);
    if (!ok) return false;
    kxk_fixed_passes<12, 12>(X, M, norm, Y, std::make_integer_sequence<int, 1>{});
    return true;
  }
  return false;
}

constexpr int kMaxGroup = 18;  // outputs c per pass: 18 accumulators + x + temporaries in 32 registers

void kxk(const float* X, int64_t M, int64_t K, const float* sgn, float norm, float* Y) {
  using Fn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float, float*);
  static constexpr Fn fns[kMaxGroup] = {kxk_group<1>,  kxk_group<2>,  kxk_group<3>,  kxk_group<4>,  kxk_group<5>,
                                        kxk_group<6>,  kxk_group<7>,  kxk_group<8>,  kxk_group<9>,  kxk_group<10>,
                                        kxk_group<11>, kxk_group<12>, kxk_group<13>, kxk_group<14>, kxk_group<15>,
                                        kxk_group<16>, kxk_group<17>, kxk_group<18>};
  // equal groups (36 = 2 x 18, 20 = 2 x 10, ...): as few passes as the registers allow
  const int64_t passes = (K + kMaxGroup - 1) / kMaxGroup, per = (K + passes - 1) / passes;
  for (int64_t c0 = 0; c0 < K; c0 += per) {
    const int64_t nc = K - c0 < per ? K - c0 : per;
    fns[nc - 1](X, M, K, sgn, c0, norm, Y);
  }
}

float first_zero(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (x[i] == 0.0f) return x[i];
  return 0.0f;
}

void min_max(const float* x, int64_t n, float* mn_out, float* mx_out) {
  // Four independent chains (one is latency-bound): min / max are exact, so the order changes nothing but the
  // sign of a zero result, which first_zero sets below; a NaN x[0] stays in every chain, as in one.
  __m512 vmn = _mm512_set1_ps(x[0]), vmx = vmn, mn1 = vmn, mx1 = vmn, mn2 = vmn, mx2 = vmn, mn3 = vmn, mx3 = vmn;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
    const __m512 v2 = _mm512_loadu_ps(x + i + 32), v3 = _mm512_loadu_ps(x + i + 48);
    vmn = _mm512_min_ps(v0, vmn);  // v < m ? v : m  (std::min(m, v))
    vmx = _mm512_max_ps(v0, vmx);  // v > m ? v : m  (std::max(m, v))
    mn1 = _mm512_min_ps(v1, mn1);
    mx1 = _mm512_max_ps(v1, mx1);
    mn2 = _mm512_min_ps(v2, mn2);
    mx2 = _mm512_max_ps(v2, mx2);
    mn3 = _mm512_min_ps(v3, mn3);
    mx3 = _mm512_max_ps(v3, mx3);
  }
  vmn = _mm512_min_ps(_mm512_min_ps(mn1, vmn), _mm512_min_ps(mn3, mn2));
  vmx = _mm512_max_ps(_mm512_max_ps(mx1, vmx), _mm512_max_ps(mx3, mx2));
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    vmn = _mm512_min_ps(v, vmn);
    vmx = _mm512_max_ps(v, vmx);
  }
  // The lanes' minimum / maximum as a tree (4 dependent steps instead of 15): min / max of non-NaN values are
  // exact in any order, and a lane holds NaN only when x[0] is NaN, in which case every lane does (vminps keeps
  // its second operand, the chain, when either is NaN), so the result is the lane-by-lane scan's.
  float mn = _mm512_reduce_min_ps(vmn), mx = _mm512_reduce_max_ps(vmx);
  for (; i < n; ++i) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
  }
  if (mn == 0.0f) mn = first_zero(x, n);
  if (mx == 0.0f) mx = first_zero(x, n);
  *mn_out = mn;
  *mx_out = mx;
}

// sum_k v_k in float64 over 8 interleaved lanes merged pairwise (simd::lane_sum's order); v_k = x_k, or
// (x_k - m)^2 with square. R rows at once (out[r] for x[r], m[r]): the same operations per row, R independent
// dependency chains (one row's chain of n / 8 float64 additions is latency-bound).
template <int R>
void lane_sums(const float* const* x, int64_t n, const double* m, bool square, double* out) {
  __m512d s[R], vm[R];
  for (int r = 0; r < R; ++r) {
    s[r] = _mm512_setzero_pd();
    vm[r] = _mm512_set1_pd(m[r]);
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int r = 0; r < R; ++r) {
      __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(x[r] + i));
      if (square) {
        d = _mm512_sub_pd(d, vm[r]);
        d = _mm512_mul_pd(d, d);
      }
      s[r] = _mm512_add_pd(s[r], d);
    }
  for (int r = 0; r < R; ++r) {
    alignas(64) double l[8];
    _mm512_store_pd(l, s[r]);
    for (int64_t k = i; k < n; ++k) {
      double v = static_cast<double>(x[r][k]);
      if (square) {
        v = v - m[r];
        v = v * v;
      }
      l[k % 8] += v;
    }
    out[r] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  }
}

// The clipped range from the row's min / max, mean and sum of squares (the reference's float64 steps).
void clip_range(double m, double ss, int64_t n, float clip_k, float* lo, float* hi) {
  const double sigma = std::sqrt(ss / static_cast<double>(n));
  const double ks = static_cast<double>(clip_k) * sigma;
  const double mn = static_cast<double>(*lo), mx = static_cast<double>(*hi);
  const double l = m - ks, h = m + ks;
  *lo = static_cast<float>(mn < l ? l : mn);  // std::max(mn, m - ks)
  *hi = static_cast<float>(h < mx ? h : mx);  // std::min(mx, m + ks)
}

// The code of t = (x - lo) / scale: clamp(round(t), 0, qmax), NaN -> 0 like the reference.
inline void store_codes(__m512 t, __m512 vq, __mmask16 m, uint8_t* codes) {
  __m512 q = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm512_max_ps(q, _mm512_setzero_ps());  // q > 0 ? q : 0, so NaN -> 0 like the reference
  q = _mm512_min_ps(q, vq);
  _mm_mask_storeu_epi8(codes, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
}

// Intel cores divide zmm floats at one per ~10 cycles (2-core Xeon VM, 2026-12-06), AMD Zen 4 at about twice
// that rate; write_codes replaces the division by a multiply and one correction on Intel only (on Zen 4 that
// form measured 7.3 against 6.3 cycles per 16 values). Both give the same codes.
bool division_is_slow() {
  static const bool slow = __builtin_cpu_is("intel");
  return slow;
}

// codes = clamp(round((x - lo) / scale), 0, 2^bits - 1) with the reference's scale and zero point
void write_codes(const float* x, int64_t n, int bits, float lo, float hi, uint8_t* codes, float* scale, float* zero) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float range = hi - lo;
  const float s = (range < kScaleEps ? kScaleEps : range) / qmax;  // std::max(hi - lo, kScaleEps)
  const __m512 vlo = _mm512_set1_ps(lo), vs = _mm512_set1_ps(s), vq = _mm512_set1_ps(qmax);
  // Markstein: with r = RN(1 / s) (a normal number) and q0 = RN(d r) within an ulp of d / s, the remainder
  // d - q0 s is exact in one fma and RN(q0 + rem r) = RN(d / s), the division's own result, as long as nothing
  // underflows; where it does (|d| near 2^-126) |d / s| < 2^-90 and both give code 0, and non-finite q0 (x
  // infinite or NaN, or d / s overflowing) is taken as it is, as the division gives it. A loop test: 3e9 random
  // pairs over 2^-40 <= s <= 2^40 and codes 0..255 at their rounding boundaries gave the division's codes.
  const float r = 1.0f / s;
  if (division_is_slow() && std::isnormal(r) && s < 0x1p125f) {
    const __m512 vr = _mm512_set1_ps(r), inf = _mm512_set1_ps(__builtin_inff());
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = i + 16 <= n ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vlo);
      const __m512 q0 = _mm512_mul_ps(d, vr);
      const __m512 t = _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, vs, d), vr, q0);
      const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(q0), inf, _CMP_LT_OQ);
      store_codes(_mm512_mask_mov_ps(q0, finite, t), vq, m, codes + i);
    }
  } else {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = i + 16 <= n ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
      store_codes(_mm512_div_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vlo), vs), vq, m, codes + i);
    }
  }
  *scale = s;
  *zero = -lo / s;
}

// quantize_row of R rows: scale[r], zero[r] for x[r]; their float64 statistics run as R interleaved chains.
template <int R>
void quantize_rows(const float* const* x, int64_t n, int bits, float clip_k, uint8_t* const* codes, float* scale,
                   float* zero) {
  float lo[R], hi[R];
  for (int r = 0; r < R; ++r) min_max(x[r], n, &lo[r], &hi[r]);
  if (clip_k > 0.0f) {
    const double zeros[R] = {};
    double m[R], ss[R];
    lane_sums<R>(x, n, zeros, false, m);
    for (int r = 0; r < R; ++r) m[r] /= static_cast<double>(n);
    lane_sums<R>(x, n, m, true, ss);
    for (int r = 0; r < R; ++r) clip_range(m[r], ss[r], n, clip_k, &lo[r], &hi[r]);
  }
  for (int r = 0; r < R; ++r) write_codes(x[r], n, bits, lo[r], hi[r], codes[r], scale + r, zero + r);
}

// avx2::layernorm_modulate_rows' operations on R rows at once: the float64 mean and variance as lane_sums' R
// interleaved chains (one row's chain is latency-bound), then y = ((x - m) * rstd) * (1 + scale) + shift per
// element, 16 wide.
template <int R>
void ln_modulate_rows(const float* const* x, int64_t D, const float* const* shift, const float* const* scale,
                      float* const* y) {
  const double zeros[R] = {};
  double mean[R], var[R];
  lane_sums<R>(x, D, zeros, false, mean);
  for (int r = 0; r < R; ++r) mean[r] /= static_cast<double>(D);
  lane_sums<R>(x, D, mean, true, var);
  for (int r = 0; r < R; ++r) {
    const double v = var[r] / static_cast<double>(D);
    const float rstd = static_cast<float>(1.0 / std::sqrt(v + static_cast<double>(kLayerNormEps)));
    const float m = static_cast<float>(mean[r]);
    const __m512 vm = _mm512_set1_ps(m), vr = _mm512_set1_ps(rstd), one = _mm512_set1_ps(1.0f);
    const float *xr = x[r], *sh = shift[r], *sc = scale[r];
    float* yr = y[r];
    for (int64_t k = 0; k < D; k += 16) {
      const __mmask16 mk = k + 16 <= D ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (D - k)) - 1);
      const __m512 a = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, xr + k), vm), vr);
      const __m512 b = _mm512_mul_ps(a, _mm512_add_ps(one, _mm512_maskz_loadu_ps(mk, sc + k)));
      _mm512_mask_storeu_ps(yr + k, mk, _mm512_add_ps(b, _mm512_maskz_loadu_ps(mk, sh + k)));
    }
  }
}

}  // namespace

namespace avx512 {

void layernorm_modulate_rows(int count, const float* const* x, int64_t D, const float* const* shift,
                             const float* const* scale, float* const* y) {
  switch (count) {
    case 4: ln_modulate_rows<4>(x, D, shift, scale, y); break;
    case 3: ln_modulate_rows<3>(x, D, shift, scale, y); break;
    case 2: ln_modulate_rows<2>(x, D, shift, scale, y); break;
    default: ln_modulate_rows<1>(x, D, shift, scale, y); break;
  }
}

void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero) {
  quantize_rows<1>(&x, n, bits, clip_k, &codes, scale, zero);
}

void quantize_rows2(const float* x0, const float* x1, int64_t n, int bits, float clip_k, uint8_t* codes0,
                    uint8_t* codes1, float* scale, float* zero) {
  const float* const x[2] = {x0, x1};
  uint8_t* const codes[2] = {codes0, codes1};
  quantize_rows<2>(x, n, bits, clip_k, codes, scale, zero);
}

bool hadamard_row(const HadamardPlan& p, const float* sgn, const float* x, float* rot, float* scratch) {
  const int64_t n = p.n;
  if (p.form == HadamardForm::Full && p.K > 1 && p.M >= 16) {
    butterflies(x, scratch, n, p.M);
    if (!kxk_fixed(scratch, p.M, p.K, sgn, p.norm, rot)) kxk(scratch, p.M, p.K, sgn, p.norm, rot);
    return true;
  }
  const int64_t seg = p.form == HadamardForm::Block ? p.block : p.form == HadamardForm::Full ? p.M : 0;
  if (seg >= 16 && (p.form == HadamardForm::Block || p.K == 1)) {
    butterflies(x, rot, n, seg);
    scale_row(rot, n, p.norm);
    return true;
  }
  return false;
}

}  // namespace avx512
}  // namespace robuq
