// AVX2 float32 GEMM (robuq/avx2.h): B packed as panels of 16 outputs x K, a register-resident micro-kernel of
// up to 6 rows x 16 outputs (12 accumulators), each output one chain of fused multiply-adds over k ascending
// from 0. Which tile an output lands in, how the work is split among threads and how many rows a call has
// change nothing in that chain, so results depend on neither the thread count nor T.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "robuq/avx2.h"

namespace robuq {
namespace avx2 {
namespace {

constexpr int kPanel = 16;  // outputs per panel
constexpr int kRows = 6;    // rows (tokens) per micro-tile

// out[i * ldo + j] = sum_k x_i[k] * P(j, k) for 6 rows x_i (pointers; a tile with fewer rows repeats one and
// drops its results), j < 16 (kTwo) or j < 8. Named accumulators: GCC keeps them in registers (arrays of
// vectors it spilled on every iteration).
template <bool kTwo>
void micro6(const float* const xr[kRows], const float* p, int64_t K, float* out, int64_t ldo, int mt) {
  const float *x0 = xr[0], *x1 = xr[1], *x2 = xr[2], *x3 = xr[3], *x4 = xr[4], *x5 = xr[5];
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
  __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0;
  for (int64_t k = 0; k < K; ++k) {
    const float* pk = p + k * kPanel;
    const __m256 w0 = _mm256_loadu_ps(pk);
    __m256 w1 = w0;
    if (kTwo) w1 = _mm256_loadu_ps(pk + 8);
#define ROBUQ_ROW(i)                                 \
  {                                                  \
    const __m256 xb = _mm256_broadcast_ss(x##i + k); \
    a##i = _mm256_fmadd_ps(xb, w0, a##i);            \
    if (kTwo) b##i = _mm256_fmadd_ps(xb, w1, b##i);  \
  }
    ROBUQ_ROW(0) ROBUQ_ROW(1) ROBUQ_ROW(2) ROBUQ_ROW(3) ROBUQ_ROW(4) ROBUQ_ROW(5)
#undef ROBUQ_ROW
  }
  const __m256 av[kRows] = {a0, a1, a2, a3, a4, a5}, bv[kRows] = {b0, b1, b2, b3, b4, b5};
  for (int i = 0; i < mt; ++i) {
    _mm256_storeu_ps(out + i * ldo, av[i]);
    if (kTwo) _mm256_storeu_ps(out + i * ldo + 8, bv[i]);
  }
}

// Rows t0 .. t1 of y against panel p (outputs 16p .. 16p + nr).
void panel_rows(const float* x, int64_t ldx, int64_t t0, int64_t t1, const float* panel, int64_t nr, int64_t K,
                float* y, int64_t ldy) {
  alignas(32) float tmp[kRows * kPanel];
  const bool two = nr > 8;
  for (int64_t t = t0; t < t1; t += kRows) {
    const int mt = static_cast<int>(std::min<int64_t>(kRows, t1 - t));
    const float* xr[kRows];
    for (int i = 0; i < kRows; ++i) xr[i] = x + (t + std::min(i, mt - 1)) * ldx;
    const bool direct = nr == kPanel || nr == 8;
    float* dst = direct ? y + t * ldy : tmp;
    const int64_t ldd = direct ? ldy : kPanel;
    if (two)
      micro6<true>(xr, panel, K, dst, ldd, mt);
    else
      micro6<false>(xr, panel, K, dst, ldd, mt);
    if (!direct)
      for (int i = 0; i < mt; ++i)
        std::memcpy(y + (t + i) * ldy, tmp + i * kPanel, sizeof(float) * static_cast<size_t>(nr));
  }
}

constexpr int64_t kMinMacsPerThread = int64_t(1) << 18;
constexpr int64_t kTokBlock = 96;  // rows per work item (a multiple of kRows)

}  // namespace

void pack_panels_rows(const float* W, int64_t ldw, int64_t R, int64_t K, float* panels) {
  const int64_t np = (R + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < np; ++p) {
    float* dst = panels + p * K * kPanel;
    const int64_t r0 = p * kPanel, nr = std::min<int64_t>(kPanel, R - r0);
    if (nr < kPanel) std::memset(dst, 0, sizeof(float) * static_cast<size_t>(K * kPanel));
    for (int64_t i = 0; i < nr; ++i) {
      const float* src = W + (r0 + i) * ldw;
      for (int64_t k = 0; k < K; ++k) dst[k * kPanel + i] = src[k];
    }
  }
}

void pack_panels_cols(const float* V, int64_t ldv, int64_t R, int64_t K, float* panels) {
  const int64_t np = (R + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < np; ++p) {
    float* dst = panels + p * K * kPanel;
    const int64_t r0 = p * kPanel, nr = std::min<int64_t>(kPanel, R - r0);
    for (int64_t k = 0; k < K; ++k) {
      std::memcpy(dst + k * kPanel, V + k * ldv + r0, sizeof(float) * static_cast<size_t>(nr));
      if (nr < kPanel) std::memset(dst + k * kPanel + nr, 0, sizeof(float) * static_cast<size_t>(kPanel - nr));
    }
  }
}

void gemm_panels(const float* x, int64_t ldx, int64_t T, const float* panels, int64_t R, int64_t K, float* y,
                 int64_t ldy) {
  const int64_t np = (R + kPanel - 1) / kPanel;
  for (int64_t p = 0; p < np; ++p)
    panel_rows(x, ldx, 0, T, panels + p * K * kPanel, std::min<int64_t>(kPanel, R - p * kPanel), K, y + p * kPanel,
               ldy);
}

void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads) {
  const int64_t np = (out + kPanel - 1) / kPanel;
  std::vector<float> panels(static_cast<size_t>(np * in * kPanel));
  const int64_t tb = (T + kTokBlock - 1) / kTokBlock;
  const int64_t items = np * tb;
  [[maybe_unused]] int nt = 1;
  if (threads > 1) {
    const int64_t by_work = T * out * in / kMinMacsPerThread;
    nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(threads), by_work, items})));
  }
  float* P = panels.data();
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t p = 0; p < np; ++p)
      pack_panels_rows(W + p * kPanel * in, in, std::min<int64_t>(kPanel, out - p * kPanel), in, P + p * in * kPanel);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      // Consecutive items share a panel (it stays in cache); rows of x stream.
      const int64_t p = it / tb, t0 = (it % tb) * kTokBlock, t1 = std::min(T, t0 + kTokBlock);
      const int64_t r0 = p * kPanel, nr = std::min<int64_t>(kPanel, out - r0);
      panel_rows(x, in, t0, t1, P + p * in * kPanel, nr, in, y + r0, out);
      if (b != nullptr)
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t r = 0; r < nr; ++r) y[t * out + r0 + r] = y[t * out + r0 + r] + b[r0 + r];
    }
  }
}

}  // namespace avx2
}  // namespace robuq
