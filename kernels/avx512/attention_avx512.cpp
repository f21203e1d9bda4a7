// One attention head on AVX-512, bit-identical to avx2::attention_head (kernels/avx2/ops_avx2.cpp): the same
// preparation (avx2::attention_prepare: fake-quantized Q, key and value panels of 16 outputs), then per block of
// query rows S = Q K^T, the softmax row by row, and O = P V, with the same float operations per output:
//  * the products: every output one chain of fused multiply-adds over k ascending from +0 (gemm_panels' chain),
//    a panel of 16 outputs being one zmm here (6 rows x 4 panels of accumulators per pass);
//  * the softmax: s * scale, the row maximum, exp (exp512 = exp256's steps), the sum over the same 8
//    interleaved lanes (each 16-float block is added as its two 8-float halves, in order), the same
//    reciprocal, product and 1/levels grid.
#include "avx512_common.h"  // first

#include <cmath>
#include <cstdint>
#include <cstring>

#include "robuq/avx2.h"
#include "robuq/avx512.h"

namespace robuq {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

constexpr int kRows = 6;  // rows per pass (avx2::attention_prepare's score buffer holds 6 query rows)

// y[i * ldy + r] = sum_k x_i[k] P(r, k) for i < mt (<= 6), r < 16 * NP (a multiple-of-16 block of panels p0..),
// storing only r < nr. Panels: P(r, k) = panels[(r / 16) * K * 16 + k * 16 + r % 16].
template <int NP>
void micro(const float* x, int64_t ldx, int mt, const float* panels, int64_t K, float* y, int64_t ldy, int64_t nr) {
  const float* xr[kRows];
  for (int i = 0; i < kRows; ++i) xr[i] = x + (i < mt ? i : mt - 1) * ldx;
  __m512 acc[kRows][NP];
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 w[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) w[p] = _mm512_loadu_ps(panels + p * K * 16 + k * 16);
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) {
      const __m512 xb = _mm512_set1_ps(xr[i][k]);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_fmadd_ps(xb, w[p], acc[i][p]);
    }
  }
  for (int i = 0; i < mt; ++i)
    for (int p = 0; p < NP; ++p) {
      const int64_t left = nr - 16 * p;
      if (left <= 0) break;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_ps(y + i * ldy + 16 * p, m, acc[i][p]);
    }
}

void gemm_panels16(const float* x, int64_t ldx, int64_t T, const float* panels, int64_t R, int64_t K, float* y,
                   int64_t ldy) {
  const int64_t np = (R + 15) / 16;
  for (int64_t t = 0; t < T; t += kRows) {
    const int mt = static_cast<int>(imin(kRows, T - t));
    int64_t p = 0;
    for (; p + 4 <= np; p += 4)
      micro<4>(x + t * ldx, ldx, mt, panels + p * K * 16, K, y + t * ldy + 16 * p, ldy, imin(64, R - 16 * p));
    for (; p < np; ++p)
      micro<1>(x + t * ldx, ldx, mt, panels + p * K * 16, K, y + t * ldy + 16 * p, ldy, imin(16, R - 16 * p));
  }
}

inline __m512 exp512(__m512 x) {  // exp256's steps (kernels/avx2/simd_avx2.h), 16 wide
  const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.72283906f);
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.75f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  // y * 2^n in one instruction: exp256 multiplies by 2^(n >> 1) (exact: no under- or overflow for |n| <= 128)
  // and then by 2^(n - (n >> 1)), one rounding, as vscalefps does (checked equal for all 2^32 inputs)
  y = _mm512_scalef_ps(y, n);
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), _mm512_set1_ps(__builtin_inff()));
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// avx2::softmax_row's operations: in place on one row of n scores.
void softmax_row(float* s, int64_t n, float scale, int levels) {
  const __m512 vscale = _mm512_set1_ps(scale);
  // s * scale and the maximum (exact in any order; a zero maximum's sign cannot change exp(s - max))
  __m512 vmx = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + j), vscale);
    _mm512_storeu_ps(s + j, v);
    vmx = _mm512_max_ps(vmx, v);
  }
  float mx = _mm512_reduce_max_ps(vmx);
  for (; j < n; ++j) {
    s[j] = s[j] * scale;
    mx = s[j] > mx ? s[j] : mx;
  }
  // exp(s - max) and the sum over 8 interleaved lanes (element j in lane j % 8, j ascending)
  const __m512 vm = _mm512_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
    _mm512_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
    vsum = _mm256_add_ps(vsum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  }
  if (j < n) {  // at most 15 left: one or two 8-float groups, padding lanes exp(-inf) = 0 like avx2's tail
    const int64_t left = n - j;
    const __mmask16 m = static_cast<__mmask16>((1u << left) - 1);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, s + j), vm));
    _mm512_mask_storeu_ps(s + j, m, e);
    vsum = _mm256_add_ps(vsum, _mm512_castps512_ps256(e));
    if (left > 8) vsum = _mm256_add_ps(vsum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, vsum);
  const float inv = 1.0f / (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 vl = _mm512_set1_ps(static_cast<float>(levels));
  for (j = 0; j < n; j += 16) {
    const __mmask16 m = j + 16 <= n ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1);
    __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), vinv);
    if (levels > 0) {
      p = _mm512_roundscale_ps(_mm512_mul_ps(p, vl), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      p = _mm512_div_ps(_mm512_min_ps(_mm512_max_ps(p, _mm512_setzero_ps()), vl), vl);
    }
    _mm512_mask_storeu_ps(s + j, m, p);
  }
}

// avx2::attention_prepare's buffers and values, 16 wide: every row fake-quantized with avx512::quantize_row
// (bit-identical to avx2::quantize_row) and dst = (float(code) - zero) * scale, the same two roundings.
void fake_quant_row(const float* src, int64_t head_dim, int bits, uint8_t* codes, float* dst) {
  float s, z;
  avx512::quantize_row(src, head_dim, bits, 0.0f, codes, &s, &z);
  const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
  for (int64_t d = 0; d < head_dim; d += 16) {
    const __mmask16 m = d + 16 <= head_dim ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (head_dim - d)) - 1);
    const __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, codes + d)));
    _mm512_mask_storeu_ps(dst + d, m, _mm512_mul_ps(_mm512_sub_ps(c, vz), vs));
  }
}

inline int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

avx2::AttentionBuffers prepare(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                               float* scratch) {
  if (bits == 0) return avx2::attention_prepare(qkv, n, h, T, H, head_dim, bits, scratch);
  const int64_t D = H * head_dim;
  float* Q = scratch;  // the layout of avx2::attention_scratch_floats
  float* Kp = Q + T * head_dim;
  float* Vp = Kp + round16(T) * head_dim;
  float* stage = Vp + round16(head_dim) * T;
  float* S = stage + T * head_dim;
  uint8_t* codes = reinterpret_cast<uint8_t*>(S + kRows * T);
  const float* base = qkv + n * T * 3 * D + h * head_dim;
  for (int64_t i = 0; i < T; ++i) {
    fake_quant_row(base + i * 3 * D, head_dim, bits, codes, Q + i * head_dim);
    fake_quant_row(base + i * 3 * D + D, head_dim, bits, codes, stage + i * head_dim);
  }
  avx2::pack_panels_rows(stage, head_dim, T, head_dim, Kp);
  for (int64_t i = 0; i < T; ++i) fake_quant_row(base + i * 3 * D + 2 * D, head_dim, bits, codes, stage + i * head_dim);
  avx2::pack_panels_cols(stage, head_dim, head_dim, T, Vp);
  return {Q, Kp, Vp, S, kRows};
}

}  // namespace

namespace avx512 {

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch) {
  const avx2::AttentionBuffers b = prepare(qkv, n, h, T, H, head_dim, bits, scratch);
  const int64_t D = H * head_dim;
  const float scale = static_cast<float>(std::pow(static_cast<double>(head_dim), -0.5));
  const int levels = bits > 0 ? (1 << bits) - 1 : 0;
  for (int64_t i0 = 0; i0 < T; i0 += b.query_rows) {
    const int64_t nb = imin(b.query_rows, T - i0);
    gemm_panels16(b.Q + i0 * head_dim, head_dim, nb, b.Kp, T, head_dim, b.S, T);
    for (int64_t i = 0; i < nb; ++i) softmax_row(b.S + i * T, T, scale, levels);
    gemm_panels16(b.S, T, nb, b.Vp, head_dim, T, out + (n * T + i0) * D + h * head_dim, D);
  }
}

}  // namespace avx512
}  // namespace robuq
