// The avx2 tier's quantized linear (robuq/qlinear.h) for ternary and int4 weights with quantized activations:
//  1. per token (threads split the tokens): rot = x @ H and its codes, scale and zero (AVX2, bit-identical to
//     the reference), and, with a low-rank branch, u = rot @ down^T while the row is in L1 (each u[t, j] one
//     dot product over 8 interleaved lanes of fused multiply-adds, merged pairwise);
//  2. the integer GEMM straight from the file layout (ternary: table lookups; int4: vpmaddubsw), whose tiles go
//     through the epilogue (qlinear_avx2.h: float64 dequantization, + u @ up^T, + bias).
// Nothing is unpacked at load time. Other formats (int8 weights, float activations) run the generic kernels.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "qlinear_avx2.h"
#include "robuq/aligned.h"
#include "robuq/avx2.h"
#include "robuq/avx512.h"
#include "robuq/profile.h"
#include "simd_avx2.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace robuq {
namespace avx2 {
namespace {

constexpr int64_t kMinRowWorkPerThread = int64_t(1) << 15;  // floats per thread for the per-token pass

// u[j] = rot . down[j] for j < R: 8 lanes (element k in lane k % 8) of fused multiply-adds, k ascending, merged
// pairwise. Every output is that one chain whatever is computed beside it, so the forms below give the same bits.
// NT tokens (rows rot[t], outputs u[t]) x NJ rows of down per pass: NT = 2, NJ = 4 keeps 8 independent chains
// (both FMA pipes) and the 4 rows' slice of down in L1 for the second token; one token alone runs NJ = 4.
template <int NT, int NJ>
void down_rows(const float* const* rot, int64_t n, const float* down, float* const* u, int64_t j0) {
  const int64_t n8 = n / 8 * 8;
  __m256 acc[NT][NJ];
  for (int t = 0; t < NT; ++t)
    for (int j = 0; j < NJ; ++j) acc[t][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n8; k += 8) {
    __m256 x[NT];
    for (int t = 0; t < NT; ++t) x[t] = _mm256_loadu_ps(rot[t] + k);
    for (int j = 0; j < NJ; ++j) {
      __m256 w = _mm256_loadu_ps(down + (j0 + j) * n + k);
      if constexpr (NT > 1) __asm__("" : "+x"(w));  // one load for the NT fmas (GCC folds it into each: NT loads)
      for (int t = 0; t < NT; ++t) acc[t][j] = _mm256_fmadd_ps(x[t], w, acc[t][j]);
    }
  }
  if (n8 < n) {
    alignas(32) float w[8];
    for (int t = 0; t < NT; ++t) {
      alignas(32) float tail[8];
      for (int l = 0; l < 8; ++l) tail[l] = n8 + l < n ? rot[t][n8 + l] : 0.0f;
      const __m256 x = _mm256_load_ps(tail);
      for (int j = 0; j < NJ; ++j) {
        for (int l = 0; l < 8; ++l) w[l] = n8 + l < n ? down[(j0 + j) * n + n8 + l] : 0.0f;
        acc[t][j] = _mm256_fmadd_ps(x, _mm256_load_ps(w), acc[t][j]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    if constexpr (NJ == 4)
      _mm_storeu_ps(u[t] + j0, simd::pairwise_sum8x4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
    else
      for (int j = 0; j < NJ; ++j) u[t][j0 + j] = simd::pairwise_sum8(acc[t][j]);
  }
}

// down_project for nt (1 or 2) tokens: rot[t] . down[j] -> u[t][j].
void down_project(const float* const* rot, int nt, int64_t n, const float* down, int64_t R, float* const* u) {
  using Fn = void (*)(const float* const*, int64_t, const float*, float* const*, int64_t);
  static constexpr Fn one[4] = {down_rows<1, 1>, down_rows<1, 2>, down_rows<1, 3>, down_rows<1, 4>};
  static constexpr Fn two[4] = {down_rows<2, 1>, down_rows<2, 2>, down_rows<2, 3>, down_rows<2, 4>};
  for (int64_t j0 = 0; j0 < R; j0 += 4) {
    const int64_t nj = R - j0 < 4 ? R - j0 : 4;
    (nt == 2 ? two : one)[nj - 1](rot, n, down, u, j0);
  }
}

struct Scratch {  // 64-byte aligned: the kernels read and write their rows 64 bytes at a time
  aligned_vector<uint8_t> codes;
  aligned_vector<float> scale, zero, u, rows;
};
thread_local Scratch tl_scratch;

template <class T>
T* grow(aligned_vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

void qlinear_forward(const QLinearDesc& d, const generic::Prepared& p, const float* x, int64_t T, float* y, int threads,
                     PostOp post, Tier tier) {
  const bool avx512 = tier_uses_avx512_kernels(tier);
  if (!p.direct) {
    generic::qlinear_forward(d, p, x, T, y, threads);
    if (post == PostOp::GeluTanh) {
      [[maybe_unused]] const int nt = detail::useful_threads(threads, T * d.out, kMinRowWorkPerThread);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
      for (int64_t t = 0; t < T; ++t) gelu_tanh(y + t * d.out, d.out);
    }
    return;
  }
  const int64_t n = d.in, R = d.rank;
  Scratch& s = tl_scratch;
  uint8_t* codes = grow(s.codes, static_cast<size_t>(T * n));
  float* scale = grow(s.scale, static_cast<size_t>(T));
  float* zero = grow(s.zero, static_cast<size_t>(T));
  float* u = R > 0 ? grow(s.u, static_cast<size_t>(T * R)) : nullptr;

  // 1. Hadamard + quantize (+ down-projection) per token: for ternary weights inside the GEMM's parallel pass
  // over the tokens (one parallel region per layer), else token-parallel here.
  const int64_t per = (n + std::max<int64_t>(d.plan.scratch_size(), 1) + 15) / 16 * 16;  // rows stay aligned
  const int nt1 = std::max(1, threads);
  float* rows = grow(s.rows, static_cast<size_t>(nt1 * 2 * per));  // two rows per thread (token pairs)
  const RowTransform transform(d.plan);
  struct Prep final : RowPrep {
    const QLinearDesc* d;
    const RowTransform* transform;
    const float* x;
    float *rows, *scale, *zero, *u;
    uint8_t* codes;
    int64_t per;
    double share;  // profiling: a thread-second counts 1 / threads of a second of wall time
    bool avx512;   // the avx512 tier's Hadamard transform (bit-identical)
    // Hadamard transform of token t into rot (rot + n: its scratch)
    void rotate(int64_t t, float* rot) const {
      const int64_t n = d->in;
#ifdef ROBUQ_HAVE_AVX512
      if (avx512 && avx512::hadamard_row(d->plan, transform->signs(), x + t * n, rot, rot + n)) return;
#endif
      (*transform)(x + t * n, rot, rot + n);
    }
    // codes, scale and zero of tokens t .. t + nt - 1 (nt = 1 or 2) from their transformed rows
    void quantize(const float* const* rot, int64_t t, int nt) const {
      const int64_t n = d->in;
      const int bits = d->act_bits;
      const float k = d->clip_k;
#ifdef ROBUQ_HAVE_AVX512
      if (avx512) {
        if (nt == 2)
          avx512::quantize_rows2(rot[0], rot[1], n, bits, k, codes + t * n, codes + (t + 1) * n, scale + t, zero + t);
        else
          avx512::quantize_row(rot[0], n, bits, k, codes + t * n, scale + t, zero + t);
        return;
      }
#endif
      if (nt == 2)
        quantize_rows2(rot[0], rot[1], n, bits, k, codes + t * n, codes + (t + 1) * n, scale + t, zero + t);
      else
        quantize_row(rot[0], n, bits, k, codes + t * n, scale + t, zero + t);
    }
    void operator()(int64_t t0, int64_t cnt, int tid) const override {
      const double start = profile::enabled() ? profile::now() : -1.0;
      const int64_t n = d->in, R = d->rank;
      float* const rot[2] = {rows + tid * 2 * per, rows + tid * 2 * per + per};
      for (int64_t t = t0; t < t0 + cnt; t += 2) {
        const int nt = t + 1 < t0 + cnt ? 2 : 1;
        for (int i = 0; i < nt; ++i) rotate(t + i, rot[i]);
        quantize(rot, t, nt);
        if (R > 0) {
          float* const ut[2] = {u + t * R, u + (t + 1) * R};
          down_project(rot, nt, n, d->down, R, ut);
        }
      }
      if (start >= 0) profile::add(profile::HadamardQuantize, (profile::now() - start) * share);
    }
  } prep;
  prep.d = &d;
  prep.transform = &transform;
  prep.x = x;
  prep.rows = rows;
  prep.scale = scale;
  prep.zero = zero;
  prep.u = u;
  prep.codes = codes;
  prep.per = per;
  prep.share = 1.0 / nt1;
  prep.avx512 = avx512;
  const bool fused = d.format == WeightFormat::Ternary;
  if (!fused) {
    [[maybe_unused]] const int nt = detail::useful_threads(threads, T * n, kMinRowWorkPerThread);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < T; t += 2) {
      int tid = 0;
#ifdef _OPENMP
      tid = omp_get_thread_num();
#endif
      prep(t, std::min<int64_t>(2, T - t), tid);
    }
  }

  // 2. Integer GEMM with the epilogue fused into its tiles.
  QEpilogue e;
  e.y = y;
  e.out = d.out;
  e.scale_x = scale;
  e.zero_x = zero;
  e.s_w = d.scale;
  e.wsum = d.wsum;
  e.bias = d.bias;
  e.u = u;
  e.rank = R;
  e.up = d.up;
  e.gelu = post == PostOp::GeluTanh;
#ifdef ROBUQ_HAVE_AMX
  if (tier == Tier::Amx && d.format == WeightFormat::Ternary) {
    amx::ternary_gemm(codes, T, d.act_bits, d.packed, d.out, n, d.wsum, e, threads, &prep);
    return;
  }
#endif
#ifdef ROBUQ_HAVE_AVX512
  if (avx512 && d.format == WeightFormat::Ternary && avx512::ternary_gemm_supported(d.act_bits)) {
    avx512::ternary_gemm(codes, T, d.act_bits, d.packed, d.out, n, d.wsum, e, threads, &prep);
    return;
  }
#else
  (void)avx512;
#endif
  if (d.format == WeightFormat::Ternary)
    ternary_gemm(codes, T, d.act_bits, d.packed, d.out, n, d.wsum, e, threads, &prep);
  else
    int4_gemm(codes, T, d.packed, d.out, n, e, threads);
}

void release_qlinear_scratch() { tl_scratch = Scratch(); }

}  // namespace avx2
}  // namespace robuq
