// Integer core of the ternary quantized linear: acc[t, r] = sum_k q[t, k] * w[r, k], exact int32, for
// uint8 activation codes q (1..8 bits) and ternary weights w in {-1, 0, 1}.
//
// File layout of the weights (robuq/pack.h, docs/rq-format.md): 2 bits per weight, code c = w + 1, byte j of
// a row holds weights 4j .. 4j+3, weight 4j+i in bits 2i .. 2i+1. The AVX2 kernel reads that layout and turns
// each work item's rows into the kernel layout below on the fly (nothing is copied at load time);
// ref::ternary_lut_repack() builds the same layout for a whole matrix (the executable specification,
// kernels/ref/ternary_lut_ref.cpp).
//
// Kernel layout ("pair-table indices"). The input channels are cut into chunks of 4, chunk j = inputs
// 4j .. 4j+3 = group A (4j, 4j+1) and group B (4j+2, 4j+3). The 9 ternary patterns (w0, w1) of a group are
// numbered p = (w0 + 1) + 3 (w1 + 1); the zero pattern p = 4 is encoded as index 0x80 (vpshufb returns 0
// for it) and the other 8 as slot s = p (p < 4) or p - 1 (p > 4). A group-B slot is offset by 8. Output
// channels are taken 16 at a time (a "column block", zero-padded at the end); for column block b and chunk j
// the layout holds 32 bytes, byte 2i = group-A index of output 16b + i and byte 2i+1 = its group-B index:
//     idx[(b * chunks + j) * 32 + 2i + h]
// so the 16 bytes of one 128-bit lane index a single 16-byte table per (token, chunk) that holds group A's
// 8 non-zero pattern sums in slots 0..7 and group B's in slots 8..15 (see ternary_gemm_avx2.cpp).
// 4 bits per weight (2x the file); wsum holds the per-row weight sums used to undo the centring of the
// activation codes.
#pragma once
#include <cstdint>
#include <vector>

namespace robuq {

// A whole matrix in the kernel layout (ref::ternary_lut_repack).
struct TernaryLutWeights {
  int64_t out = 0, in = 0;
  int64_t chunks = 0;         // ceil(in / 4)
  int64_t col_blocks = 0;     // ceil(out / 16)
  std::vector<uint8_t> idx;   // col_blocks * chunks * 32 bytes, layout above
  std::vector<int32_t> wsum;  // [out] sum_k w[r][k]
};

namespace ref {
// packed: [out, ceil(in / 4)] bytes in the file layout. Throws std::invalid_argument on a negative shape or a
// code 3 in a used position (padding positions are not inspected).
TernaryLutWeights ternary_lut_repack(const uint8_t* packed, int64_t out, int64_t in);

// acc[t * out + r] = sum_k q[t * in + k] * w[r][k] read from the repacked layout (scalar, single thread, slow;
// any CPU). Throws std::invalid_argument on bits outside 1..8 or T < 0.
void ternary_gemm_lut(const uint8_t* q, int64_t T, int bits, const TernaryLutWeights& w, int32_t* acc);
}  // namespace ref

// acc[t * out + r] = sum_k q[t * in + k] * w[r][k], exact int32, for weights in the file layout (packed:
// [out, ceil(in / 4)] bytes, every used code in 0..2; padding positions may hold anything) with wsum[r] =
// sum_k w[r][k]. q: uint8 codes [T, in], every value < 2^bits, bits in 1..8 (codes >= 2^bits give wrong
// results). threads >= 1 (OpenMP num_threads; one thread without OpenMP). The result does not depend on the
// thread count. Requires an AVX2 CPU. Throws std::invalid_argument on bits outside 1..8, a negative shape or
// threads < 1.
void ternary_gemm_avx2(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                       const int32_t* wsum, int32_t* acc, int threads);

// The same contract on the avx512 tier's kernel (robuq/avx512.h; bits 7 and 8 run the avx2 kernel). Requires
// tier_available(Tier::Avx512) and a build with ROBUQ_HAVE_AVX512.
void ternary_gemm_avx512(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                         const int32_t* wsum, int32_t* acc, int threads);

// The same contract on the amx tier's kernel (robuq/avx512.h, namespace amx; every bit width 1..8). Requires
// tier_available(Tier::Amx) and a build with ROBUQ_HAVE_AMX.
void ternary_gemm_amx(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                      const int32_t* wsum, int32_t* acc, int threads);

// The kernel layout idx (ceil(out / 16) * ceil(in / 4) * 32 bytes) as the AVX2 kernel decodes it from the file
// layout; equal to ref::ternary_lut_repack(packed, out, in).idx when the padding codes are 1 (weight 0).
void ternary_lut_indices_avx2(const uint8_t* packed, int64_t out, int64_t in, uint8_t* idx);

}  // namespace robuq
