// The table-lookup GEMM's weight layout in scalar code (robuq/ternary_gemm.h): the repack of a whole matrix
// from the file layout and a GEMM that reads the repacked layout. Together they are the layout's executable
// specification: the AVX2 kernel's on-the-fly decoder must produce the same indices (ternary_lut_indices_avx2),
// and the GEMM over them must equal the plain integer product (tests/test_kernels.py).
#include <stdexcept>
#include <string>

#include "robuq/ternary_gemm.h"

namespace robuq {
namespace {

constexpr uint8_t kZeroIndex = 0x80;  // vpshufb yields 0 for an index with bit 7 set

// Slot (0..7) of a group's non-zero pattern p = c0 + 3 c1 (c = w + 1), or kZeroIndex for p = 4.
inline uint8_t pattern_slot(unsigned c0, unsigned c1) {
  const unsigned p = c0 + 3 * c1;
  return p == 4 ? kZeroIndex : static_cast<uint8_t>(p < 4 ? p : p - 1);
}

// Inverse: weight pair of a group-local slot 0..7.
inline void slot_weights(unsigned slot, int& w0, int& w1) {
  const unsigned p = slot < 4 ? slot : slot + 1;
  w0 = static_cast<int>(p % 3) - 1;
  w1 = static_cast<int>(p / 3) - 1;
}

}  // namespace

namespace ref {

TernaryLutWeights ternary_lut_repack(const uint8_t* packed, int64_t out, int64_t in) {
  if (out < 0 || in < 0) throw std::invalid_argument("ternary_lut_repack: negative shape");
  TernaryLutWeights w;
  w.out = out;
  w.in = in;
  w.chunks = (in + 3) / 4;
  w.col_blocks = (out + 15) / 16;
  w.idx.assign(static_cast<size_t>(w.col_blocks * w.chunks * 32), kZeroIndex);
  w.wsum.assign(static_cast<size_t>(out), 0);
  const int64_t pc = w.chunks;  // packed bytes per row == chunks
  for (int64_t r = 0; r < out; ++r) {
    const uint8_t* row = packed + r * pc;
    const int64_t b = r / 16, i = r % 16;
    int32_t sum = 0;
    for (int64_t j = 0; j < w.chunks; ++j) {
      const unsigned byte = row[j];
      unsigned c[4];
      for (int s = 0; s < 4; ++s) {
        c[s] = (byte >> (2 * s)) & 3u;
        if (4 * j + s >= in) {
          c[s] = 1;  // padding: weight 0, not inspected
        } else if (c[s] == 3) {
          throw std::invalid_argument("ternary_lut_repack: invalid code 3 at [" + std::to_string(r) + ", " +
                                      std::to_string(4 * j + s) + "]");
        }
        sum += static_cast<int32_t>(c[s]) - 1;
      }
      uint8_t* dst = w.idx.data() + (b * w.chunks + j) * 32 + 2 * i;
      dst[0] = pattern_slot(c[0], c[1]);
      const uint8_t sb = pattern_slot(c[2], c[3]);
      dst[1] = sb == kZeroIndex ? sb : static_cast<uint8_t>(sb + 8);
    }
    w.wsum[static_cast<size_t>(r)] = sum;
  }
  return w;
}

void ternary_gemm_lut(const uint8_t* q, int64_t T, int bits, const TernaryLutWeights& w, int32_t* acc) {
  if (bits < 1 || bits > 8) throw std::invalid_argument("ternary_gemm_lut: bits must be in 1..8");
  if (T < 0) throw std::invalid_argument("ternary_gemm_lut: negative T");
  for (int64_t t = 0; t < T; ++t) {
    const uint8_t* qt = q + t * w.in;
    for (int64_t r = 0; r < w.out; ++r) {
      const int64_t b = r / 16, i = r % 16;
      int32_t s = 0;
      for (int64_t j = 0; j < w.chunks; ++j) {
        const uint8_t* ix = w.idx.data() + (b * w.chunks + j) * 32 + 2 * i;
        for (int h = 0; h < 2; ++h) {
          const unsigned v = ix[h];
          if (v & kZeroIndex) continue;
          int w0, w1;
          slot_weights(v & 7u, w0, w1);
          const int64_t k = 4 * j + 2 * h;
          // Padding weights are 0, so the guards only keep the reads inside the row.
          if (k < w.in) s += w0 * qt[k];
          if (k + 1 < w.in) s += w1 * qt[k + 1];
        }
      }
      acc[t * w.out + r] = s;
    }
  }
}

}  // namespace ref
}  // namespace robuq
