// AVX2 GEMM of int4 weights in the file layout (docs/rq-format.md: two codes per byte, column 2j in the low
// nibble of byte j, 2j + 1 in the high one) x uint8 activation codes, for the adaLN modulation layers (W4A4;
// their input is one row per sample, so this is mostly a matrix-vector product and reads each weight byte
// once per call, straight from the mapped file: nothing is unpacked at load time).
//
// The activation codes are split once per call into even and odd columns (qe[j] = q[2j], qo[j] = q[2j + 1],
// zero padded). Per 32 weight bytes (64 weights): the low and high nibbles become signed int8 codes by
// vpshufb, vpmaddubsw(qe, w_lo) + vpmaddubsw(qo, w_hi) gives int16 pair sums (|.| <= 4 * 255 * 8 < 2^15: no
// saturation), vpmaddwd with ones widens them into int32. Integer sums are exact, so the split of rows among
// threads changes nothing.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "qlinear_avx2.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace robuq {
namespace avx2 {
namespace {

constexpr int64_t kRowBlock = 32;  // rows per work item
constexpr int kTok = 4;            // tokens per pass over a row

alignas(32) constexpr int8_t kNibble[32] = {0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1,
                                            0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1};

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// sums[i] = sum_k q_i[k] w[k] for MT tokens (qe / qo rows of ldq bytes), one weight row of pc bytes.
template <int MT>
void row_dot(const uint8_t* qs, int64_t ldq, const uint8_t* w, int64_t pc, int32_t* sums, int64_t lds) {
  const __m256i lut = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibble));
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256i acc[MT];
  for (int i = 0; i < MT; ++i) acc[i] = _mm256_setzero_si256();
  alignas(32) uint8_t tail[32];
  for (int64_t j = 0; j < pc; j += 32) {
    __m256i b;
    if (j + 32 <= pc) {
      b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j));
    } else {
      std::memset(tail, 0, 32);
      std::memcpy(tail, w + j, static_cast<size_t>(pc - j));
      b = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    const __m256i wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(b, low4));
    const __m256i wh = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), low4));
    for (int i = 0; i < MT; ++i) {
      const uint8_t* qe = qs + 2 * i * ldq;
      const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qe + j));
      const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qe + ldq + j));
      const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(e, wl), _mm256_maddubs_epi16(o, wh));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
    }
  }
  for (int i = 0; i < MT; ++i) sums[i * lds] = hsum_epi32(acc[i]);
}

using RowDot = void (*)(const uint8_t*, int64_t, const uint8_t*, int64_t, int32_t*, int64_t);

RowDot row_dot_for(int mt) {
  switch (mt) {
    case 1: return row_dot<1>;
    case 2: return row_dot<2>;
    case 3: return row_dot<3>;
    default: return row_dot<4>;
  }
}

}  // namespace

void int4_gemm(const uint8_t* q, int64_t T, const uint8_t* packed, int64_t out, int64_t in, const QEpilogue& e,
               int threads) {
  if (T <= 0 || out <= 0) return;
  const int64_t pc = (in + 1) / 2, ldq = (pc + 31) / 32 * 32;
  // Per token: its even codes (ldq bytes) then its odd codes; zero past the row.
  std::vector<uint8_t> qs(static_cast<size_t>(T * 2 * ldq), 0);
  for (int64_t t = 0; t < T; ++t) {
    uint8_t* qe = qs.data() + t * 2 * ldq;
    uint8_t* qo = qe + ldq;
    const uint8_t* qt = q + t * in;
    for (int64_t j = 0; j < pc; ++j) {
      qe[j] = qt[2 * j];
      qo[j] = 2 * j + 1 < in ? qt[2 * j + 1] : 0;
    }
  }
  const int64_t items = (out + kRowBlock - 1) / kRowBlock;
  const int64_t work = T * out * in;
  int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(threads), items, work / (int64_t(1) << 18)})));
  const int64_t epi_floats = e.block_scratch(kRowBlock);
  std::vector<int32_t> sums(static_cast<size_t>(nt * kTok * kRowBlock));
  std::vector<float> ebuf(static_cast<size_t>(std::max<int64_t>(1, nt * epi_floats)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t it = 0; it < items; ++it) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    int32_t* s = sums.data() + tid * kTok * kRowBlock;
    float* escr = ebuf.data() + tid * epi_floats;
    const int64_t r0 = it * kRowBlock, nr = std::min(kRowBlock, out - r0);
    e.block_begin(r0, nr, escr);
    for (int64_t t0 = 0; t0 < T; t0 += kTok) {
      const int mt = static_cast<int>(std::min<int64_t>(kTok, T - t0));
      const RowDot fn = row_dot_for(mt);
      for (int64_t r = 0; r < nr; ++r) fn(qs.data() + t0 * 2 * ldq, ldq, packed + (r0 + r) * pc, pc, s + r, kRowBlock);
      e.tile(t0, mt, r0, nr, s, kRowBlock, escr);
    }
  }
}

}  // namespace avx2
}  // namespace robuq
