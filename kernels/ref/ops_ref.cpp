// Scalar reference of the DiT's per-row / per-head operations (robuq/ops.h): the arithmetic the reference
// and generic tiers run and the avx2 / avx512 kernels are checked against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "robuq/ops.h"
#include "robuq/qlinear.h"
#include "robuq/quant.h"

namespace robuq {
namespace ref {

namespace {
constexpr int64_t kQueryBlock = 64;  // attention: query rows scored at once

// dst[head_dim] = fake-quantized src (per row minmax, ref arithmetic), or a copy when bits == 0.
void load_head_row(const float* src, int64_t head_dim, int bits, uint8_t* codes, float* dst) {
  if (bits == 0) {
    std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(head_dim));
    return;
  }
  float s, z;
  quantize_row(src, head_dim, bits, 0.0f, codes, &s, &z);
  for (int64_t d = 0; d < head_dim; ++d) dst[d] = (static_cast<float>(codes[d]) - z) * s;
}
}  // namespace

void gelu_tanh(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh_scalar(x[i]);
}

void layernorm_modulate_row(const float* x, int64_t D, const float* shift, const float* scale, float* y) {
  const double mean = lane_sum(x, D, 0.0, false) / static_cast<double>(D);
  const double var = lane_sum(x, D, mean, true) / static_cast<double>(D);
  const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(kLayerNormEps)));
  const float m = static_cast<float>(mean);
  for (int64_t k = 0; k < D; ++k) y[k] = ((x[k] - m) * rstd) * (1.0f + scale[k]) + shift[k];
}

void gated_residual_row(float* x, const float* b, const float* gate, int64_t D) {
  for (int64_t k = 0; k < D; ++k) x[k] = x[k] + gate[k] * b[k];
}

size_t attention_scratch_floats(int64_t T, int64_t head_dim) {
  // Q, K: [T, head_dim]; V^T: [head_dim, T]; scores: [kQueryBlock, T]; head output: [kQueryBlock, head_dim];
  // codes row.
  const int64_t qb = std::min(T, kQueryBlock);
  return static_cast<size_t>(3 * T * head_dim + qb * T + qb * head_dim + head_dim);
}

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch) {
  const int64_t D = H * head_dim;
  const int64_t qb = std::min(T, kQueryBlock);
  float* Q = scratch;
  float* K = Q + T * head_dim;
  float* Vt = K + T * head_dim;
  float* S = Vt + T * head_dim;
  float* O = S + qb * T;
  uint8_t* codes = reinterpret_cast<uint8_t*>(O + qb * head_dim);  // head_dim bytes fit in head_dim floats
  for (int64_t i = 0; i < T; ++i) {
    const float* row = qkv + (n * T + i) * 3 * D + h * head_dim;
    load_head_row(row, head_dim, bits, codes, Q + i * head_dim);
    load_head_row(row + D, head_dim, bits, codes, K + i * head_dim);
    float* v = O;  // temporary row, transposed into Vt
    load_head_row(row + 2 * D, head_dim, bits, codes, v);
    for (int64_t d = 0; d < head_dim; ++d) Vt[d * T + i] = v[d];
  }
  const float scale = static_cast<float>(std::pow(static_cast<double>(head_dim), -0.5));
  const float levels = bits > 0 ? static_cast<float>((1 << bits) - 1) : 0.0f;
  for (int64_t i0 = 0; i0 < T; i0 += qb) {
    const int64_t nb = std::min(qb, T - i0);
    linear_f32(Q + i0 * head_dim, nb, head_dim, K, nullptr, T, S, 1);  // S[i, j] = q_i . k_j
    for (int64_t i = 0; i < nb; ++i) {
      float* s = S + i * T;
      float mx = -INFINITY;
      for (int64_t j = 0; j < T; ++j) {
        s[j] = s[j] * scale;
        mx = std::max(mx, s[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < T; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < T; ++j) s[j] = s[j] * inv;
      if (bits > 0)
        for (int64_t j = 0; j < T; ++j) s[j] = std::min(std::max(std::nearbyint(s[j] * levels), 0.0f), levels) / levels;
    }
    linear_f32(S, nb, T, Vt, nullptr, head_dim, O, 1);  // O[i, d] = sum_j p_ij v_jd
    for (int64_t i = 0; i < nb; ++i)
      std::memcpy(out + (n * T + i0 + i) * D + h * head_dim, O + i * head_dim,
                  sizeof(float) * static_cast<size_t>(head_dim));
  }
}

}  // namespace ref
}  // namespace robuq
