// AVX-512 table-lookup GEMM for ternary weights x 1..6-bit activation codes (robuq/avx512.h).
//
// Why this design (numbers in docs/performance.md, measured by robuq-bench's ceilings on Zen 4/5):
//  * vpermb looks up 64 lanes in a 64-byte table per instruction, non-destructively, at about the rate of
//    vpdpbusd zmm; a lookup that stands for 3 multiply-adds per lane does 192 per instruction, a vpdpbusd 64.
//  * One 64-byte table holds two groups of 3 inputs: the 27 weight patterns of group A in bytes 0..26, those
//    of group B in bytes 32..58. So one table per (token, chunk of 6 inputs), and one lookup serves 32 outputs
//    x 6 inputs; the adjacent (A, B) bytes of an output are then added by vpmaddubsw(ones, .) into int16.
//
// Arithmetic (all exact):
//  * Activation codes are centred, q' = q - z with z = 2^(bits-1), so |q'| <= z; the sums get + z * wsum[r].
//  * Chunk j = inputs 6j .. 6j+5, group A = 6j .. 6j+2, group B = 6j+3 .. 6j+5. Pattern of a group:
//    p = c0 + 3 c1 + 9 c2 with c = w + 1 in {0, 1, 2}. Table byte p = sum_i q'_i (c_i(p) - 1) for group A,
//    byte 32 + p the same with group B's activations; inputs >= in count as q' = 0.
//  * int8 lookups are summed in int8 for N chunks: |entry| <= 3 z, so N = floor(127 / (3 z)) (bits 1..6: 42,
//    21, 10, 5, 2, 1) keeps them from wrapping; then vpmaddubsw(ones, .) folds A + B into int16 (|.| <= 6 z,
//    no saturation) and adds them up over a k-block of KB = 64 chunks: |sum| <= 384 z <= 12288 < 32767;
//    then int32 (exact for in < 8.4e6).
//  * Cost per lookup: vpermb + vpaddb, plus the fold every N lookups: fewer activation bits, longer int8 runs.
//
// Weights: read from the file layout (2 bits per weight; nothing is copied at load time). At the start of each
// call the weight matrix is decoded (threads share the work) into the index layout
//     idx[((m * chunks) + j) * 3 + v][64],  m = output block of 96, v = 32-output vector of it,
//     byte 2i = group-A pattern of output 96 m + 32 v + i, byte 2i+1 = 32 + its group-B pattern,
// one third of a byte per weight (an XL/2 fc1: 1.8 MB, L3-resident; freed with the thread's buffer). Decoding:
// per row, vpermb + vpmultishiftqb cut the 6-bit groups out of the packed bytes, vpermb maps them to patterns
// (code 3, only in padding, reads as weight 0), and 32 rows x 32 chunks are transposed as 16-bit words.
//
// Work: after the decoding, threads take token blocks (TB tokens, a multiple of TT = 4) from a dynamic
// schedule: for its block a thread makes the activation codes (prep: Hadamard + quantize, while the rows are in
// its cache), then per k-block it builds the TB tokens' tables (TB x KB x 64 bytes, L2) and runs the micro
// kernel (4 tokens x 96 outputs over the k-block, all 24 accumulators in registers) over every output block,
// adding into the block's int32 sums (TB x out, L2); then the epilogue (qlinear_avx2.h, shared with the avx2
// tier) turns the sums into outputs. Every token's result is computed by one thread in one fixed order, so
// any thread count and any split give the same bits.
#include "avx512_common.h"  // first

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../avx2/qlinear_avx2.h"
#include "exp_avx512.h"
#include "robuq/avx512.h"
#include "robuq/ternary_gemm.h"

namespace robuq {
namespace {

// Plain helpers instead of std:: templates: this file is compiled with AVX-512 flags, and an out-of-line
// template instance from here must never stand in for the generic one (one definition per program).
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

constexpr int TT = 4;                   // tokens per micro tile
constexpr int OV = 3;                   // 32-output vectors per micro tile
constexpr int64_t MBO = 32 * OV;        // outputs per output block (96)
constexpr int64_t KB = 64;              // chunks (6 inputs) per k-block; the int16 bound above needs KB <= 170
                                        // (64 rather than 32: half the int16 -> int32 adds, +7% measured)
constexpr int64_t kCBytes = 256 << 10;  // int32 sums of one token block (per thread; L2)

struct Consts {
  uint8_t dsel[64];       // digit table byte 3 k + c (k < 18 inputs, c = w + 1) <- input k
  uint64_t dnz, dneg;     // digit bytes with c != 1 (nonzero) and with c == 0 (negated)
  uint8_t dig[3][3][64];  // chunk c of 3, lane l (pattern p = l & 31 of group l >> 5): digit byte of position i
  uint8_t pat[64];        // 6-bit group c0 | c1 << 2 | c2 << 4 -> pattern (code 3 read as 1)
  uint8_t group_add[64];  // + 32 for the group-B byte (odd triple) of each chunk
  uint8_t row_perm[64];   // qword lane L gets packed bytes 6L .. 6L+7 (8 triples = 48 bits)
  uint8_t shift_ctl[64];  // triple i of a lane starts at bit 6i
  uint16_t tr_lo[5][32], tr_hi[5][32];  // 32 x 32 word transpose, round k = 16 >> s
  constexpr Consts() : dsel(), dnz(), dneg(), dig(), pat(), group_add(), row_perm(), shift_ctl(), tr_lo(), tr_hi() {
    for (int b = 0; b < 54; ++b) {
      dsel[b] = static_cast<uint8_t>(b / 3);
      if (b % 3 != 1) dnz |= uint64_t(1) << b;
      if (b % 3 == 0) dneg |= uint64_t(1) << b;
    }
    for (int l = 0; l < 64; ++l) {
      const int p = l & 31, g = l >> 5;
      const int c[3] = {p % 3, (p / 3) % 3, p / 9};
      for (int i = 0; i < 3; ++i)  // unused patterns (p >= 27) read the zero byte of their input
        for (int ch = 0; ch < 3; ++ch)
          dig[ch][i][l] = static_cast<uint8_t>(18 * ch + 3 * (3 * g + i) + (p < 27 ? c[i] : 1));
    }
    for (int u = 0; u < 64; ++u) {
      int p = 0, m = 1;
      for (int i = 0; i < 3; ++i, m *= 3) {
        const int code = (u >> (2 * i)) & 3;
        p += (code == 3 ? 1 : code) * m;
      }
      pat[u] = static_cast<uint8_t>(p);
    }
    for (int l = 0; l < 64; ++l) {
      const int L = l / 8, i = l % 8;
      group_add[l] = static_cast<uint8_t>((i & 1) * 32);
      row_perm[l] = static_cast<uint8_t>(6 * L + i);
      shift_ctl[l] = static_cast<uint8_t>(6 * i);
    }
    for (int s = 0; s < 5; ++s) {
      const int k = 16 >> s;
      for (int c = 0; c < 32; ++c) {
        tr_lo[s][c] = static_cast<uint16_t>((c & k) == 0 ? c : 32 + c - k);
        tr_hi[s][c] = static_cast<uint16_t>((c & k) == 0 ? c + k : 32 + c);
      }
    }
  }
};
alignas(64) constexpr Consts kC{};

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// ------------------------------------------------------------------------------------------ decoding
// r[i] = row i's 32 words (chunk j: low byte group-A pattern, high byte 32 + group-B pattern) -> r[j] = chunk
// j's 32 words (word i = row i): recursive swap of off-diagonal blocks, 5 rounds of vpermt2w.
void transpose32x32_epi16(__m512i r[32]) {
  for (int s = 0; s < 5; ++s) {
    const int k = 16 >> s;
    const __m512i lo = load512(kC.tr_lo[s]), hi = load512(kC.tr_hi[s]);
    for (int a = 0; a < 32; ++a) {
      if (a & k) continue;
      const __m512i x = r[a], y = r[a + k];
      r[a] = _mm512_permutex2var_epi16(x, lo, y);
      r[a + k] = _mm512_permutex2var_epi16(x, hi, y);
    }
  }
}

// Rows 32 g .. 32 g + 31, chunks 32 kg .. 32 kg + 31 (of `chunks`) into idx (layout above).
void decode_group(const uint8_t* packed, int64_t out, int64_t pc, int64_t chunks, int64_t g, int64_t kg, uint8_t* idx) {
  const int64_t b0 = kg * 48, nb = imin(48, pc - b0);
  const __mmask64 m = (uint64_t(1) << nb) - 1;  // nb <= 48
  const __m512i perm = load512(kC.row_perm), ctl = load512(kC.shift_ctl), pat = load512(kC.pat);
  const __m512i gadd = load512(kC.group_add), six = _mm512_set1_epi8(0x3F);
  __m512i r[32];
  for (int i = 0; i < 32; ++i) {
    const int64_t row = g * 32 + i;
    __m512i x = row < out ? _mm512_maskz_loadu_epi8(m, packed + row * pc + b0) : _mm512_setzero_si512();
    x = _mm512_permutexvar_epi8(perm, x);
    x = _mm512_and_si512(_mm512_multishift_epi64_epi8(ctl, x), six);
    r[i] = _mm512_add_epi8(_mm512_permutexvar_epi8(x, pat), gadd);
  }
  transpose32x32_epi16(r);
  const int64_t mb = g / OV, v = g % OV, nj = imin(32, chunks - kg * 32);
  for (int64_t j = 0; j < nj; ++j) _mm512_storeu_si512(idx + ((mb * chunks + kg * 32 + j) * OV + v) * 64, r[j]);
}

// ------------------------------------------------------------------------------------------- tables
// Tables of chunks j0 .. j0 + nj - 1 of one token (codes q, `in` of them): chunk j's 64 bytes at
// dst + (j - j0) * stride.
void build_tables(const uint8_t* q, int64_t in, int64_t j0, int64_t nj, int z, int8_t* dst, int64_t stride) {
  // Per 3 chunks (18 inputs): the 54-byte digit table d[3 k + c] = q'_k (c - 1) of their inputs (a masked load
  // padded with z, one subtraction, one zero-masked vpermb and a masked negation; inputs >= in read as q' = 0),
  // then per chunk the 64 pattern sums as three vpermb lookups of d added up (int8, exact: |sum| <= 3 z).
  const __m512i vz = _mm512_set1_epi8(static_cast<char>(z));
  const __m512i dsel = load512(kC.dsel), zero = _mm512_setzero_si512();
  __m512i g[3][3];  // chunk c of the three: the lookups of position i (its digit bytes from 18 c on)
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 3; ++i) g[c][i] = load512(kC.dig[c][i]);
  for (int64_t j = j0; j < j0 + nj; j += 3) {
    const int64_t k = 6 * j, left = in - k;  // left > 0: chunk j has an input
    const __mmask64 m = left >= 18 ? __mmask64(0x3FFFF) : (__mmask64(1) << left) - 1;
    const __m512i v = _mm512_sub_epi8(_mm512_mask_loadu_epi8(vz, m, q + k), vz);
    __m512i d = _mm512_maskz_permutexvar_epi8(kC.dnz, dsel, v);
    d = _mm512_mask_sub_epi8(d, kC.dneg, zero, d);
    int8_t* o = dst + (j - j0) * stride;
    const int64_t n3 = imin(3, j0 + nj - j);
    for (int c = 0; c < n3; ++c) {
      const __m512i t =
          _mm512_add_epi8(_mm512_add_epi8(_mm512_permutexvar_epi8(g[c][0], d), _mm512_permutexvar_epi8(g[c][1], d)),
                          _mm512_permutexvar_epi8(g[c][2], d));
      _mm512_storeu_si512(o + c * stride, t);
    }
  }
}

// --------------------------------------------------------------------------------------- micro kernel
// TT tokens x 96 outputs over nj chunks: tab [nj][TT][64], idx [nj][OV][64] (consecutive chunks of one output
// block); adds the exact (centred) sums into C[t * ldc + o], t < TT, o < 96. N: chunks per int8 run.
//
// Inline assembly: GCC's allocation of the intrinsic version copies every int8 accumulator once per chunk
// (12 extra register moves per 12 lookups), as it did in the avx2 kernel. Fixed registers here: zmm0-11 int8
// accumulators (token t, vector v: 3 t + v), zmm12-23 their int16 sums, zmm24-26 the chunk's 3 index
// vectors, zmm27/28 a token's table, zmm29/30 lookups, zmm31 bytes of 1. One STEP = one chunk = 12 lookups
// (vpermb table, index -> the 64 pattern sums of 32 outputs x 2 groups) added with vpaddb; a FOLD adds each
// int8 accumulator's (A, B) byte pairs into its int16 sums (vpmaddubsw with ones) and clears it.
// The assembly macros below keep one instruction per line (not reformatted).
// clang-format off
#define ROBUQ_TOK(off, a, b, c, tr)                                                   \
  "vmovdqu64 " #off "(%[tp]), %%zmm" #tr "\n\t"                                       \
  "vpermb %%zmm" #tr ", %%zmm24, %%zmm29\n\t"                                         \
  "vpermb %%zmm" #tr ", %%zmm25, %%zmm30\n\t"                                         \
  "vpaddb %%zmm29, %%zmm" #a ", %%zmm" #a "\n\t"                                      \
  "vpermb %%zmm" #tr ", %%zmm26, %%zmm29\n\t"                                         \
  "vpaddb %%zmm30, %%zmm" #b ", %%zmm" #b "\n\t"                                      \
  "vpaddb %%zmm29, %%zmm" #c ", %%zmm" #c "\n\t"
#define ROBUQ_STEP                                                                    \
  "vmovdqu64 0(%[ip]), %%zmm24\n\t"                                                   \
  "vmovdqu64 64(%[ip]), %%zmm25\n\t"                                                  \
  "vmovdqu64 128(%[ip]), %%zmm26\n\t"                                                 \
  ROBUQ_TOK(0, 0, 1, 2, 27) ROBUQ_TOK(64, 3, 4, 5, 28) ROBUQ_TOK(128, 6, 7, 8, 27)    \
  ROBUQ_TOK(192, 9, 10, 11, 28)                                                       \
  "add $192, %[ip]\n\t"                                                               \
  "add $256, %[tp]\n\t"
#define ROBUQ_FOLD1(a, s, tmp)                                                        \
  "vpmaddubsw %%zmm" #a ", %%zmm31, %%zmm" #tmp "\n\t"                                \
  "vpaddw %%zmm" #tmp ", %%zmm" #s ", %%zmm" #s "\n\t"                                \
  "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
#define ROBUQ_FOLD                                                                    \
  ROBUQ_FOLD1(0, 12, 29) ROBUQ_FOLD1(1, 13, 30) ROBUQ_FOLD1(2, 14, 29)                \
  ROBUQ_FOLD1(3, 15, 30) ROBUQ_FOLD1(4, 16, 29) ROBUQ_FOLD1(5, 17, 30)                \
  ROBUQ_FOLD1(6, 18, 29) ROBUQ_FOLD1(7, 19, 30) ROBUQ_FOLD1(8, 20, 29)                \
  ROBUQ_FOLD1(9, 21, 30) ROBUQ_FOLD1(10, 22, 29) ROBUQ_FOLD1(11, 23, 30)
#define ROBUQ_ZERO(a) "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
#define ROBUQ_STORE(a, off) "vmovdqu64 %%zmm" #a ", " #off "(%[out])\n\t"

// The int16 sums of TT x 96 outputs over nj chunks into out[TT * OV][32] (vector 3 t + v).
template <int N>
void micro_sums(const int8_t* tp, const uint8_t* ip, int64_t nj, int16_t* out) {
  int64_t nfull = nj / N, rem = nj % N, cnt;
  asm volatile(
      ROBUQ_ZERO(0) ROBUQ_ZERO(1) ROBUQ_ZERO(2) ROBUQ_ZERO(3) ROBUQ_ZERO(4) ROBUQ_ZERO(5) ROBUQ_ZERO(6)
      ROBUQ_ZERO(7) ROBUQ_ZERO(8) ROBUQ_ZERO(9) ROBUQ_ZERO(10) ROBUQ_ZERO(11) ROBUQ_ZERO(12) ROBUQ_ZERO(13)
      ROBUQ_ZERO(14) ROBUQ_ZERO(15) ROBUQ_ZERO(16) ROBUQ_ZERO(17) ROBUQ_ZERO(18) ROBUQ_ZERO(19)
      ROBUQ_ZERO(20) ROBUQ_ZERO(21) ROBUQ_ZERO(22) ROBUQ_ZERO(23)
      "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"
      "vpabsb %%zmm31, %%zmm31\n\t"
      "test %[nfull], %[nfull]\n\t"
      "jz 2f\n"
      "1:\n\t"
      "mov %[n], %[cnt]\n"
      "5:\n\t" ROBUQ_STEP
      "dec %[cnt]\n\t"
      "jnz 5b\n\t" ROBUQ_FOLD
      "dec %[nfull]\n\t"
      "jnz 1b\n"
      "2:\n\t"
      "test %[rem], %[rem]\n\t"
      "jz 4f\n"
      "3:\n\t" ROBUQ_STEP
      "dec %[rem]\n\t"
      "jnz 3b\n\t" ROBUQ_FOLD
      "4:\n\t"
      ROBUQ_STORE(12, 0) ROBUQ_STORE(13, 64) ROBUQ_STORE(14, 128) ROBUQ_STORE(15, 192) ROBUQ_STORE(16, 256)
      ROBUQ_STORE(17, 320) ROBUQ_STORE(18, 384) ROBUQ_STORE(19, 448) ROBUQ_STORE(20, 512) ROBUQ_STORE(21, 576)
      ROBUQ_STORE(22, 640) ROBUQ_STORE(23, 704)
      "vzeroupper\n\t"
      : [ip] "+r"(ip), [tp] "+r"(tp), [nfull] "+r"(nfull), [rem] "+r"(rem), [cnt] "=&r"(cnt)
      : [out] "r"(out), [n] "i"(N)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
        "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "cc", "memory");
}
#undef ROBUQ_TOK
#undef ROBUQ_STEP
#undef ROBUQ_FOLD1
#undef ROBUQ_FOLD
#undef ROBUQ_ZERO
#undef ROBUQ_STORE
// clang-format on

// C[t * ldc + o] = base[o] + the block's sums, where base is C's own row (accumulate) or, in a token block's
// first k-block, zw[o] (z * wsum of the block's 96 outputs: the sums start from it without a pass that copies
// it into C first). Integer additions, so the result is the same either way.
template <int N>
void micro(const int8_t* tab, const uint8_t* idx, int64_t nj, int32_t* C, int64_t ldc, const int32_t* zw) {
  alignas(64) int16_t sums[TT * OV * 32];
  micro_sums<N>(tab, idx, nj, sums);
  for (int t = 0; t < TT; ++t)
    for (int v = 0; v < OV; ++v) {
      const __m512i a = load512(sums + (t * OV + v) * 32);
      int32_t* c = C + t * ldc + v * 32;
      const int32_t* b = zw != nullptr ? zw + v * 32 : c;
      _mm512_storeu_si512(c, _mm512_add_epi32(load512(b), _mm512_cvtepi16_epi32(_mm512_castsi512_si256(a))));
      _mm512_storeu_si512(c + 16,
                          _mm512_add_epi32(load512(b + 16), _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(a, 1))));
    }
}

using MicroFn = void (*)(const int8_t*, const uint8_t*, int64_t, int32_t*, int64_t, const int32_t*);

MicroFn micro_for(int bits) {
  switch (bits) {
    case 1: return micro<42>;
    case 2: return micro<21>;
    case 3: return micro<10>;
    case 4: return micro<5>;
    case 5: return micro<2>;
    default: return micro<1>;
  }
}

thread_local avx512::ScratchBuffer tl_idx, tl_work;

// ------------------------------------------------------------------------------------------ epilogue
// The avx2 tier's QEpilogue (kernels/avx2/qlinear_avx2.h) 16 outputs at a time, with the same operations per
// output in the same order, so the bits are the same:
//   f = float(scale_x[t] * s_w[r] * (acc - zero_x[t] * wsum[r]))   in float64 (mul, mul, mul, sub; no FMA)
//   f = f + v, v = one fused-multiply-add chain over j ascending from +0 of u[t, j] up[r, j] (gemm_panels' order)
//   f = f + bias[r];  then GELU as simd::gelu8 (exp256's steps) when asked.
// up is packed once per call into panels of 16 outputs x rank (zero-padded), like pack_panels_rows.
inline __m512 gelu16(__m512 v) {
  const __m512 beta = _mm512_set1_ps(static_cast<float>(0.7978845608028654));
  const __m512 kappa = _mm512_set1_ps(0.044715f);
  const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
  const __m512 u = _mm512_mul_ps(beta, _mm512_add_ps(v, _mm512_mul_ps(kappa, v3)));
  const __m512 e = exp512(_mm512_mul_ps(u, _mm512_set1_ps(-2.0f)));
  return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// One output vector (token t, outputs r .. r + 15; Full: all 16, else those under mask m): the epilogue of its
// exact sums c[0 .. 15], plus the low-rank term v (when lowrank) and the bias (GELU follows in epilogue_rows'
// second pass). sx / nzx: the token's scale and negated zero as doubles (broadcast from memory, so no
// conversion per vector); the sums are converted straight from memory, 8 at a time.
struct EpiRow {
  bool lowrank, has_bias;

  template <bool Full>
  inline void run(const double* sx, const double* nzx, float* yt, __mmask16 m, const int32_t* c, __m512d ws0,
                  __m512d ws1, __m512d sw0, __m512d sw1, __m512 v, __m512 bias) const {
    const __m256i c0 = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c))
                            : _mm256_maskz_loadu_epi32(static_cast<__mmask8>(m), c);
    const __m256i c1 = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 8))
                            : _mm256_maskz_loadu_epi32(static_cast<__mmask8>(m >> 8), c + 8);
    const __m512d vsx = _mm512_set1_pd(*sx), vnzx = _mm512_set1_pd(*nzx);
    // acc - zx * ws: the product of a float and an int32 of at most 31 bits is exact in float64, so the fused
    // form rounds once, like the product-then-subtract of the contract
    const __m512d d0 = _mm512_fmadd_pd(vnzx, ws0, _mm512_cvtepi32_pd(c0));
    const __m512d d1 = _mm512_fmadd_pd(vnzx, ws1, _mm512_cvtepi32_pd(c1));
    const __m256 f0 = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(vsx, sw0), d0));
    const __m256 f1 = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(vsx, sw1), d1));
    __m512 f =
        _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(f0)), _mm256_castps_pd(f1), 1));
    if (lowrank) f = _mm512_add_ps(f, v);
    if (has_bias) f = _mm512_add_ps(f, bias);
    if (Full)
      _mm512_storeu_ps(yt, f);
    else
      _mm512_mask_storeu_ps(yt, m, f);
  }
};

// Tokens per pass of epilogue_rows: their scales and negated zeros are converted to float64 once, into a stack
// array that the vectors below broadcast from.
constexpr int64_t kEpiTokens = 64;

// Outputs r .. r + 15 (Full) or those under m, of tokens t0 .. t0 + nt - 1 (nt <= kEpiTokens; sx / nzx indexed
// from t0): the per-output operands are converted once and reused for every token.

// Rank: the low-rank rank as a compile-time constant (the chains unrolled), or 0 for e.rank at run time.
template <bool Full, int Rank>
inline void epilogue_vector(const avx2::QEpilogue& e, const EpiRow& row, const double* sx, const double* nzx,
                            int64_t t0, int64_t nt, int64_t r, __mmask16 m, const int32_t* C, int64_t ldc,
                            const float* panels) {
  const int64_t out = e.out;
  const __m512i ws = Full ? load512(e.wsum + r) : _mm512_maskz_loadu_epi32(m, e.wsum + r);
  const __m512d ws0 = _mm512_cvtepi32_pd(_mm512_castsi512_si256(ws));
  const __m512d ws1 = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(ws, 1));
  const __m512 swf = Full ? _mm512_loadu_ps(e.s_w + r) : _mm512_maskz_loadu_ps(m, e.s_w + r);
  const __m512d sw0 = _mm512_cvtps_pd(_mm512_castps512_ps256(swf));
  const __m512d sw1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(swf), 1)));
  const __m512 bias =
      row.has_bias ? (Full ? _mm512_loadu_ps(e.bias + r) : _mm512_maskz_loadu_ps(m, e.bias + r)) : _mm512_setzero_ps();
  const int64_t rank = Rank > 0 ? Rank : e.rank;
  const float* panel = row.lowrank ? panels + (r / 16) * rank * 16 : nullptr;
  const float* const u = e.u;
  float* const y = e.y + r;
  // a compile-time rank keeps the panel's rows in registers for all the tokens; otherwise they are reloaded
  __m512 pk[Rank > 0 ? Rank : 1];
  if constexpr (Rank > 0)
    for (int j = 0; j < Rank; ++j) pk[j] = _mm512_loadu_ps(panel + j * 16);
  const auto panel_row = [&](int64_t j) {
    if constexpr (Rank > 0)
      return pk[j];
    else
      return _mm512_loadu_ps(panel + j * 16);
  };
  int64_t i = 0;
  for (; i + 4 <= nt; i += 4) {
    // the low-rank terms of 4 tokens: 4 independent chains (one chain is latency-bound)
    __m512 v0 = _mm512_setzero_ps(), v1 = v0, v2 = v0, v3 = v0;
    if (panel != nullptr) {
      const float *u0 = u + (t0 + i) * rank, *u1 = u0 + rank, *u2 = u1 + rank, *u3 = u2 + rank;
      for (int64_t j = 0; j < rank; ++j) {
        const __m512 pj = panel_row(j);
        v0 = _mm512_fmadd_ps(_mm512_set1_ps(u0[j]), pj, v0);
        v1 = _mm512_fmadd_ps(_mm512_set1_ps(u1[j]), pj, v1);
        v2 = _mm512_fmadd_ps(_mm512_set1_ps(u2[j]), pj, v2);
        v3 = _mm512_fmadd_ps(_mm512_set1_ps(u3[j]), pj, v3);
      }
    }
    const int32_t* c = C + i * ldc + r;
    float* yt = y + (t0 + i) * out;
    row.run<Full>(sx + i, nzx + i, yt, m, c, ws0, ws1, sw0, sw1, v0, bias);
    row.run<Full>(sx + i + 1, nzx + i + 1, yt + out, m, c + ldc, ws0, ws1, sw0, sw1, v1, bias);
    row.run<Full>(sx + i + 2, nzx + i + 2, yt + 2 * out, m, c + 2 * ldc, ws0, ws1, sw0, sw1, v2, bias);
    row.run<Full>(sx + i + 3, nzx + i + 3, yt + 3 * out, m, c + 3 * ldc, ws0, ws1, sw0, sw1, v3, bias);
  }
  for (; i < nt; ++i) {
    __m512 v = _mm512_setzero_ps();
    if (panel != nullptr) {
      const float* ut = u + (t0 + i) * rank;
      for (int64_t j = 0; j < rank; ++j) v = _mm512_fmadd_ps(_mm512_set1_ps(ut[j]), panel_row(j), v);
    }
    row.run<Full>(sx + i, nzx + i, y + (t0 + i) * out, m, C + i * ldc + r, ws0, ws1, sw0, sw1, v, bias);
  }
}

// Outputs r0 .. r1 - 1 of tokens t0 .. t0 + nt - 1, 16 at a time (Rank > 0 only where the layer has the
// low-rank branch at that rank, so panels is set).
template <int Rank>
void epilogue_range(const avx2::QEpilogue& e, const EpiRow& row, const double* sx, const double* nzx, int64_t t0,
                    int64_t nt, int64_t r0, int64_t r1, const int32_t* C, int64_t ldc, const float* panels) {
  int64_t r = r0;
  for (; r + 16 <= r1; r += 16) epilogue_vector<true, Rank>(e, row, sx, nzx, t0, nt, r, 0xFFFF, C, ldc, panels);
  if (r < r1)
    epilogue_vector<false, Rank>(e, row, sx, nzx, t0, nt, r, static_cast<__mmask16>((1u << (r1 - r)) - 1), C, ldc,
                                 panels);
}

}  // namespace

namespace avx512 {

// up [out, rank] -> panels[p][j][16] for the 16-output panels p0 .. p1 - 1.
void pack_up(const float* up, int64_t out, int64_t rank, int64_t p0, int64_t p1, float* panels) {
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = panels + p * rank * 16;
    for (int64_t j = 0; j < rank; ++j)
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t r = p * 16 + i;
        dst[j * 16 + i] = r < out ? up[r * rank + j] : 0.0f;
      }
  }
}

void epilogue_rows(const avx2::QEpilogue& e, int64_t t0, int64_t nt, int64_t r0, int64_t r1, const int32_t* C,
                   int64_t ldc, const float* panels) {
  const int64_t out = e.out;
  if (e.acc != nullptr) {
    for (int64_t i = 0; i < nt; ++i)
      std::memcpy(e.acc + (t0 + i) * out + r0, C + i * ldc, sizeof(int32_t) * static_cast<size_t>(r1 - r0));
    return;
  }
  C -= r0;  // C[i * ldc + r] from here on
  // GELU runs as a second pass over the finished rows (still in L1 / L2): its long dependency chain overlaps
  // better in a loop of independent vectors than at the end of each output's dequantization chain (the same
  // operations on the same values, so the same bits; measured 85 -> ~60 cycles per 16 outputs).
  const EpiRow row{e.u != nullptr && panels != nullptr, e.bias != nullptr};
  alignas(64) double sx[kEpiTokens], nzx[kEpiTokens];
  for (int64_t g = 0; g < nt; g += kEpiTokens) {
    const int64_t ng = imin(kEpiTokens, nt - g);
    for (int64_t i = 0; i < ng; ++i) {
      sx[i] = static_cast<double>(e.scale_x[t0 + g + i]);
      nzx[i] = -static_cast<double>(e.zero_x[t0 + g + i]);
    }
    const int32_t* Cg = C + g * ldc;
    if (row.lowrank && e.rank == 8)
      epilogue_range<8>(e, row, sx, nzx, t0 + g, ng, r0, r1, Cg, ldc, panels);
    else
      epilogue_range<0>(e, row, sx, nzx, t0 + g, ng, r0, r1, Cg, ldc, panels);
  }
  if (e.gelu)
    for (int64_t i = 0; i < nt; ++i) {
      float* yr = e.y + (t0 + i) * out;
      int64_t r = r0;
      for (; r + 32 <= r1; r += 32) {
        const __m512 a = gelu16(_mm512_loadu_ps(yr + r)), b = gelu16(_mm512_loadu_ps(yr + r + 16));
        _mm512_storeu_ps(yr + r, a);
        _mm512_storeu_ps(yr + r + 16, b);
      }
      for (; r < r1; r += 16) {
        const __mmask16 m = r + 16 <= r1 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (r1 - r)) - 1);
        _mm512_mask_storeu_ps(yr + r, m, gelu16(_mm512_maskz_loadu_ps(m, yr + r)));
      }
    }
}

}  // namespace avx512

namespace {

void check_args(int bits, int64_t T, int64_t out, int64_t in, int threads) {
  if (bits < 1 || bits > 6) throw std::invalid_argument("avx512::ternary_gemm: bits must be in 1..6");
  if (T < 0 || out < 0 || in < 0) throw std::invalid_argument("avx512::ternary_gemm: negative shape");
  if (threads < 1) throw std::invalid_argument("avx512::ternary_gemm: threads must be >= 1");
}

void decode_all(const uint8_t* packed, int64_t out, int64_t in, uint8_t* idx, int threads) {
  const int64_t chunks = (in + 5) / 6, pc = (in + 3) / 4, groups = (out + MBO - 1) / MBO * OV;
  const int64_t kgroups = (chunks + 31) / 32, n = groups * kgroups;
  [[maybe_unused]] const int nt = static_cast<int>(imax(1, imin(threads, n / 8)));
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if (nt > 1)
#endif
  for (int64_t w = 0; w < n; ++w) decode_group(packed, out, pc, chunks, w / kgroups, w % kgroups, idx);
}

}  // namespace

namespace avx512 {

bool ternary_gemm_supported(int bits) { return bits >= 1 && bits <= 6; }

void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep) {
  check_args(bits, T, out, in, threads);
  if (T == 0 || out == 0) return;
  const int64_t chunks = (in + 5) / 6, n_mb = (out + MBO - 1) / MBO, ldc = n_mb * MBO;
  const int z = 1 << (bits - 1);
  const MicroFn fn = micro_for(bits);
  // Token blocks: the int32 sums of a block (TB x ldc) stay within kCBytes; at least 4 blocks per thread
  // when T allows (a slowed thread then costs only its share); a multiple of TT.
  const int64_t tb_cap = imax(TT, kCBytes / (ldc * 4) / TT * TT);
  const int64_t tb_bal = (T + 4 * threads - 1) / (4 * threads);
  const int64_t TB = imax(TT, imin(tb_cap, (tb_bal + TT - 1) / TT * TT));
  const int64_t items = (T + TB - 1) / TB;
  // Buffers, allocated here so that nothing inside the parallel region throws: the decoded weights (shared),
  // and per thread the token block's int32 sums, its tables for one k-block and the epilogue's scratch.
  const int64_t idx_bytes = n_mb * chunks * OV * 64;
  const bool lowrank = e.y != nullptr && e.u != nullptr && e.rank > 0;
  const int64_t n_panels = (out + 15) / 16, panel_bytes = lowrank ? (n_panels * e.rank * 16 * 4 + 63) / 64 * 64 : 0;
  const int64_t c_bytes = (TB * ldc * 4 + 63) / 64 * 64, tab_bytes = TB * KB * 64;
  const int64_t per_thread = c_bytes + tab_bytes;
  const int nt = static_cast<int>(imax(1, imin(threads, items)));
  const int64_t zws_bytes = (ldc * 4 + 63) / 64 * 64;
  uint8_t* const idx = tl_idx.get(static_cast<size_t>(idx_bytes + panel_bytes + zws_bytes));
  float* const panels = lowrank ? reinterpret_cast<float*>(idx + idx_bytes) : nullptr;
  // z * wsum[r] (0 for the padding outputs r >= out): every token's int32 sums start from it, which undoes the
  // centring of the codes (q = q' + z) once the centred sums are added
  int32_t* const zws = reinterpret_cast<int32_t*>(idx + idx_bytes + panel_bytes);
  for (int64_t r = 0; r < ldc; ++r) zws[r] = r < out ? z * wsum[r] : 0;
  uint8_t* const work = tl_work.get(static_cast<size_t>(per_thread * nt));
  decode_all(packed, out, in, idx, threads);
  if (lowrank) avx512::pack_up(e.up, out, e.rank, 0, n_panels, panels);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    uint8_t* base = work + tid * per_thread;
    int32_t* const C = reinterpret_cast<int32_t*>(base);
    int8_t* const tabs = reinterpret_cast<int8_t*>(base + c_bytes);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t it = 0; it < items; ++it) {
      const int64_t t0 = it * TB, nt_ = imin(TB, T - t0), tiles = (nt_ + TT - 1) / TT;
      if (prep != nullptr) (*prep)(t0, nt_, tid);
      if (chunks == 0)  // in == 0: no k-block writes C, whose sums are z * wsum = 0
        for (int64_t i = 0; i < nt_; ++i) std::memcpy(C + i * ldc, zws, static_cast<size_t>(ldc) * 4);
      for (int64_t j0 = 0; j0 < chunks; j0 += KB) {
        const int64_t nj = imin(KB, chunks - j0);
        // tables [tile][chunk][TT][64] of this k-block; padding tokens of the last tile get zero tables
        for (int64_t i = 0; i < tiles * TT; ++i) {
          int8_t* dst = tabs + (i / TT) * (nj * TT * 64) + (i % TT) * 64;
          if (i < nt_) {
            build_tables(q + (t0 + i) * in, in, j0, nj, z, dst, TT * 64);
          } else {
            for (int64_t j = 0; j < nj; ++j) std::memset(dst + j * TT * 64, 0, 64);
          }
        }
        // an output block's indices for the k-block (KB x 192 bytes) stay in L1 over the block's tiles, whose
        // tables (TB x KB x 64 bytes) come from L1 / L2; the first k-block writes every row of C (padding
        // tokens and outputs included), starting from z * wsum
        for (int64_t m = 0; m < n_mb; ++m) {
          const uint8_t* ip = idx + (m * chunks + j0) * (OV * 64);
          const int32_t* zw = j0 == 0 ? zws + m * MBO : nullptr;
          for (int64_t tile = 0; tile < tiles; ++tile)
            fn(tabs + tile * (nj * TT * 64), ip, nj, C + tile * TT * ldc + m * MBO, ldc, zw);
        }
      }
      avx512::epilogue_rows(e, t0, nt_, 0, out, C, ldc, panels);
    }
  }
}

void ternary_lut_indices(const uint8_t* packed, int64_t out, int64_t in, uint8_t* idx) {
  if (out < 0 || in < 0) throw std::invalid_argument("avx512::ternary_lut_indices: negative shape");
  decode_all(packed, out, in, idx, 1);
}

ScratchBuffer::~ScratchBuffer() { std::free(p); }

uint8_t* ScratchBuffer::get(size_t bytes) {
  if (bytes < 64) bytes = 64;
  if (n < bytes) {
    std::free(p);
    n = 0;
    p = static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (p == nullptr) throw std::bad_alloc();
    n = bytes;
  }
  return p;
}

void ScratchBuffer::release() {
  std::free(p);
  p = nullptr;
  n = 0;
}

void release_gemm_scratch() {
  tl_idx.release();
  tl_work.release();
}

}  // namespace avx512

}  // namespace robuq
