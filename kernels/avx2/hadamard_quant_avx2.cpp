// AVX2 Hadamard transform and per-token quantization, bit-identical to the reference tier (kernels/ref/).
//
// How each reference step maps onto vectors, with the same IEEE operations on the same operands:
//  * butterflies: stages h = 1, 2, 4 inside an 8-float vector (a lane permutation p of the vector v, then
//    p + (v ^ sign) = u + v in the lower and u - v in the upper lane of each pair, since u - v == u + (-v)
//    and addition commutes); stages h >= 8 pair whole vectors.
//  * K x K step: Y[c, b..b+8) = sum_a H_K[a, c] X[a, b..b+8), a ascending, the first term +-X[0] and every
//    further one y + (x ^ sign) (== y + x or y - x), up to 12 outputs c per pass kept in registers; then the
//    product with the float32 normaliser. For K = 12 and 36 (DiT's widths) the signs are compile-time constants
//    and each term is one instruction, y + x / y - x as vaddps / vsubps for half the outputs and as
//    vfmadd / vfnmadd with x * 1.0 (exact) for the other half: the same rounding of the exact sum, on the
//    add and the fma pipes at once.
//  * statistics: min / max per lane (vminps(x, m) is the reference's std::min(m, x)); the lanes are merged,
//    and a zero result takes the sign of the first zero of the row, which is what the sequential scan keeps.
//    The float64 sums are the reference's 8 interleaved lanes: two 4-wide double vectors.
//  * quantization: (x - lo) / scale with vdivps, vroundps to nearest even, clamp, pack to bytes.
// Widths whose butterfly segments are shorter than 8 floats run the reference code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../hadamard_signs.h"
#include "robuq/avx2.h"
#include "robuq/constants.h"
#include "simd_avx2.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace robuq {
namespace avx2 {
namespace {

inline __m256 sign_lanes(int bit) {
  const float n = -0.0f;
  return _mm256_setr_ps((0 & bit) ? n : 0.0f, (1 & bit) ? n : 0.0f, (2 & bit) ? n : 0.0f, (3 & bit) ? n : 0.0f,
                        (4 & bit) ? n : 0.0f, (5 & bit) ? n : 0.0f, (6 & bit) ? n : 0.0f, (7 & bit) ? n : 0.0f);
}

// Butterfly stages h = 1, 2, 4 of one vector.
inline __m256 butterfly8(__m256 v, __m256 s1, __m256 s2, __m256 s4) {
  v = _mm256_add_ps(_mm256_permute_ps(v, 0xB1), _mm256_xor_ps(v, s1));  // lanes [1, 0, 3, 2, ...]
  v = _mm256_add_ps(_mm256_permute_ps(v, 0x4E), _mm256_xor_ps(v, s2));  // lanes [2, 3, 0, 1, ...]
  return _mm256_add_ps(_mm256_permute2f128_ps(v, v, 1), _mm256_xor_ps(v, s4));
}

// Stages h = 8 .. 4V of V consecutive vectors held in registers (vector i pairs with i + h / 8).
template <int V>
inline __attribute__((always_inline)) void stages_in_registers(__m256* v) {
  for (int hv = 1; hv < V; hv *= 2)
    for (int i = 0; i < V; ++i)
      if ((i & hv) == 0) {
        const __m256 u = v[i], w = v[i + hv];
        v[i] = _mm256_add_ps(u, w);
        v[i + hv] = _mm256_sub_ps(u, w);
      }
}

// Pass 1: blocks of V vectors (8V floats, V <= 8): stages h = 1, 2, 4 in each vector, then h = 8 .. 4V in
// registers, one load and one store per vector.
template <int V>
void butterflies_first(const float* src, float* dst, int64_t n) {
  const __m256 s1 = sign_lanes(1), s2 = sign_lanes(2), s4 = sign_lanes(4);
  for (int64_t i = 0; i < n; i += 8 * V) {
    __m256 v[V];
    for (int j = 0; j < V; ++j) v[j] = butterfly8(_mm256_loadu_ps(src + i + 8 * j), s1, s2, s4);
    stages_in_registers<V>(v);
    for (int j = 0; j < V; ++j) _mm256_storeu_ps(dst + i + 8 * j, v[j]);
  }
}

// dst = Walsh-Hadamard butterflies of src over consecutive segments of M floats (M a power of two >= 8,
// n a multiple of M). src may equal dst. Stages up to h = 32 run in registers in one pass (butterflies_first);
// the later ones two at a time (h and 2h: the four vectors i, i + h, i + 2h, i + 3h) where two remain, else
// one. Every value goes through the same additions and subtractions as in one pass per stage, so the
// result is the same bit for bit.
void butterflies(const float* src, float* dst, int64_t n, int64_t M) {
  switch (M) {
    case 8: butterflies_first<1>(src, dst, n); return;
    case 16: butterflies_first<2>(src, dst, n); return;
    case 32: butterflies_first<4>(src, dst, n); return;
    default: butterflies_first<8>(src, dst, n);
  }
  int64_t h = 64;
  for (; 2 * h < M; h *= 4)
    for (int64_t start = 0; start < n; start += 4 * h)
      for (int64_t i = start; i < start + h; i += 8) {
        __m256 v[4] = {_mm256_loadu_ps(dst + i), _mm256_loadu_ps(dst + i + h), _mm256_loadu_ps(dst + i + 2 * h),
                       _mm256_loadu_ps(dst + i + 3 * h)};
        stages_in_registers<4>(v);
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + i + j * h, v[j]);
      }
  for (; h < M; h *= 2)
    for (int64_t start = 0; start < n; start += 2 * h)
      for (int64_t i = start; i < start + h; i += 8) {
        const __m256 u = _mm256_loadu_ps(dst + i);
        const __m256 v = _mm256_loadu_ps(dst + i + h);
        _mm256_storeu_ps(dst + i, _mm256_add_ps(u, v));
        _mm256_storeu_ps(dst + i + h, _mm256_sub_ps(u, v));
      }
}

void scale_row(float* x, int64_t n, float norm) {
  const __m256 vn = _mm256_set1_ps(norm);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vn));
  for (; i < n; ++i) x[i] = x[i] * norm;
}

// Y[c, :] = norm * sum_a H_K[a, c] X[a, :] for c = c0 .. c0 + NC - 1; sgn[a * K + c] = +0.0f or -0.0f.
template <int NC>
void kxk_group(const float* X, int64_t M, int64_t K, const float* sgn, int64_t c0, float norm, float* Y) {
  const __m256 vn = _mm256_set1_ps(norm);
  for (int64_t b = 0; b < M; b += 8) {
    __m256 acc[NC];
    const __m256 x0 = _mm256_loadu_ps(X + b);
    for (int j = 0; j < NC; ++j) acc[j] = _mm256_xor_ps(x0, _mm256_broadcast_ss(sgn + c0 + j));
    for (int64_t a = 1; a < K; ++a) {
      const __m256 x = _mm256_loadu_ps(X + a * M + b);
      const float* s = sgn + a * K + c0;
      for (int j = 0; j < NC; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_xor_ps(x, _mm256_broadcast_ss(s + j)));
    }
    for (int j = 0; j < NC; ++j) _mm256_storeu_ps(Y + (c0 + j) * M + b, _mm256_mul_ps(acc[j], vn));
  }
}

constexpr int kMaxGroup = 12;  // outputs c per pass: 12 accumulators + x + a temporary in 16 registers

// ---- K x K step with compile-time signs (K = 12, 36): y + (+-x) as one add / sub or one fma / fnmadd by 1.0
template <bool Neg, bool Fma>
inline __attribute__((always_inline)) __m256 term(__m256 acc, __m256 x, __m256 one) {
  if (Fma) return Neg ? _mm256_fnmadd_ps(x, one, acc) : _mm256_fmadd_ps(x, one, acc);
  return Neg ? _mm256_sub_ps(acc, x) : _mm256_add_ps(acc, x);
}

// One row a = A of a group's terms. M is the segment length, either an int64_t or, for DiT's widths (M = 32
// .. 256), a std::integral_constant, so that every row is a constant displacement from one pointer. The empty
// asm after the row takes the 12 accumulators as register operands, so each row's terms are all done before
// the next row's load: without it GCC started the accumulators' chains at staggered rows, kept loaded rows
// (and, with a run-time M, the 36 row pointers) on the stack and spent more on moves and spills than on the
// terms. Which instruction computes which term does not depend on either, so neither do the bits.
template <int K, int C0, int A, class Mt, int... J>
inline __attribute__((always_inline)) void kxk_row(const float* xb, Mt M, __m256* acc, __m256 one,
                                                   std::integer_sequence<int, J...>) {
  const __m256 x = _mm256_loadu_ps(xb + A * M);
  ((acc[J] = term<(c_hadamard(K, A, C0 + J) < 0), (J & 1) != 0>(acc[J], x, one)), ...);
  static_assert(sizeof...(J) == 12, "pinned as 12 registers");
  __asm__(""
          : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(acc[4]), "+x"(acc[5]), "+x"(acc[6]),
            "+x"(acc[7]), "+x"(acc[8]), "+x"(acc[9]), "+x"(acc[10]), "+x"(acc[11]));
}

template <int K, int C0, int NC, class Mt, int... A>
inline __attribute__((always_inline)) void kxk_rows(const float* xb, Mt M, __m256* acc, __m256 one,
                                                    std::integer_sequence<int, A...>) {
  (kxk_row<K, C0, A + 1>(xb, M, acc, one, std::make_integer_sequence<int, NC>{}), ...);
}

template <int K, int C0, int... J>
inline __attribute__((always_inline)) void kxk_first(const float* X, __m256* acc, __m256 neg0,
                                                     std::integer_sequence<int, J...>) {
  const __m256 x0 = _mm256_loadu_ps(X);
  ((acc[J] = c_hadamard(K, 0, C0 + J) < 0 ? _mm256_xor_ps(x0, neg0) : x0), ...);
}

// Y[c, :] = norm * sum_a H_K[a, c] X[a, :] for c = C0 .. C0 + NC - 1, a ascending (the reference's order).
template <int K, int C0, int NC, class Mt>
void kxk_fixed_group(const float* X, Mt M, float norm, float* Y) {
  const __m256 vn = _mm256_set1_ps(norm), one = _mm256_set1_ps(1.0f), neg0 = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < M; b += 8) {
    __m256 acc[NC];
    kxk_first<K, C0>(X + b, acc, neg0, std::make_integer_sequence<int, NC>{});
    kxk_rows<K, C0, NC>(X + b, M, acc, one, std::make_integer_sequence<int, K - 1>{});
    for (int j = 0; j < NC; ++j) _mm256_storeu_ps(Y + (C0 + j) * M + b, _mm256_mul_ps(acc[j], vn));
  }
}

template <int K, class Mt, int... G>
void kxk_fixed_groups(const float* X, Mt M, float norm, float* Y, std::integer_sequence<int, G...>) {
  (kxk_fixed_group<K, G * kMaxGroup, kMaxGroup>(X, M, norm, Y), ...);
}

template <int K>
void kxk_fixed_k(const float* X, int64_t M, float norm, float* Y) {
  static_assert(K % kMaxGroup == 0, "whole groups of outputs");
  constexpr auto groups = std::make_integer_sequence<int, K / kMaxGroup>{};
  switch (M) {
    case 32: kxk_fixed_groups<K>(X, std::integral_constant<int64_t, 32>{}, norm, Y, groups); return;
    case 64: kxk_fixed_groups<K>(X, std::integral_constant<int64_t, 64>{}, norm, Y, groups); return;
    case 128: kxk_fixed_groups<K>(X, std::integral_constant<int64_t, 128>{}, norm, Y, groups); return;
    case 256: kxk_fixed_groups<K>(X, std::integral_constant<int64_t, 256>{}, norm, Y, groups); return;
    default: kxk_fixed_groups<K>(X, M, norm, Y, groups);
  }
}

// The K x K step for K = 12 or 36 with compile-time signs; false for other K (or a sign table that differs).
bool kxk_fixed(const float* X, int64_t M, int64_t K, const float* sgn, float norm, float* Y) {
  if (K == 36) {
    static const bool ok = fixed_signs_match<36>(sgn);
    if (!ok) return false;
    kxk_fixed_k<36>(X, M, norm, Y);
    return true;
  }
  if (K == 12) {
    static const bool ok = fixed_signs_match<12>(sgn);
    if (!ok) return false;
    kxk_fixed_k<12>(X, M, norm, Y);
    return true;
  }
  return false;
}

void kxk(const float* X, int64_t M, int64_t K, const float* sgn, float norm, float* Y) {
  if (kxk_fixed(X, M, K, sgn, norm, Y)) return;
  using Fn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float, float*);
  static constexpr Fn fns[kMaxGroup] = {kxk_group<1>, kxk_group<2>,  kxk_group<3>,  kxk_group<4>,
                                        kxk_group<5>, kxk_group<6>,  kxk_group<7>,  kxk_group<8>,
                                        kxk_group<9>, kxk_group<10>, kxk_group<11>, kxk_group<12>};
  for (int64_t c0 = 0; c0 < K; c0 += kMaxGroup) {
    const int64_t nc = std::min<int64_t>(kMaxGroup, K - c0);
    fns[nc - 1](X, M, K, sgn, c0, norm, Y);
  }
}

// Whether the vector path applies (butterfly segments of at least one vector).
bool vector_plan(const HadamardPlan& p) {
  if (p.form == HadamardForm::Block) return p.block >= 8;
  if (p.form == HadamardForm::Full) return p.M >= 8;
  return true;
}

std::vector<float> sign_table(const HadamardPlan& p) {
  std::vector<float> s;
  if (p.form == HadamardForm::Full && p.K > 1) {
    s.resize(static_cast<size_t>(p.K * p.K));
    for (size_t i = 0; i < s.size(); ++i) s[i] = p.base[i] > 0 ? 0.0f : -0.0f;
  }
  return s;
}

// rot = x @ H (x != rot). scratch: plan.scratch_size() floats; sgn: sign_table(plan).
void transform_into(const HadamardPlan& p, const float* sgn, const float* x, float* rot, float* scratch) {
  const int64_t n = p.n;
  if (p.form == HadamardForm::None) {
    std::memcpy(rot, x, sizeof(float) * static_cast<size_t>(n));
    return;
  }
  if (!vector_plan(p)) {
    std::memcpy(rot, x, sizeof(float) * static_cast<size_t>(n));
    ref::hadamard_transform_row(p, rot, scratch);
    return;
  }
  if (p.form == HadamardForm::Full && p.K > 1) {
    butterflies(x, scratch, n, p.M);
    kxk(scratch, p.M, p.K, sgn, p.norm, rot);
    return;
  }
  butterflies(x, rot, n, p.form == HadamardForm::Block ? p.block : p.M);
  scale_row(rot, n, p.norm);
}

// First element equal to zero (its sign is what a sequential min / max scan keeps).
float first_zero(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (x[i] == 0.0f) return x[i];
  return 0.0f;
}

void min_max(const float* x, int64_t n, float* mn_out, float* mx_out) {
  __m256 vmn = _mm256_set1_ps(x[0]), vmx = vmn;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    vmn = _mm256_min_ps(v, vmn);  // v < m ? v : m  (std::min(m, v))
    vmx = _mm256_max_ps(v, vmx);  // v > m ? v : m  (std::max(m, v))
  }
  alignas(32) float a[8], b[8];
  _mm256_store_ps(a, vmn);
  _mm256_store_ps(b, vmx);
  float mn = a[0], mx = b[0];
  for (int l = 1; l < 8; ++l) {
    mn = std::min(mn, a[l]);
    mx = std::max(mx, b[l]);
  }
  for (; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  if (mn == 0.0f) mn = first_zero(x, n);
  if (mx == 0.0f) mx = first_zero(x, n);
  *mn_out = mn;
  *mx_out = mx;
}

inline __m256i quantize8(const float* x, __m256 vlo, __m256 vs, __m256 vq) {
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x), vlo), vs);
  __m256 q = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  q = _mm256_max_ps(q, _mm256_setzero_ps());  // q > 0 ? q : 0, so NaN -> 0 like the reference
  q = _mm256_min_ps(q, vq);
  return _mm256_cvtps_epi32(q);
}

// codes[i] = clamp(round((x[i] - lo) / s), 0, qmax), the reference's float32 operations.
void quantize_codes(const float* x, int64_t n, float lo, float s, float qmax, uint8_t* codes) {
  const __m256 vlo = _mm256_set1_ps(lo), vs = _mm256_set1_ps(s), vq = _mm256_set1_ps(qmax);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i q0 = quantize8(x + i, vlo, vs, vq), q1 = quantize8(x + i + 8, vlo, vs, vq);
    const __m256i q2 = quantize8(x + i + 16, vlo, vs, vq), q3 = quantize8(x + i + 24, vlo, vs, vq);
    const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(q0, q1), _mm256_packus_epi32(q2, q3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), _mm256_permutevar8x32_epi32(b, order));
  }
  for (; i + 8 <= n; i += 8) {
    alignas(32) int32_t q[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), quantize8(x + i, vlo, vs, vq));
    for (int l = 0; l < 8; ++l) codes[i + l] = static_cast<uint8_t>(q[l]);
  }
  for (; i < n; ++i) {
    const float d = x[i] - lo;
    const float t = d / s;
    float q = std::nearbyint(t);
    if (!(q >= 0.0f)) q = 0.0f;
    if (q > qmax) q = qmax;
    codes[i] = static_cast<uint8_t>(q);
  }
}

}  // namespace

void hadamard_transform_row(const HadamardPlan& plan, float* row, float* scratch) {
  if (plan.form == HadamardForm::None) return;
  if (!vector_plan(plan)) {
    ref::hadamard_transform_row(plan, row, scratch);
    return;
  }
  const int64_t n = plan.n;
  if (plan.form == HadamardForm::Full && plan.K > 1) {
    const std::vector<float> sgn = sign_table(plan);
    butterflies(row, row, n, plan.M);
    kxk(row, plan.M, plan.K, sgn.data(), plan.norm, scratch);
    std::memcpy(row, scratch, sizeof(float) * static_cast<size_t>(n));
    return;
  }
  butterflies(row, row, n, plan.form == HadamardForm::Block ? plan.block : plan.M);
  scale_row(row, n, plan.norm);
}

namespace {

// The clipping range from a row's min / max, float64 mean m and sum of squared deviations ss (clip_k > 0).
ClipRange clip_from_stats(float mn, float mx, double m, double ss, int64_t n, float clip_k) {
  const double sigma = std::sqrt(ss / static_cast<double>(n));
  const double ks = static_cast<double>(clip_k) * sigma;
  const double lo = std::max(static_cast<double>(mn), m - ks);
  const double hi = std::min(static_cast<double>(mx), m + ks);
  return {static_cast<float>(lo), static_cast<float>(hi)};
}

void codes_from_range(const float* x, int64_t n, int bits, ClipRange r, uint8_t* codes, float* scale, float* zero) {
  const float lo = r.lo;
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float s = std::max(r.hi - lo, kScaleEps) / qmax;
  quantize_codes(x, n, lo, s, qmax, codes);
  *scale = s;
  *zero = -lo / s;
}

}  // namespace

ClipRange clip_range(const float* x, int64_t n, float clip_k) {
  float mn, mx;
  min_max(x, n, &mn, &mx);
  if (!(clip_k > 0.0f)) return {mn, mx};
  const double m = simd::lane_sum<false>(x, n, 0.0) / static_cast<double>(n);
  return clip_from_stats(mn, mx, m, simd::lane_sum<true>(x, n, m), n, clip_k);
}

void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero) {
  codes_from_range(x, n, bits, clip_range(x, n, clip_k), codes, scale, zero);
}

void quantize_rows2(const float* x0, const float* x1, int64_t n, int bits, float clip_k, uint8_t* codes0,
                    uint8_t* codes1, float* scale, float* zero) {
  const float* const x[2] = {x0, x1};
  ClipRange r[2];
  for (int i = 0; i < 2; ++i) min_max(x[i], n, &r[i].lo, &r[i].hi);
  if (clip_k > 0.0f) {
    const double zeros[2] = {0.0, 0.0};
    double m[2], ss[2];
    simd::lane_sums<false, 2>(x, n, zeros, m);
    for (double& v : m) v = v / static_cast<double>(n);
    simd::lane_sums<true, 2>(x, n, m, ss);
    for (int i = 0; i < 2; ++i) r[i] = clip_from_stats(r[i].lo, r[i].hi, m[i], ss[i], n, clip_k);
  }
  codes_from_range(x0, n, bits, r[0], codes0, scale, zero);
  codes_from_range(x1, n, bits, r[1], codes1, scale + 1, zero + 1);
}

RowTransform::RowTransform(const HadamardPlan& plan) : plan_(plan), sgn_(sign_table(plan)) {}

void RowTransform::operator()(const float* x, float* rot, float* scratch) const {
  transform_into(plan_, sgn_.data(), x, rot, scratch);
}

void hadamard_quantize(const HadamardPlan& plan, const float* x, int64_t T, int bits, float clip_k, uint8_t* codes,
                       float* scale, float* zero, float* rotated, int threads) {
  check_act_bits(bits);
  check_clip_k(clip_k);
  const int64_t n = plan.n;
  if (n < 1) throw std::invalid_argument("quantization width must be >= 1, got " + std::to_string(n));
  if (threads < 1) throw std::invalid_argument("hadamard_quantize: threads must be >= 1");
  const RowTransform transform(plan);
  const int64_t per = n + std::max<int64_t>(plan.scratch_size(), 1);
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, T)));
  std::vector<float> buf(static_cast<size_t>(nt * per));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t t = 0; t < T; ++t) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* rot = rotated != nullptr ? rotated + t * n : buf.data() + tid * per;
    float* scr = buf.data() + tid * per + n;
    transform(x + t * n, rot, scr);
    quantize_row(rot, n, bits, clip_k, codes + t * n, scale + t, zero + t);
  }
}

}  // namespace avx2
}  // namespace robuq
