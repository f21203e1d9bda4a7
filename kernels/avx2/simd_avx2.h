// Inline AVX2 helpers shared by the avx2 kernels (include only from kernels/avx2/*.cpp).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace robuq {
namespace avx2 {
namespace simd {

// sum_k v_k in float64 over 8 interleaved lanes (element k in lane k % 8, k ascending within a lane),
// merged as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)); v_k = x_k, or (x_k - m)^2 with kSquare.
// The order of ref::clip_range's statistics and of ops::layernorm_modulate.
// lane_sums: that sum for R rows at once (row r: x[r], m[r] -> out[r]); each row's lanes add in the same order
// as alone, so the bits are the same, while the R rows' dependency chains (one float64 add per lane and step)
// overlap.
template <bool kSquare, int R>
inline void lane_sums(const float* const* x, int64_t n, const double* m, double* out) {
  __m256d s0[R], s1[R], vm[R];
  for (int r = 0; r < R; ++r) {
    s0[r] = _mm256_setzero_pd();
    s1[r] = _mm256_setzero_pd();
    vm[r] = _mm256_set1_pd(m[r]);
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int r = 0; r < R; ++r) {
      const __m256 v = _mm256_loadu_ps(x[r] + i);
      __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
      __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      if (kSquare) {
        d0 = _mm256_sub_pd(d0, vm[r]);
        d1 = _mm256_sub_pd(d1, vm[r]);
        d0 = _mm256_mul_pd(d0, d0);
        d1 = _mm256_mul_pd(d1, d1);
      }
      s0[r] = _mm256_add_pd(s0[r], d0);
      s1[r] = _mm256_add_pd(s1[r], d1);
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) double l[8];
    _mm256_store_pd(l, s0[r]);
    _mm256_store_pd(l + 4, s1[r]);
    for (int64_t k = i; k < n; ++k) {
      double v = static_cast<double>(x[r][k]);
      if (kSquare) {
        v = v - m[r];
        v = v * v;
      }
      l[k % 8] += v;
    }
    out[r] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  }
}

template <bool kSquare>
inline double lane_sum(const float* x, int64_t n, double m) {
  double out;
  lane_sums<kSquare, 1>(&x, n, &m, &out);
  return out;
}

// 8 float lanes merged as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
inline float pairwise_sum8(__m256 v) {
  alignas(32) float l[8];
  _mm256_store_ps(l, v);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// pairwise_sum8 of four vectors at once, [sum(a), sum(b), sum(c), sum(d)]: vhaddps forms the same pairs
// (l0 + l1, l2 + l3, ...), then their sums, then (l0..3) + (l4..7): the same additions, so the same bits.
inline __m128 pairwise_sum8x4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 q = _mm256_hadd_ps(ab, cd);  // a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567
  return _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
}

// exp(x): n = round(x log2 e), r = x - n ln2 (two fused steps, ln2 split in a high and a low part), e^r by
// Cephes' degree-6 polynomial, times 2^n: one float multiply, so exactly one rounding (only where the result is
// subnormal). 0 below ln(FLT_MIN), +inf above ln(FLT_MAX), NaN for NaN.
// exp256_poly: e^r and n (as int32) for an argument in [-88, 88.75].
inline __m256 exp256_poly(__m256 xc, __m256i* ni) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  *ni = _mm256_cvtps_epi32(n);
  return _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
}

// 2^n as a float for n in [-126, 127] (a normal number: the exponent field n + 127).
inline __m256 pow2_normal(__m256i n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

inline __m256 exp256(__m256 x) {
  // Fast path, every lane in [lo, hi] (ordered compares: no NaN): there n = round(x log2 e) lies in
  // [-126, 127], so 2^n is a normal float and y * 2^n rounds once. Above hi (n = 128 from x ~ 88.376 on) the
  // factor is applied as 2^(n/2) * 2^(n - n/2): the first product is exact (e^r in [0.7, 1.5]), so the second
  // rounds once to the same value; lanes outside [lo, 88.72] are set by the blends. GELU's and softmax's
  // arguments nearly always take the fast path. Checked for all 2^32 inputs against the two-factor form on
  // every lane (the single factor up to 88.376; a fast path up to 88.5 differs on 16,218 inputs).
  const __m256 lo = _mm256_set1_ps(-87.33654475f), hi = _mm256_set1_ps(88.37f);
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), _mm256_cmp_ps(x, hi, _CMP_LE_OQ));
  __m256i ni;
  if (_mm256_movemask_ps(in) == 0xFF) {
    const __m256 y = exp256_poly(x, &ni);
    return _mm256_mul_ps(y, pow2_normal(ni));
  }
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.0f)), _mm256_set1_ps(88.75f));
  __m256 y = exp256_poly(xc, &ni);
  const __m256i na = _mm256_srai_epi32(ni, 1);
  y = _mm256_mul_ps(_mm256_mul_ps(y, pow2_normal(na)), pow2_normal(_mm256_sub_epi32(ni, na)));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283906f), _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// GELU (tanh approximation) of 8 floats as x / (1 + exp(-2 u)), u = sqrt(2/pi) (x + 0.044715 x^3) in float32
// in that order: 0.5 x (1 + tanh(u)) without the cancellation of 1 + tanh(u) for x << 0. -2 u is formed as
// (-2 sqrt(2/pi)) s with s = x + 0.044715 x^3, one multiply instead of two: scaling by -2 is exact and commutes
// with rounding except where beta s is subnormal, and there exp gives 1 for either value (checked for all 2^32
// inputs against the two-multiply form).
inline __m256 gelu8(__m256 v) {
  const __m256 m2beta = _mm256_set1_ps(static_cast<float>(-2.0 * 0.7978845608028654));
  const __m256 kappa = _mm256_set1_ps(0.044715f);
  const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
  const __m256 e = exp256(_mm256_mul_ps(m2beta, _mm256_add_ps(v, _mm256_mul_ps(kappa, v3))));
  return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

}  // namespace simd
}  // namespace avx2
}  // namespace robuq
