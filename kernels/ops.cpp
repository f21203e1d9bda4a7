// The DiT's per-token / per-head operations (robuq/ops.h): the run-time choice of tier and the split over
// threads. The arithmetic is in kernels/ref/ops_ref.cpp (reference and generic tiers), kernels/avx2 and
// kernels/avx512.
#include "robuq/ops.h"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "qlinear_tiers.h"
#include "robuq/avx2.h"
#include "robuq/avx512.h"
#include "robuq/cpu.h"

namespace robuq {
namespace ops {

namespace {
constexpr int64_t kMinWorkPerThread = int64_t(1) << 15;  // floats (or MACs) per thread worth a team

// Threads worth waking for `work` units (small passes stay on the calling thread).
int team(int threads, int64_t work) { return detail::useful_threads(threads, work, kMinWorkPerThread); }

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

void gelu_tanh(float* x, int64_t n, int threads) {
  const int nt = team(threads, n);
  // elementwise: any split gives the same values; chunks of whole vectors
  const int64_t chunk = ((n + nt - 1) / nt + 7) / 8 * 8;
  const bool vec = use_avx2();
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int i = 0; i < nt; ++i) {
    const int64_t a = std::min<int64_t>(n, i * chunk), b = std::min<int64_t>(n, a + chunk);
    if (vec)
      avx2::gelu_tanh(x + a, b - a);
    else
      ref::gelu_tanh(x + a, b - a);
  }
}

void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, int threads) {
  const int64_t rows = N * T;
  [[maybe_unused]] const int nt = team(threads, rows * D);
  if (use_avx2()) {
    // groups of 4 rows: their float64 statistics run as 4 interleaved chains (the same bits per row)
#ifdef ROBUQ_HAVE_AVX512
    const bool avx512 = tier_uses_avx512_kernels(active_tier());
#endif
    const int64_t groups = (rows + 3) / 4;
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if (nt > 1)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xs[4];
      const float *sh[4], *sc[4];
      float* ys[4];
      const int count = static_cast<int>(std::min<int64_t>(4, rows - 4 * g));
      for (int i = 0; i < count; ++i) {
        const int64_t r = 4 * g + i, n = r / T;
        xs[i] = x + r * D;
        ys[i] = y + r * D;
        sh[i] = shift + n * stride;
        sc[i] = scale + n * stride;
      }
#ifdef ROBUQ_HAVE_AVX512
      if (avx512) {
        avx512::layernorm_modulate_rows(count, xs, D, sh, sc, ys);
        continue;
      }
#endif
      avx2::layernorm_modulate_rows(count, xs, D, sh, sc, ys);
    }
    return;
  }
  // dynamic chunks of rows: a core slowed by another tenant takes fewer (each row's result is the same)
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / T;
    ref::layernorm_modulate_row(x + r * D, D, shift + n * stride, scale + n * stride, y + r * D);
  }
}

void gated_residual(float* x, const float* b, const float* gate, int64_t stride, int64_t N, int64_t T, int64_t D,
                    int threads) {
  const int64_t rows = N * T;
  [[maybe_unused]] const int nt = team(threads, rows * D);
  const bool vec = use_avx2();
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + (r / T) * stride;
    if (vec)
      avx2::gated_residual_row(x + r * D, b + r * D, g, D);
    else
      ref::gated_residual_row(x + r * D, b + r * D, g, D);
  }
}

size_t attention_scratch_floats(int64_t T, int64_t head_dim) {
  // enough for every tier's layout, so the workspace fits whichever tier runs
#ifdef ROBUQ_HAVE_AVX2
  return std::max(ref::attention_scratch_floats(T, head_dim), avx2::attention_scratch_floats(T, head_dim));
#else
  return ref::attention_scratch_floats(T, head_dim);
#endif
}

void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim, int bits, float* out,
               float* scratch, int threads) {
  const size_t per = attention_scratch_floats(T, head_dim);
  const int64_t tasks = N * H;
  [[maybe_unused]] const int nt = std::min<int64_t>(team(threads, tasks * T * T * head_dim), tasks);
  const bool vec = use_avx2();
#ifdef ROBUQ_HAVE_AVX512
  const bool vec512 = tier_uses_avx512_kernels(active_tier());  // the same bits as avx2, 16 wide
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
      ref::attention_head(qkv, task / H, task % H, T, H, head_dim, bits, out, s);
  }
}

}  // namespace ops
}  // namespace robuq
