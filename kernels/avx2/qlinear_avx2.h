// Internal to the avx2 tier: the quantized linear's epilogue as the integer GEMMs apply it per tile, and the
// GEMM entry points that take it. Include only from kernels/avx2/*.cpp (AVX2 intrinsics inline).
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../qlinear_tiers.h"
#include "robuq/avx2.h"
#include "simd_avx2.h"

namespace robuq {
namespace avx2 {

// (kernels/avx512/ reads these fields and has its own copy of the arithmetic: it must never call the inline
// members, whose copies built with AVX-512 flags could then stand in for these.)
// What an integer GEMM does with the exact sums acc[t, r] = sum_k q[t, k] w[r, k] of a tile:
//  acc mode (acc != null): store them.
//  y mode: y[t, r] = float(scale_x[t] * s_w[r] * (acc - zero_x[t] * wsum[r]))   (float64: the shared epilogue,
//                                                                  detail::qlinear_epilogue, bit for bit)
//          then y + v with v = sum_j u[t, j] up[r, j] (low-rank up-projection with gemm_panels: one chain of
//          fused multiply-adds over j ascending), then y + bias[r].
struct QEpilogue {
  int32_t* acc = nullptr;  // [T, out], acc mode
  float* y = nullptr;      // [T, out], y mode
  int64_t out = 0;
  const float* scale_x = nullptr;  // [T]
  const float* zero_x = nullptr;   // [T]
  const float* s_w = nullptr;      // [out]
  const int32_t* wsum = nullptr;   // [out]
  const float* bias = nullptr;     // [out] or null
  const float* u = nullptr;        // [T, rank] or null
  int64_t rank = 0;
  const float* up = nullptr;  // [out, rank]
  bool gelu = false;          // then y = GELU(y) (simd::gelu8, avx2::gelu_tanh's arithmetic)

  static int64_t ld(int64_t nr) { return (nr + 15) / 16 * 16; }
  // Floats of per-thread scratch for blocks of up to nr outputs and tiles of up to kTileRows tokens: the
  // up-projection rows of the block as gemm_panels panels, and the tile's low-rank values.
  static constexpr int64_t kTileRows = 6;
  int64_t block_scratch(int64_t nr) const { return u != nullptr ? (rank + kTileRows) * ld(nr) : 0; }

  // Before the tiles of outputs r0 .. r0 + nr: pack up[r0 .. r0 + nr, :] into panels (scratch).
  void block_begin(int64_t r0, int64_t nr, float* scratch) const {
    if (u == nullptr || y == nullptr) return;
    pack_panels_rows(up + r0 * rank, rank, nr, rank, scratch);
  }

  // Outputs r0 .. r0 + nr of tokens t0 .. t0 + mt (mt <= kTileRows) from their exact sums
  // a[i * lda + (0 .. nr)].
  void tile(int64_t t0, int64_t mt, int64_t r0, int64_t nr, const int32_t* a, int64_t lda, float* scratch) const {
    if (acc != nullptr) {
      for (int64_t i = 0; i < mt; ++i)
        std::memcpy(acc + (t0 + i) * out + r0, a + i * lda, sizeof(int32_t) * static_cast<size_t>(nr));
      return;
    }
    const float* v = nullptr;  // low-rank values [mt, ld(nr)]
    if (u != nullptr) {
      float* vb = scratch + rank * ld(nr);
      gemm_panels(u + t0 * rank, rank, mt, scratch, nr, rank, vb, ld(nr));
      v = vb;
    }
    // 8 outputs at a time, their float64 weight operands converted once for the tile's tokens.
    // acc - zx * wsum is one fnmadd: the product is exact (a 24-bit float times |wsum| < 2^23, which the
    // int32 bound on 255 * in * max |code| implies), so the fused form rounds once, as the subtraction of the
    // rounded product does.
    alignas(32) double sxd[kTileRows], zxd[kTileRows];
    for (int64_t k = 0; k < mt; ++k) {
      sxd[k] = static_cast<double>(scale_x[t0 + k]);
      zxd[k] = static_cast<double>(zero_x[t0 + k]);
    }
    int64_t i = 0;
    for (; i + 8 <= nr; i += 8) {
      const int64_t r = r0 + i;
      const __m256d ws0 = _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wsum + r)));
      const __m256d ws1 = _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wsum + r + 4)));
      const __m256d sw0 = _mm256_cvtps_pd(_mm_loadu_ps(s_w + r));
      const __m256d sw1 = _mm256_cvtps_pd(_mm_loadu_ps(s_w + r + 4));
      for (int64_t k = 0; k < mt; ++k) {
        const __m256d sx = _mm256_broadcast_sd(sxd + k), zx = _mm256_broadcast_sd(zxd + k);
        const int32_t* ak = a + k * lda + i;
        const __m256d d0 =
            _mm256_fnmadd_pd(zx, ws0, _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ak))));
        const __m256d d1 =
            _mm256_fnmadd_pd(zx, ws1, _mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ak + 4))));
        __m256 f = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(sx, sw1), d1)),
                                   _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(sx, sw0), d0)));
        if (v != nullptr) f = _mm256_add_ps(f, _mm256_loadu_ps(v + k * ld(nr) + i));
        if (bias != nullptr) f = _mm256_add_ps(f, _mm256_loadu_ps(bias + r));
        _mm256_storeu_ps(y + (t0 + k) * out + r, f);
      }
    }
    for (int64_t k = 0; i < nr && k < mt; ++k) {  // the last nr % 8 outputs
      const int64_t t = t0 + k;
      float* yr = y + t * out + r0;
      for (int64_t j = i; j < nr; ++j) {
        const int64_t r = r0 + j;
        float f = detail::qlinear_epilogue(a[k * lda + j], scale_x[t], zero_x[t], s_w[r], wsum[r]);
        if (v != nullptr) f = f + v[k * ld(nr) + j];
        if (bias != nullptr) f = f + bias[r];
        yr[j] = f;
      }
    }
    // GELU as a second pass over the tile's rows (in L1): its long dependency chain then shares the
    // out-of-order window with nothing else
    if (gelu)
      for (int64_t k = 0; k < mt; ++k) gelu_tanh(y + (t0 + k) * out + r0, nr);
  }
};

// Makes rows t0 .. t0 + n - 1 of the activation codes (and whatever else the epilogue reads of those tokens) on
// thread `tid` (< the GEMM's thread count). Lets a GEMM quantize each token in the parallel pass that first
// reads it; a range lets the preparation work on two tokens at once (the low-rank down-projection shares its
// weight loads between them). Each token's results are the same whatever the range.
struct RowPrep {
  virtual ~RowPrep() = default;
  virtual void operator()(int64_t t0, int64_t n, int tid) const = 0;
};

// Ternary weights in the file layout (robuq/pack.h) x activation codes of `bits` bits (table-lookup GEMM,
// ternary_gemm_avx2.cpp); wsum = the rows' code sums. The tiles go through e. With prep, the rows of q are made
// by (*prep)(t0, n, tid) inside the GEMM's parallel region, before anything reads them.
void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const QEpilogue& e, int threads, const RowPrep* prep);

// int4 weights in the file layout (two codes per byte, low nibble first) x activation codes (any of 1..8
// bits): exact int32 sums through e (int4_gemm_avx2.cpp).
void int4_gemm(const uint8_t* q, int64_t T, const uint8_t* packed, int64_t out, int64_t in, const QEpilogue& e,
               int threads);

}  // namespace avx2
}  // namespace robuq
