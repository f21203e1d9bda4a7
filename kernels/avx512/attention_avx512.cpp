// One attention head on AVX-512, bit-identical to avx2::attention_head (kernels/avx2/ops_avx2.cpp). Quantized
// (bits 1..8): q k^T from the codes' exact integer dot products (vpdpbusd) and the shared float32 correction
// (attention_head_int below; the contract is stated in ops_avx2.cpp). Float (bits 0): avx2::attention_prepare's
// Q, key and value panels of 16 outputs. Then per block of query rows the softmax row by row and O = P V, and in
// the float case S = Q K^T, with the same float operations per output:
//  * the products: every output one chain of fused multiply-adds over k ascending from +0 (gemm_panels' chain),
//    a panel of 16 outputs being one zmm here (6 rows x 4 panels of accumulators per pass);
//  * the softmax: s * scale, the row maximum, exp (exp512 = exp256's steps), the sum over the same 8
//    interleaved lanes (each 16-float block is added as its two 8-float halves, in order), the same
//    reciprocal, product and 1/levels grid.
#include "avx512_common.h"  // first

#include <cmath>
#include <cstdint>
#include <cstring>

#include "exp_avx512.h"
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

// micro<1> for a last panel with at most 8 outputs (head dim 72 = 4.5 panels): the same chains in ymm, half
// the FMA work of the zmm panel whose upper lanes would be padding.
void micro_half(const float* x, int64_t ldx, int mt, const float* panel, int64_t K, float* y, int64_t ldy, int64_t nr) {
  const float* xr[kRows];
  for (int i = 0; i < kRows; ++i) xr[i] = x + (i < mt ? i : mt - 1) * ldx;
  __m256 acc[kRows];
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const __m256 w = _mm256_loadu_ps(panel + k * 16);
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(xr[i][k]), w, acc[i]);
  }
  const __mmask8 m = static_cast<__mmask8>((1u << nr) - 1);
  for (int i = 0; i < mt; ++i) _mm256_mask_storeu_ps(y + i * ldy, m, acc[i]);
}

void gemm_panels16(const float* x, int64_t ldx, int64_t T, const float* panels, int64_t R, int64_t K, float* y,
                   int64_t ldy) {
  const int64_t np = (R + 15) / 16;
  for (int64_t t = 0; t < T; t += kRows) {
    const int mt = static_cast<int>(imin(kRows, T - t));
    int64_t p = 0;
    for (; p + 4 <= np; p += 4)
      micro<4>(x + t * ldx, ldx, mt, panels + p * K * 16, K, y + t * ldy + 16 * p, ldy, imin(64, R - 16 * p));
    for (; p < np; ++p) {
      const int64_t nr = imin(16, R - 16 * p);
      if (nr <= 8)
        micro_half(x + t * ldx, ldx, mt, panels + p * K * 16, K, y + t * ldy + 16 * p, ldy, nr);
      else
        micro<1>(x + t * ldx, ldx, mt, panels + p * K * 16, K, y + t * ldy + 16 * p, ldy, nr);
    }
  }
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

// A row fake-quantized as avx2's load_head_row does, 16 wide: avx512::quantize_row (bit-identical to
// avx2::quantize_row), then dst = (float(code) - zero) * scale, the same two roundings.
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

// ---- integer scores (bits > 0): the contract of kernels/avx2/ops_avx2.cpp (attention_head_int), with the
// exact integer dot products from vpdpbusd (u8 query codes x s8 key codes - 128, so dot = acc + 128 Aq) and
// the same float steps: t = float(dot); t = fma(-zk, float(Aq), t); t = fma(-zq, Ck, t); S = (sq * sk) * t.
void quantize_head_row_u8(const float* src, int64_t head_dim, int64_t hd4, int bits, uint8_t* dst, float* scale,
                          float* zero, int32_t* sum) {
  avx512::quantize_row(src, head_dim, bits, 0.0f, dst, scale, zero);
  for (int64_t d = head_dim; d < hd4; ++d) dst[d] = 0;
  // the codes' sum with vpsadbw (sums of 8 bytes against zero into 64-bit lanes), 64 codes per step
  __m512i acc = _mm512_setzero_si512();
  for (int64_t d = 0; d < head_dim; d += 64) {
    const int64_t left = head_dim - d;
    const __mmask64 m = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(m, dst + d), _mm512_setzero_si512()));
  }
  *sum = static_cast<int32_t>(_mm512_reduce_add_epi64(acc));
}

// The int32 sums of 6 query rows x 4 panels of 16 keys over G groups of 4 dimensions into out[6][4][16]:
// Kc panels at kp + p * stride (stride = G * 64 bytes), query rows at q[r]. Inline assembly with fixed
// registers: GCC's allocation of the intrinsic version copies every vpdpbusd accumulator once per use (as it
// did for the ternary kernels). zmm0-23 accumulators (row r, panel p: 4 r + p), zmm24-27 the group's key
// vectors, zmm28 a row's broadcast codes.
// clang-format off
#define ROBUQ_QROW(r, a0, a1, a2, a3)                                                 \
  "vpbroadcastd (%[q" #r "]), %%zmm28\n\t"                                            \
  "vpdpbusd %%zmm24, %%zmm28, %%zmm" #a0 "\n\t"                                       \
  "vpdpbusd %%zmm25, %%zmm28, %%zmm" #a1 "\n\t"                                       \
  "vpdpbusd %%zmm26, %%zmm28, %%zmm" #a2 "\n\t"                                       \
  "vpdpbusd %%zmm27, %%zmm28, %%zmm" #a3 "\n\t"                                       \
  "add $4, %[q" #r "]\n\t"
#define ROBUQ_Z(a) "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
#define ROBUQ_S(a, off) "vmovdqu64 %%zmm" #a ", " #off "(%[out])\n\t"
void int_dot_6x4(const uint8_t* const qrow[6], const int8_t* kp, int64_t stride, int64_t G, int32_t* out) {
  const uint8_t *q0 = qrow[0], *q1 = qrow[1], *q2 = qrow[2], *q3 = qrow[3], *q4 = qrow[4], *q5 = qrow[5];
  const int8_t* k3 = kp + 3 * stride;
  asm volatile(
      ROBUQ_Z(0) ROBUQ_Z(1) ROBUQ_Z(2) ROBUQ_Z(3) ROBUQ_Z(4) ROBUQ_Z(5) ROBUQ_Z(6) ROBUQ_Z(7) ROBUQ_Z(8) ROBUQ_Z(9)
      ROBUQ_Z(10) ROBUQ_Z(11) ROBUQ_Z(12) ROBUQ_Z(13) ROBUQ_Z(14) ROBUQ_Z(15) ROBUQ_Z(16) ROBUQ_Z(17) ROBUQ_Z(18)
      ROBUQ_Z(19) ROBUQ_Z(20) ROBUQ_Z(21) ROBUQ_Z(22) ROBUQ_Z(23)
      "test %[g], %[g]\n\t"
      "jz 2f\n"
      "1:\n\t"
      "vmovdqu64 (%[kp]), %%zmm24\n\t"
      "vmovdqu64 (%[kp], %[st]), %%zmm25\n\t"
      "vmovdqu64 (%[kp], %[st], 2), %%zmm26\n\t"
      "vmovdqu64 (%[k3]), %%zmm27\n\t"
      ROBUQ_QROW(0, 0, 1, 2, 3) ROBUQ_QROW(1, 4, 5, 6, 7) ROBUQ_QROW(2, 8, 9, 10, 11)
      ROBUQ_QROW(3, 12, 13, 14, 15) ROBUQ_QROW(4, 16, 17, 18, 19) ROBUQ_QROW(5, 20, 21, 22, 23)
      "add $64, %[kp]\n\t"
      "add $64, %[k3]\n\t"
      "dec %[g]\n\t"
      "jnz 1b\n"
      "2:\n\t"
      ROBUQ_S(0, 0) ROBUQ_S(1, 64) ROBUQ_S(2, 128) ROBUQ_S(3, 192) ROBUQ_S(4, 256) ROBUQ_S(5, 320)
      ROBUQ_S(6, 384) ROBUQ_S(7, 448) ROBUQ_S(8, 512) ROBUQ_S(9, 576) ROBUQ_S(10, 640) ROBUQ_S(11, 704)
      ROBUQ_S(12, 768) ROBUQ_S(13, 832) ROBUQ_S(14, 896) ROBUQ_S(15, 960) ROBUQ_S(16, 1024) ROBUQ_S(17, 1088)
      ROBUQ_S(18, 1152) ROBUQ_S(19, 1216) ROBUQ_S(20, 1280) ROBUQ_S(21, 1344) ROBUQ_S(22, 1408) ROBUQ_S(23, 1472)
      "vzeroupper\n\t"
      : [q0] "+r"(q0), [q1] "+r"(q1), [q2] "+r"(q2), [q3] "+r"(q3), [q4] "+r"(q4), [q5] "+r"(q5), [kp] "+r"(kp),
        [k3] "+r"(k3), [g] "+r"(G)
      : [st] "r"(stride), [out] "r"(out)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
        "xmm25", "xmm26", "xmm27", "xmm28", "cc", "memory");
}
#undef ROBUQ_QROW
#undef ROBUQ_Z
#undef ROBUQ_S
// clang-format on

// S rows i0 .. i0 + mt - 1 (mt <= 6) for the keys of NP 16-key panels from panel p0: Kc [panel][hd4 / 4][16][4].
template <int NP>
void int_scores_tile(const uint8_t* Qc, int64_t hd4, int64_t i0, int mt, const int8_t* Kc, int64_t p0,
                     const avx2::AttentionScratch& st, int64_t T, float* S) {
  const uint8_t* qr[kRows];
  for (int r = 0; r < kRows; ++r) qr[r] = Qc + (i0 + (r < mt ? r : mt - 1)) * hd4;
  const int64_t G = hd4 / 4;
  alignas(64) int32_t dots[kRows][4][16];
  if (NP == 4) {
    int_dot_6x4(qr, Kc + p0 * G * 64, G * 64, G, &dots[0][0][0]);
  } else {
    for (int r = 0; r < kRows; ++r)
      for (int p = 0; p < NP; ++p) {
        __m512i acc = _mm512_setzero_si512();
        for (int64_t g = 0; g < G; ++g) {
          int32_t quad;
          std::memcpy(&quad, qr[r] + 4 * g, 4);
          acc = _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(quad), _mm512_loadu_si512(Kc + ((p0 + p) * G + g) * 64));
        }
        _mm512_store_si512(dots[r][p], acc);
      }
  }
  for (int r = 0; r < mt; ++r) {
    const int64_t i = i0 + r;
    const __m512 aq = _mm512_set1_ps(st.aq[i]), nzq = _mm512_set1_ps(st.nzq[i]), sq = _mm512_set1_ps(st.sq[i]);
    const __m512i bias = _mm512_set1_epi32(128 * static_cast<int32_t>(st.aq[i]));
    for (int p = 0; p < NP; ++p) {
      const int64_t j = (p0 + p) * 16;
      __m512 t = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_load_si512(dots[r][p]), bias));
      t = _mm512_fmadd_ps(_mm512_loadu_ps(st.nzk + j), aq, t);
      t = _mm512_fmadd_ps(nzq, _mm512_loadu_ps(st.ck + j), t);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(sq, _mm512_loadu_ps(st.sk + j)), t);
      const __mmask16 m = j + 16 <= T ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (T - j)) - 1);
      _mm512_mask_storeu_ps(S + r * T + j, m, v);
    }
  }
}

void attention_head_int(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                        float* out, float* scratch) {
  const int64_t D = H * head_dim, hd4 = (head_dim + 3) / 4 * 4, T16 = round16(T), G = hd4 / 4;
  const avx2::AttentionScratch st = avx2::attention_scratch(scratch, T, head_dim);
  float *Vp = st.Vp, *stage = st.stage, *S = st.S;
  uint8_t* codes = st.codes;
  uint8_t* Qc = reinterpret_cast<uint8_t*>(st.Q);  // [T][hd4]
  int8_t* Kc = reinterpret_cast<int8_t*>(st.Kp);   // [T16 / 16][hd4 / 4][16 keys][4]
  uint8_t* krow = reinterpret_cast<uint8_t*>(stage);
  const float* base = qkv + n * T * 3 * D + h * head_dim;
  const float fhd = static_cast<float>(head_dim);
  // the head's rows are head_dim floats at a stride of 3 D: fetch them a few rows ahead of their first use
  constexpr int64_t kAhead = 4;
  const auto prefetch_row = [&](const float* row) {
    for (int64_t d = 0; d < head_dim; d += 16) _mm_prefetch(reinterpret_cast<const char*>(row + d), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(row + head_dim - 1), _MM_HINT_T0);
  };
  for (int64_t i = 0; i < T; ++i) {
    if (i + kAhead < T) {
      prefetch_row(base + (i + kAhead) * 3 * D);
      prefetch_row(base + (i + kAhead) * 3 * D + D);
    }
    float s, z;
    int32_t sum;
    quantize_head_row_u8(base + i * 3 * D, head_dim, hd4, bits, Qc + i * hd4, &s, &z, &sum);
    st.sq[i] = s;
    st.nzq[i] = -z;
    st.aq[i] = static_cast<float>(sum);
    quantize_head_row_u8(base + i * 3 * D + D, head_dim, hd4, bits, krow, &s, &z, &sum);
    st.sk[i] = s;
    st.nzk[i] = -z;
    st.ck[i] = std::fma(-fhd, z, static_cast<float>(sum));
    const int64_t p = i / 16, l = i % 16;
    for (int64_t g = 0; g < G; ++g) {  // codes - 128 as s8 (the padding codes 0 of the queries meet 0x80 here)
      uint32_t quad;
      std::memcpy(&quad, krow + 4 * g, 4);
      quad ^= 0x80808080u;
      std::memcpy(Kc + ((p * G + g) * 16 + l) * 4, &quad, 4);
    }
  }
  for (int64_t i = T; i < T16; ++i) {
    st.sk[i] = st.nzk[i] = st.ck[i] = 0.0f;
    const int64_t p = i / 16, l = i % 16;
    for (int64_t g = 0; g < G; ++g) std::memset(Kc + ((p * G + g) * 16 + l) * 4, 0, 4);
  }
  for (int64_t i = 0; i < T; ++i) {
    if (i + kAhead < T) prefetch_row(base + (i + kAhead) * 3 * D + 2 * D);
    fake_quant_row(base + i * 3 * D + 2 * D, head_dim, bits, codes, stage + i * head_dim);
  }
  avx2::pack_panels_cols(stage, head_dim, head_dim, T, Vp);
  const float scale = static_cast<float>(std::pow(static_cast<double>(head_dim), -0.5));
  const int levels = (1 << bits) - 1;
  const int64_t np = (T + 15) / 16;
  for (int64_t i0 = 0; i0 < T; i0 += kRows) {
    const int mt = static_cast<int>(imin(kRows, T - i0));
    int64_t p = 0;
    for (; p + 4 <= np; p += 4) int_scores_tile<4>(Qc, hd4, i0, mt, Kc, p, st, T, S);
    for (; p < np; ++p) int_scores_tile<1>(Qc, hd4, i0, mt, Kc, p, st, T, S);
    for (int64_t i = 0; i < mt; ++i) softmax_row(S + i * T, T, scale, levels);
    gemm_panels16(S, T, mt, Vp, head_dim, T, out + (n * T + i0) * D + h * head_dim, D);
  }
}

}  // namespace

namespace avx512 {

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch) {
  if (bits > 0) {
    attention_head_int(qkv, n, h, T, H, head_dim, bits, out, scratch);
    return;
  }
  const avx2::AttentionBuffers b = avx2::attention_prepare(qkv, n, h, T, H, head_dim, bits, scratch);  // float (bits 0)
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
