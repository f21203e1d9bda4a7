// AVX2 versions of the DiT's elementwise and row operations and of one attention head (robuq/avx2.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

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

void layernorm_modulate_row(const float* x, int64_t D, const float* shift, const float* scale, float* y) {
  const double mean = simd::lane_sum<false>(x, D, 0.0) / static_cast<double>(D);
  const double var = simd::lane_sum<true>(x, D, mean) / static_cast<double>(D);
  const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(kLayerNormEps)));
  const float m = static_cast<float>(mean);
  const __m256 vm = _mm256_set1_ps(m), vr = _mm256_set1_ps(rstd), one = _mm256_set1_ps(1.0f);
  int64_t k = 0;
  for (; k + 8 <= D; k += 8) {
    const __m256 a = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), vm), vr);
    const __m256 b = _mm256_mul_ps(a, _mm256_add_ps(one, _mm256_loadu_ps(scale + k)));
    _mm256_storeu_ps(y + k, _mm256_add_ps(b, _mm256_loadu_ps(shift + k)));
  }
  for (; k < D; ++k) y[k] = ((x[k] - m) * rstd) * (1.0f + scale[k]) + shift[k];
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
  return static_cast<size_t>(T * head_dim + round16(T) * head_dim + round16(head_dim) * T + T * head_dim +
                             kQueryRows * T + head_dim);
}

AttentionBuffers attention_prepare(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim,
                                   int bits, float* scratch) {
  const int64_t D = H * head_dim;
  float* Q = scratch;
  float* Kp = Q + T * head_dim;
  float* Vp = Kp + round16(T) * head_dim;
  float* stage = Vp + round16(head_dim) * T;
  float* S = stage + T * head_dim;
  uint8_t* codes = reinterpret_cast<uint8_t*>(S + kQueryRows * T);
  const float* base = qkv + n * T * 3 * D + h * head_dim;
  for (int64_t i = 0; i < T; ++i) {
    load_head_row(base + i * 3 * D, head_dim, bits, codes, Q + i * head_dim);
    load_head_row(base + i * 3 * D + D, head_dim, bits, codes, stage + i * head_dim);
  }
  pack_panels_rows(stage, head_dim, T, head_dim, Kp);  // S[i, j] = sum_d Q[i, d] K[j, d]
  for (int64_t i = 0; i < T; ++i) load_head_row(base + i * 3 * D + 2 * D, head_dim, bits, codes, stage + i * head_dim);
  pack_panels_cols(stage, head_dim, head_dim, T, Vp);  // O[i, d] = sum_j P[i, j] V[j, d]
  return {Q, Kp, Vp, S, kQueryRows};
}

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch) {
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
