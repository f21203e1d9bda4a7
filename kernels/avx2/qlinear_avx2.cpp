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
// pairwise. Four rows of down per pass share the loads of rot.
void down_project(const float* rot, int64_t n, const float* down, int64_t R, float* u) {
  const int64_t n8 = n / 8 * 8;
  alignas(32) float tail[8];
  for (int64_t j0 = 0; j0 < R; j0 += 4) {
    const int nj = static_cast<int>(std::min<int64_t>(4, R - j0));
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t k = 0; k < n8; k += 8) {
      const __m256 x = _mm256_loadu_ps(rot + k);
      for (int j = 0; j < nj; ++j) acc[j] = _mm256_fmadd_ps(x, _mm256_loadu_ps(down + (j0 + j) * n + k), acc[j]);
    }
    if (n8 < n) {
      for (int l = 0; l < 8; ++l) tail[l] = n8 + l < n ? rot[n8 + l] : 0.0f;
      const __m256 x = _mm256_load_ps(tail);
      alignas(32) float w[8];
      for (int j = 0; j < nj; ++j) {
        for (int l = 0; l < 8; ++l) w[l] = n8 + l < n ? down[(j0 + j) * n + n8 + l] : 0.0f;
        acc[j] = _mm256_fmadd_ps(x, _mm256_load_ps(w), acc[j]);
      }
    }
    for (int j = 0; j < nj; ++j) u[j0 + j] = simd::pairwise_sum8(acc[j]);
  }
}

struct Scratch {
  std::vector<uint8_t> codes;
  std::vector<float> scale, zero, u, rows;
};
thread_local Scratch tl_scratch;

template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

void qlinear_forward(const QLinearDesc& d, const generic::Prepared& p, const float* x, int64_t T, float* y, int threads,
                     PostOp post, bool avx512) {
  if (!p.direct) {
    generic::qlinear_forward(d, p, x, T, y, threads);
    if (post == PostOp::GeluTanh) {
      const int nt = detail::useful_threads(threads, T * d.out, kMinRowWorkPerThread);
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
  const int64_t per = n + std::max<int64_t>(d.plan.scratch_size(), 1);
  const int nt1 = std::max(1, threads);
  float* rows = grow(s.rows, static_cast<size_t>(nt1 * per));
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
    void operator()(int64_t t, int tid) const override {
      const double t0 = profile::enabled() ? profile::now() : -1.0;
      const int64_t n = d->in;
      float* rot = rows + tid * per;
#ifdef ROBUQ_HAVE_AVX512
      if (avx512) {
        if (!avx512::hadamard_row(d->plan, transform->signs(), x + t * n, rot, rot + n))
          (*transform)(x + t * n, rot, rot + n);
        avx512::quantize_row(rot, n, d->act_bits, d->clip_k, codes + t * n, scale + t, zero + t);
      } else
#endif
      {
        (*transform)(x + t * n, rot, rot + n);
        quantize_row(rot, n, d->act_bits, d->clip_k, codes + t * n, scale + t, zero + t);
      }
      if (d->rank > 0) down_project(rot, n, d->down, d->rank, u + t * d->rank);
      if (t0 >= 0) profile::add(profile::HadamardQuantize, (profile::now() - t0) * share);
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
    const int nt = detail::useful_threads(threads, T * n, kMinRowWorkPerThread);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < T; ++t) {
      int tid = 0;
#ifdef _OPENMP
      tid = omp_get_thread_num();
#endif
      prep(t, tid);
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
