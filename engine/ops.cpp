// DiT operations besides the linears (see ops.h).
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "robuq/avx2.h"
#include "robuq/avx512.h"
#include "robuq/cpu.h"
#include "robuq/qlinear.h"
#include "robuq/quant.h"

namespace robuq {
namespace ops {

namespace {
constexpr int64_t kQueryBlock = 64;  // attention: query rows scored at once

constexpr int64_t kMinWorkPerThread = int64_t(1) << 15;  // floats (or MACs) per thread worth a team

// Threads worth waking for `work` units (small passes stay on the calling thread).
int team(int threads, int64_t work) {
  const int64_t by_work = work / kMinWorkPerThread;
  if (by_work < 2) return 1;
  return by_work < threads ? static_cast<int>(by_work) : threads;
}

// The avx2 tier's kernels (robuq/avx2.h) run these ops when that tier or the avx512 tier is active.
bool use_avx2() {
#ifdef ROBUQ_HAVE_AVX2
  return tier_uses_avx2_kernels(active_tier());
#else
  return false;
#endif
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
}  // namespace

void timestep_embedding(const int64_t* t, int64_t N, float* out) {
  const int64_t half = kFreqDim / 2;
  // torch: (-math.log(10000) * arange(half, float32)) / half, exp, all float32 (the scalar is rounded to
  // float32 first).
  const float neg_log = static_cast<float>(-std::log(10000.0));
  float freqs[kFreqDim / 2];
  for (int64_t i = 0; i < half; ++i) freqs[i] = std::exp((neg_log * static_cast<float>(i)) / static_cast<float>(half));
  for (int64_t n = 0; n < N; ++n) {
    const float tn = static_cast<float>(t[n]);
    float* o = out + n * kFreqDim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = tn * freqs[i];
      o[i] = std::cos(a);
      o[half + i] = std::sin(a);
    }
  }
}

void silu(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu_tanh(float* x, int64_t n, int threads) {
  if (use_avx2()) {
    // elementwise: any split gives the same values; chunks of whole vectors
    const int nt = team(threads, n);
    const int64_t chunk = ((n + nt - 1) / nt + 7) / 8 * 8;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int i = 0; i < nt; ++i) {
      const int64_t a = std::min<int64_t>(n, i * chunk), b = std::min<int64_t>(n, a + chunk);
      avx2::gelu_tanh(x + a, b - a);
    }
    return;
  }
  const int nt = team(threads, n);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_tanh_scalar(x[i]);
}

void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out) {
  const int64_t g = S / p, F = C * p * p;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < g; ++i)
      for (int64_t j = 0; j < g; ++j) {
        float* o = out + ((n * g + i) * g + j) * F;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t pr = 0; pr < p; ++pr) {
            const float* src = x + ((n * C + c) * S + i * p + pr) * S + j * p;
            std::memcpy(o + (c * p + pr) * p, src, sizeof(float) * static_cast<size_t>(p));
          }
      }
}

void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out) {
  const int64_t S = grid * p, F = p * p * C;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < grid; ++i)
      for (int64_t j = 0; j < grid; ++j) {
        const float* f = feats + ((n * grid + i) * grid + j) * F;
        for (int64_t pr = 0; pr < p; ++pr)
          for (int64_t pc = 0; pc < p; ++pc)
            for (int64_t c = 0; c < C; ++c)
              out[((n * C + c) * S + i * p + pr) * S + j * p + pc] = f[(pr * p + pc) * C + c];
      }
}


void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, int threads) {
  const int64_t rows = N * T;
  const int nt = team(threads, rows * D);
  const bool vec = use_avx2();
  // dynamic chunks of rows: a core slowed by another tenant takes fewer (each row's result is the same)
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / T;
    const float* xr = x + r * D;
    float* yr = y + r * D;
    const float* sh = shift + n * stride;
    const float* sc = scale + n * stride;
    if (vec) {
      avx2::layernorm_modulate_row(xr, D, sh, sc, yr);
      continue;
    }
    const double mean = ref::lane_sum(xr, D, 0.0, false) / static_cast<double>(D);
    const double var = ref::lane_sum(xr, D, mean, true) / static_cast<double>(D);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(kLayerNormEps)));
    const float m = static_cast<float>(mean);
    for (int64_t k = 0; k < D; ++k) yr[k] = ((xr[k] - m) * rstd) * (1.0f + sc[k]) + sh[k];
  }
}

void gated_residual(float* x, const float* b, const float* gate, int64_t stride, int64_t N, int64_t T, int64_t D,
                    int threads) {
  const int64_t rows = N * T;
  const int nt = team(threads, rows * D);
  const bool vec = use_avx2();
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + (r / T) * stride;
    float* xr = x + r * D;
    const float* br = b + r * D;
    if (vec) {
      avx2::gated_residual_row(xr, br, g, D);
      continue;
    }
    for (int64_t k = 0; k < D; ++k) xr[k] = xr[k] + g[k] * br[k];
  }
}

size_t attention_scratch_floats(int64_t T, int64_t head_dim) {
  // Q, K: [T, head_dim]; V^T: [head_dim, T]; scores: [kQueryBlock, T]; head output: [kQueryBlock, head_dim]; codes row. Enough
  // for the avx2 tier's layout too, so the workspace fits whichever tier runs.
  const int64_t qb = std::min(T, kQueryBlock);
  const size_t generic = static_cast<size_t>(3 * T * head_dim + qb * T + qb * head_dim + head_dim);
#ifdef ROBUQ_HAVE_AVX2
  return std::max(generic, avx2::attention_scratch_floats(T, head_dim));
#else
  return generic;
#endif
}

namespace {

// dst[head_dim] = fake-quantized src (per row minmax, ref arithmetic), or a copy when bits == 0.
void load_head_row(const float* src, int64_t head_dim, int bits, uint8_t* codes, float* dst) {
  if (bits == 0) {
    std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(head_dim));
    return;
  }
  float s, z;
  ref::quantize_row(src, head_dim, bits, 0.0f, codes, &s, &z);
  for (int64_t d = 0; d < head_dim; ++d) dst[d] = (static_cast<float>(codes[d]) - z) * s;
}

void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits, float* out,
                    float* scratch) {
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
      std::memcpy(out + (n * T + i0 + i) * D + h * head_dim, O + i * head_dim, sizeof(float) * static_cast<size_t>(head_dim));
  }
}

}  // namespace

void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim, int bits, float* out, float* scratch,
               int threads) {
  const size_t per = attention_scratch_floats(T, head_dim);
  const int64_t tasks = N * H;
  const int nt = std::min<int64_t>(team(threads, tasks * T * T * head_dim), tasks);
  const bool vec = use_avx2();
#ifdef ROBUQ_HAVE_AVX512
  const bool vec512 = active_tier() == Tier::Avx512;  // the same bits as avx2, 16 wide
#else
  const bool vec512 = false;
#endif
  // heads from a shared counter: a thread slowed by another tenant takes fewer (each head is one task, so the
  // results are the same for any split)
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    float* s = scratch + static_cast<size_t>(thread_index()) * per;
#ifdef ROBUQ_HAVE_AVX512
    if (vec512) {
      avx512::attention_head(qkv, task / H, task % H, T, H, head_dim, bits, out, s);
      continue;
    }
#endif
    if (vec)
      avx2::attention_head(qkv, task / H, task % H, T, H, head_dim, bits, out, s);
    else
      attention_head(qkv, task / H, task % H, T, H, head_dim, bits, out, s);
  }
}

}  // namespace ops
}  // namespace robuq
