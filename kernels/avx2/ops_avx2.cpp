// AVX2 versions of the DiT's elementwise and row operations and of one attention head (robuq/avx2.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "robuq/avx2.h"
#include "robuq/constants.h"
#include "simd_avx2.h"

namespace robuq {
namespace avx2 {
namespace {

// 8 floats from x[0..n) (n < 8), the rest `fill`.
inline __m256 load_partial(const float* x, int64_t n, float fill) {
  alignas(32) float t[8];
  for (int l = 0; l < 8; ++l) t[l] = l < n ? x[l] : fill;
  return _mm256_load_ps(t);
}

inline void store_partial(float* y, int64_t n, __m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int64_t l = 0; l < n; ++l) y[l] = t[l];
}

// Fake quantization of one head row: dst = (code - zero) * scale (the reference's float operations), or a copy.
void load_head_row(const float* src, int64_t head_dim, int bits, uint8_t* codes, float* dst) {
  if (bits == 0) {
    std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(head_dim));
    return;
  }
  float s, z;
  quantize_row(src, head_dim, bits, 0.0f, codes, &s, &z);
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  int64_t d = 0;
  for (; d + 8 <= head_dim; d += 8) {
    long long c8;
    std::memcpy(&c8, codes + d, 8);
    const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(c8)));
    _mm256_storeu_ps(dst + d, _mm256_mul_ps(_mm256_sub_ps(c, vz), vs));
  }
  for (; d < head_dim; ++d) dst[d] = (static_cast<float>(codes[d]) - z) * s;
}

constexpr int64_t kQueryRows = 6;  // queries per step: one micro-tile of gemm_panels

// A head's rows are head_dim floats at a stride of 3 D in qkv, too far apart for the hardware prefetchers, and
// the GEMM that wrote qkv has pushed most of them out of L2: the loops over a head's rows fetch each row kAhead
// rows before its first use (as the avx512 tier does). DiT-XL/2 at 1 thread, Zen 3: attention ~0.29 -> ~0.26 s
// per step.
constexpr int64_t kAhead = 4;

// Requests row i + kAhead (if there is one) of part `part` (0 q, 1 k, 2 v) of the head at `base`.
void prefetch_ahead(const float* base, int64_t i, int64_t T, int64_t D, int64_t head_dim, int part) {
  if (i + kAhead >= T) return;
  const float* row = base + (i + kAhead) * 3 * D + part * D;
  for (int64_t d = 0; d < head_dim; d += 16) _mm_prefetch(reinterpret_cast<const char*>(row + d), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(row + head_dim - 1), _MM_HINT_T0);
}

int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

}  // namespace

void exp_f32(const float* x, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, simd::exp256(_mm256_loadu_ps(x + i)));
  if (i < n) store_partial(y + i, n - i, simd::exp256(load_partial(x + i, n - i, 0.0f)));
}

void gelu_tanh(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, simd::gelu8(_mm256_loadu_ps(x + i)));
  if (i < n) store_partial(x + i, n - i, simd::gelu8(load_partial(x + i, n - i, 0.0f)));
}

namespace {

// layernorm_modulate_rows for R rows: their float64 statistics as R interleaved chains (simd::lane_sums), the
// same bits per row as one row alone.
template <int R>
void layernorm_rows(const float* const* x, int64_t D, const float* const* shift, const float* const* scale,
                    float* const* y) {
  const double zeros[R] = {};
  double mean[R], var[R];
  simd::lane_sums<false, R>(x, D, zeros, mean);
  for (double& m : mean) m = m / static_cast<double>(D);
  simd::lane_sums<true, R>(x, D, mean, var);
  for (int r = 0; r < R; ++r) {
    const float rstd =
        static_cast<float>(1.0 / std::sqrt(var[r] / static_cast<double>(D) + static_cast<double>(kLayerNormEps)));
    const float m = static_cast<float>(mean[r]);
    const float *xr = x[r], *sc = scale[r], *sh = shift[r];
    float* yr = y[r];
    const __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(rstd), one = _mm256_set1_ps(1.0f);
    int64_t k = 0;
    for (; k + 8 <= D; k += 8) {
      const __m256 a = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + k), vm), vr);
      const __m256 b = _mm256_mul_ps(a, _mm256_add_ps(one, _mm256_loadu_ps(sc + k)));
      _mm256_storeu_ps(yr + k, _mm256_add_ps(b, _mm256_loadu_ps(sh + k)));
    }
    for (; k < D; ++k) yr[k] = ((xr[k] - m) * rstd) * (1.0f + sc[k]) + sh[k];
  }
}

}  // namespace

void layernorm_modulate_rows(int count, const float* const* x, int64_t D, const float* const* shift,
                             const float* const* scale, float* const* y) {
  switch (count) {
    case 1: return layernorm_rows<1>(x, D, shift, scale, y);
    case 2: return layernorm_rows<2>(x, D, shift, scale, y);
    case 3: return layernorm_rows<3>(x, D, shift, scale, y);
    case 4: return layernorm_rows<4>(x, D, shift, scale, y);
    default: throw std::invalid_argument("layernorm_modulate_rows: count must be 1..4");
  }
}

void gated_residual_row(float* x, const float* b, const float* gate, int64_t D) {
  int64_t k = 0;
  for (; k + 8 <= D; k += 8)
    _mm256_storeu_ps(
        x + k, _mm256_add_ps(_mm256_loadu_ps(x + k), _mm256_mul_ps(_mm256_loadu_ps(gate + k), _mm256_loadu_ps(b + k))));
  for (; k < D; ++k) x[k] = x[k] + gate[k] * b[k];
}

void softmax_row(float* s, int64_t n, float scale, int levels) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 vmx = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + j), vscale);
    _mm256_storeu_ps(s + j, v);
    vmx = _mm256_max_ps(vmx, v);
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, vmx);
  float mx = l[0];
  for (int i = 1; i < 8; ++i) mx = std::max(mx, l[i]);
  for (; j < n; ++j) {
    s[j] = s[j] * scale;
    mx = std::max(mx, s[j]);
  }
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (j < n) {  // the tail goes to lanes j % 8 like the rest; padding lanes add exp(-inf) = 0
    const __m256 e = simd::exp256(_mm256_sub_ps(load_partial(s + j, n - j, -INFINITY), vm));
    store_partial(s + j, n - j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  const float inv = 1.0f / simd::pairwise_sum8(vsum);
  const __m256 vinv = _mm256_set1_ps(inv);
  const float L = static_cast<float>(levels);
  const __m256 vl = _mm256_set1_ps(L);
  for (j = 0; j + 8 <= n; j += 8) {
    __m256 p = _mm256_mul_ps(_mm256_loadu_ps(s + j), vinv);
    if (levels > 0) {
      p = _mm256_round_ps(_mm256_mul_ps(p, vl), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      p = _mm256_div_ps(_mm256_min_ps(_mm256_max_ps(p, _mm256_setzero_ps()), vl), vl);
    }
    _mm256_storeu_ps(s + j, p);
  }
  for (; j < n; ++j) {
    float p = s[j] * inv;
    if (levels > 0) p = std::min(std::max(std::nearbyint(p * L), 0.0f), L) / L;
    s[j] = p;
  }
}

size_t attention_scratch_floats(int64_t T, int64_t head_dim) {
  // Q [T, head_dim]; key panels [round16(T), head_dim]; value panels [round16(head_dim), T]; a row-major K / V staging
  // buffer [T, head_dim]; scores [6, T]; codes (head_dim bytes).
  // + the integer scores' per-row and per-key statistics (6 x round16(T)).
  return static_cast<size_t>(T * head_dim + round16(T) * head_dim + round16(head_dim) * T + T * head_dim +
                             kQueryRows * T + head_dim + 6 * round16(T));
}

AttentionScratch attention_scratch(float* scratch, int64_t T, int64_t head_dim) {
  AttentionScratch a;
  const int64_t T16 = round16(T);
  a.Q = scratch;
  a.Kp = a.Q + T * head_dim;
  a.Vp = a.Kp + T16 * head_dim;
  a.stage = a.Vp + round16(head_dim) * T;
  a.S = a.stage + T * head_dim;
  a.codes = reinterpret_cast<uint8_t*>(a.S + kQueryRows * T);
  a.sq = a.S + kQueryRows * T + head_dim;
  a.nzq = a.sq + T16;
  a.aq = a.nzq + T16;
  a.sk = a.aq + T16;
  a.nzk = a.sk + T16;
  a.ck = a.nzk + T16;
  a.query_rows = kQueryRows;
  return a;
}

AttentionBuffers attention_prepare(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim,
                                   int bits, float* scratch) {
  const int64_t D = H * head_dim;
  const AttentionScratch a = attention_scratch(scratch, T, head_dim);
  float *Q = a.Q, *Kp = a.Kp, *Vp = a.Vp, *stage = a.stage, *S = a.S;
  uint8_t* codes = a.codes;
  const float* base = qkv + n * T * 3 * D + h * head_dim;
  for (int64_t i = 0; i < T; ++i) {
    prefetch_ahead(base, i, T, D, head_dim, 0);
    prefetch_ahead(base, i, T, D, head_dim, 1);
    load_head_row(base + i * 3 * D, head_dim, bits, codes, Q + i * head_dim);
    load_head_row(base + i * 3 * D + D, head_dim, bits, codes, stage + i * head_dim);
  }
  pack_panels_rows(stage, head_dim, T, head_dim, Kp);  // S[i, j] = sum_d Q[i, d] K[j, d]
  for (int64_t i = 0; i < T; ++i) {
    prefetch_ahead(base, i, T, D, head_dim, 2);
    load_head_row(base + i * 3 * D + 2 * D, head_dim, bits, codes, stage + i * head_dim);
  }
  pack_panels_cols(stage, head_dim, head_dim, T, Vp);  // O[i, d] = sum_j P[i, j] V[j, d]
  return {Q, Kp, Vp, S, kQueryRows};
}

namespace {

// ---- integer scores (bits > 0), the contract shared with the avx512 tier (kernels/avx512/attention_avx512.cpp):
// q and k rows are quantized per row (quantize_row: codes c, scale s, zero z; the fake-quantized value is
// (c - z) s). With dot = sum_d cq_d ck_d (exact in int32), Aq = sum_d cq_d, Ck = fma(-head_dim, zk, Bk) where
// Bk = sum_d ck_d, the score is, in float32:
//     t = float(dot);  t = fma(-zk, float(Aq), t);  t = fma(-zq, Ck, t);  S = (sq * sk) * t
// i.e. sq sk sum_d (cq_d - zq)(ck_d - zk) with four roundings (the float chain over the fake-quantized values
// it replaces rounds once per d). Each tier gets dot with its own integer instructions (here vpmaddwd on int16
// pairs); the float steps are the same operations in the same order, so both tiers give the same bits.
constexpr int64_t kKeysPerPanel = 8;

// Row codes as int16 pairs (dst[hd2], zero-padded) and their statistics.
void quantize_head_row_i16(const float* src, int64_t head_dim, int64_t hd2, int bits, uint8_t* codes, int16_t* dst,
                           float* scale, float* zero, int32_t* sum) {
  quantize_row(src, head_dim, bits, 0.0f, codes, scale, zero);
  int32_t acc = 0;
  for (int64_t d = 0; d < head_dim; ++d) {
    dst[d] = static_cast<int16_t>(codes[d]);
    acc += codes[d];
  }
  for (int64_t d = head_dim; d < hd2; ++d) dst[d] = 0;
  *sum = acc;
}

// dot[r][16] (int32) = the exact dot products of query rows q[r] (r < 6) with the 16 keys of two consecutive
// 8-key panels k0 (panel p) and k0 + kstride bytes (panel p + 1), over G groups of 2 dimensions; vpmaddwd on
// int16 pairs. In inline assembly so that the 12 accumulators, the two key vectors, the broadcast query pair and
// the product each keep a register (GCC's version of the loop spilled accumulators to the stack on every step):
// ymm0-11 acc[r][p] (ymm 2r + p), ymm12-13 the keys, ymm14 the query pair, ymm15 the product.
// clang-format off
#define ROBUQ_QK_ROW(q, a0, a1)                                                                  \
  "vpbroadcastd (%[" #q "],%[g],4), %%ymm14\n\t"                                                \
  "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"                                                      \
  "vpaddd %%ymm15, %%ymm" #a0 ", %%ymm" #a0 "\n\t"                                              \
  "vpmaddwd %%ymm13, %%ymm14, %%ymm14\n\t"                                                      \
  "vpaddd %%ymm14, %%ymm" #a1 ", %%ymm" #a1 "\n\t"
void int_dots_6x16(const int16_t* const* q, const int16_t* k0, int64_t kstride, int64_t G, int32_t* dot) {
  const int16_t *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3], *q4 = q[4], *q5 = q[5];
  int64_t g = 0;
  asm volatile(
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t"
      "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
      "vpxor %%xmm8, %%xmm8, %%xmm8\n\t"
      "vpxor %%xmm9, %%xmm9, %%xmm9\n\t"
      "vpxor %%xmm10, %%xmm10, %%xmm10\n\t"
      "vpxor %%xmm11, %%xmm11, %%xmm11\n\t"
      "test %[n], %[n]\n\t"
      "jz 2f\n"
      "1:\n\t"
      "vmovdqu (%[k]), %%ymm12\n\t"
      "vmovdqu (%[k],%[ks],1), %%ymm13\n\t"
      ROBUQ_QK_ROW(q0, 0, 1) ROBUQ_QK_ROW(q1, 2, 3) ROBUQ_QK_ROW(q2, 4, 5)
      ROBUQ_QK_ROW(q3, 6, 7) ROBUQ_QK_ROW(q4, 8, 9) ROBUQ_QK_ROW(q5, 10, 11)
      "add $32, %[k]\n\t"
      "inc %[g]\n\t"
      "cmp %[n], %[g]\n\t"
      "jne 1b\n"
      "2:\n\t"
      "vmovdqu %%ymm0, 0(%[d])\n\t"
      "vmovdqu %%ymm1, 32(%[d])\n\t"
      "vmovdqu %%ymm2, 64(%[d])\n\t"
      "vmovdqu %%ymm3, 96(%[d])\n\t"
      "vmovdqu %%ymm4, 128(%[d])\n\t"
      "vmovdqu %%ymm5, 160(%[d])\n\t"
      "vmovdqu %%ymm6, 192(%[d])\n\t"
      "vmovdqu %%ymm7, 224(%[d])\n\t"
      "vmovdqu %%ymm8, 256(%[d])\n\t"
      "vmovdqu %%ymm9, 288(%[d])\n\t"
      "vmovdqu %%ymm10, 320(%[d])\n\t"
      "vmovdqu %%ymm11, 352(%[d])\n\t"
      "vzeroupper\n\t"
      : [k] "+r"(k0), [g] "+r"(g)
      : [q0] "r"(q0), [q1] "r"(q1), [q2] "r"(q2), [q3] "r"(q3), [q4] "r"(q4), [q5] "r"(q5), [ks] "r"(kstride),
        [n] "r"(G), [d] "r"(dot)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "cc", "memory");
}
#undef ROBUQ_QK_ROW
// clang-format on

// S rows i0 .. i0 + mt - 1 (mt <= 6) for keys of NP (1 or 2) consecutive 8-key panels starting at panel p0.
template <int NP>
void int_scores_tile(const int16_t* Qc, int64_t hd2, int64_t i0, int mt, const int16_t* Kc, int64_t p0,
                     const AttentionScratch& st, int64_t T, float* S) {
  const int16_t* qr[kQueryRows];
  for (int r = 0; r < kQueryRows; ++r) qr[r] = Qc + (i0 + (r < mt ? r : mt - 1)) * hd2;
  const int64_t G = hd2 / 2;
  alignas(32) int32_t dot[kQueryRows][2][kKeysPerPanel];
  if constexpr (NP == 2) {
    int_dots_6x16(qr, Kc + p0 * G * 2 * kKeysPerPanel, G * 2 * kKeysPerPanel * 2, G, &dot[0][0][0]);
  } else {
    __m256i acc[kQueryRows];
    for (int r = 0; r < kQueryRows; ++r) acc[r] = _mm256_setzero_si256();
    for (int64_t g = 0; g < G; ++g) {
      const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Kc + (p0 * G + g) * 2 * kKeysPerPanel));
      for (int r = 0; r < kQueryRows; ++r) {
        int32_t pair;
        std::memcpy(&pair, qr[r] + 2 * g, 4);
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_set1_epi32(pair), kv));
      }
    }
    for (int r = 0; r < kQueryRows; ++r) _mm256_store_si256(reinterpret_cast<__m256i*>(dot[r][0]), acc[r]);
  }
  for (int r = 0; r < mt; ++r) {
    const int64_t i = i0 + r;
    const __m256 aq = _mm256_set1_ps(st.aq[i]), nzq = _mm256_set1_ps(st.nzq[i]), sq = _mm256_set1_ps(st.sq[i]);
    for (int p = 0; p < NP; ++p) {
      const int64_t j = (p0 + p) * kKeysPerPanel;
      __m256 t = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dot[r][p])));
      t = _mm256_fmadd_ps(_mm256_loadu_ps(st.nzk + j), aq, t);
      t = _mm256_fmadd_ps(nzq, _mm256_loadu_ps(st.ck + j), t);
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(sq, _mm256_loadu_ps(st.sk + j)), t);
      if (j + kKeysPerPanel <= T)
        _mm256_storeu_ps(S + r * T + j, v);
      else
        store_partial(S + r * T + j, T - j, v);
    }
  }
}

void attention_head_int(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                        float* out, float* scratch) {
  const int64_t D = H * head_dim, hd2 = (head_dim + 1) / 2 * 2, T16 = round16(T);
  const AttentionScratch st = attention_scratch(scratch, T, head_dim);
  float *Vp = st.Vp, *stage = st.stage, *S = st.S;
  uint8_t* codes = st.codes;
  int16_t* Qc = reinterpret_cast<int16_t*>(st.Q);   // [T][hd2]
  int16_t* Kc = reinterpret_cast<int16_t*>(st.Kp);  // [T16 / 8][hd2 / 2][8 keys][2]
  int16_t* krow = reinterpret_cast<int16_t*>(stage);
  const float* base = qkv + n * T * 3 * D + h * head_dim;
  const float fhd = static_cast<float>(head_dim);
  for (int64_t i = 0; i < T; ++i) {
    prefetch_ahead(base, i, T, D, head_dim, 0);
    prefetch_ahead(base, i, T, D, head_dim, 1);
    float s, z;
    int32_t sum;
    quantize_head_row_i16(base + i * 3 * D, head_dim, hd2, bits, codes, Qc + i * hd2, &s, &z, &sum);
    st.sq[i] = s;
    st.nzq[i] = -z;
    st.aq[i] = static_cast<float>(sum);
    quantize_head_row_i16(base + i * 3 * D + D, head_dim, hd2, bits, codes, krow, &s, &z, &sum);
    st.sk[i] = s;
    st.nzk[i] = -z;
    st.ck[i] = std::fma(-fhd, z, static_cast<float>(sum));
    const int64_t p = i / kKeysPerPanel, l = i % kKeysPerPanel;
    for (int64_t g = 0; g < hd2 / 2; ++g) {
      int16_t* dst = Kc + ((p * (hd2 / 2) + g) * kKeysPerPanel + l) * 2;
      dst[0] = krow[2 * g];
      dst[1] = krow[2 * g + 1];
    }
  }
  for (int64_t i = T; i < T16; ++i) {  // padding keys: zero codes and statistics
    st.sk[i] = st.nzk[i] = st.ck[i] = 0.0f;
    const int64_t p = i / kKeysPerPanel, l = i % kKeysPerPanel;
    for (int64_t g = 0; g < hd2 / 2; ++g) {
      int16_t* dst = Kc + ((p * (hd2 / 2) + g) * kKeysPerPanel + l) * 2;
      dst[0] = dst[1] = 0;
    }
  }
  for (int64_t i = 0; i < T; ++i) {
    prefetch_ahead(base, i, T, D, head_dim, 2);
    load_head_row(base + i * 3 * D + 2 * D, head_dim, bits, codes, stage + i * head_dim);
  }
  pack_panels_cols(stage, head_dim, head_dim, T, Vp);  // O[i, d] = sum_j P[i, j] V[j, d]
  const float scale = static_cast<float>(std::pow(static_cast<double>(head_dim), -0.5));
  const int levels = (1 << bits) - 1;
  const int64_t np = (T + kKeysPerPanel - 1) / kKeysPerPanel;
  for (int64_t i0 = 0; i0 < T; i0 += kQueryRows) {
    const int mt = static_cast<int>(std::min(kQueryRows, T - i0));
    int64_t p = 0;
    for (; p + 2 <= np; p += 2) int_scores_tile<2>(Qc, hd2, i0, mt, Kc, p, st, T, S);
    for (; p < np; ++p) int_scores_tile<1>(Qc, hd2, i0, mt, Kc, p, st, T, S);
    for (int64_t i = 0; i < mt; ++i) softmax_row(S + i * T, T, scale, levels);
    gemm_panels(S, T, mt, Vp, head_dim, T, out + (n * T + i0) * D + h * head_dim, D);
  }
}

}  // namespace

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch) {
  if (bits > 0) {
    attention_head_int(qkv, n, h, T, H, head_dim, bits, out, scratch);
    return;
  }
  const AttentionBuffers b = attention_prepare(qkv, n, h, T, H, head_dim, bits, scratch);
  const int64_t D = H * head_dim;
  const float scale = static_cast<float>(std::pow(static_cast<double>(head_dim), -0.5));
  const int levels = bits > 0 ? (1 << bits) - 1 : 0;
  for (int64_t i0 = 0; i0 < T; i0 += kQueryRows) {
    const int64_t nb = std::min(kQueryRows, T - i0);
    gemm_panels(b.Q + i0 * head_dim, head_dim, nb, b.Kp, T, head_dim, b.S, T);  // S[i, j] = sum_d Q[i, d] K[j, d]
    for (int64_t i = 0; i < nb; ++i) softmax_row(b.S + i * T, T, scale, levels);
    gemm_panels(b.S, T, nb, b.Vp, head_dim, T, out + (n * T + i0) * D + h * head_dim,
                D);  // O[i, d] = sum_j P[i, j] V[j, d]
  }
}

}  // namespace avx2
}  // namespace robuq
