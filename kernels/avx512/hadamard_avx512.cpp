// AVX-512 Hadamard transform of one row, bit-identical to the reference tier (and so to the avx2 tier): the
// avx2 kernels' mapping of every reference operation onto vectors (kernels/avx2/hadamard_quant_avx2.cpp), 16
// floats wide:
//  * butterflies: stages h = 1, 2, 4, 8 inside a vector (lane permutation p of v, then p + (v ^ sign): u + v in
//    the lower and u - v == u + (-v) in the upper lane of each pair), stages h >= 16 pair whole vectors;
//  * K x K step: Y[c, b..b+16) = sum_a H_K[a, c] X[a, b..b+16), a ascending, first term +-X[0], then
//    y + (x ^ sign); up to 18 outputs c per pass in registers; then the product with the float32 normaliser.
#include "avx512_common.h"  // first

#include <cstdint>
#include <cstring>

#include "robuq/avx512.h"
#include "robuq/hadamard.h"

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

// dst = Walsh-Hadamard butterflies of src over consecutive segments of M floats (M a power of two >= 16, n a
// multiple of M). src may equal dst.
void butterflies(const float* src, float* dst, int64_t n, int64_t M) {
  const __m512 s1 = sign_lanes(1), s2 = sign_lanes(2), s4 = sign_lanes(4), s8 = sign_lanes(8);
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v = _mm512_loadu_ps(src + i);
    v = _mm512_add_ps(_mm512_permute_ps(v, 0xB1), xorps(v, s1));       // lanes [1, 0, 3, 2, ...]
    v = _mm512_add_ps(_mm512_permute_ps(v, 0x4E), xorps(v, s2));       // lanes [2, 3, 0, 1, ...]
    v = _mm512_add_ps(_mm512_shuffle_f32x4(v, v, 0xB1), xorps(v, s4));  // 128-bit blocks [1, 0, 3, 2]
    v = _mm512_add_ps(_mm512_shuffle_f32x4(v, v, 0x4E), xorps(v, s8));  // 128-bit blocks [2, 3, 0, 1]
    _mm512_storeu_ps(dst + i, v);
  }
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

}  // namespace

namespace avx512 {

bool hadamard_row(const HadamardPlan& p, const float* sgn, const float* x, float* rot, float* scratch) {
  const int64_t n = p.n;
  if (p.form == HadamardForm::Full && p.K > 1 && p.M >= 16) {
    butterflies(x, scratch, n, p.M);
    kxk(scratch, p.M, p.K, sgn, p.norm, rot);
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
