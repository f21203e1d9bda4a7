// AVX2 table-lookup GEMM for ternary weights x 1..8-bit activation codes (robuq/ternary_gemm.h).
//
// Algorithm (cf. bitnet.cpp TL1 / T-MAC; our own arrangement):
//  * Activation codes are centred, q' = q - z with z = 2^(bits-1), so q' in [-z, z-1]; then
//    sum_k q w = sum_k q' w + z * wsum[r]   (wsum: the rows' code sums).
//  * Per token and chunk of 4 inputs, one 16-byte int8 table: slot s (0..7) = q'0 w0 + q'1 w1 for the s-th
//    non-zero pattern (w0, w1) of group A = inputs (4j, 4j+1), slot 8 + s the same for group B with
//    (q'2, q'3). The zero pattern needs no slot: its index has bit 7 set and vpshufb returns 0.
//  * The weights are the vpshufb indices (layout in the header): one vpshufb of a token's table (broadcast
//    to both lanes) against 32 index bytes gives, for 16 outputs, the group-A and group-B partial sums in
//    adjacent bytes: 32 lookups = 64 multiply-adds per instruction.
//  * These are accumulated with vpaddb in int8 for N chunks, then vpmaddubsw(ones, acc8) adds each
//    adjacent (A, B) byte pair into one int16 lane per output (16 outputs per register), added into int16
//    accumulators; after a block of KB chunks the int16 sums are widened into int32.
//  * Overflow bounds, with bits b <= 6 and |q'| <= 2^(b-1):
//      |table entry| <= 2 * 2^(b-1) = 2^b.
//      int8: after N lookups |sum| <= N 2^b <= 127 with N = floor(127 / 2^b) (b=1: 63, 2: 31, 3: 15, 4: 7,
//            5: 3, 6: 1), so the int8 lanes never wrap.
//      int16: per chunk an output gains at most 2 * 2^b (groups A and B); over a block of <= KB = 128 chunks
//            |sum| <= 256 * 2^b <= 16384 < 32767 (b <= 6). vpmaddubsw's saturation is never reached either
//            (|pair| <= 254).
//      int32: |sum| <= in * 255 for the final results (exact for in < 8.4e6).
//    Codes of 7 or 8 bits are split, q = 16 q_hi + q_lo, into two passes of <= 4 bits.
//  * Weights stay in the file layout (2 bits per weight, nothing copied at load time): each work item decodes
//    its outputs' rows into the index layout (4 bits per weight) in an L2-resident buffer of its thread
//    (decode_indices: ~9 vector instructions, mostly shuffles, per 16 outputs x 4 inputs; the lookups take 2
//    per token for the same), then runs the lookups from there. An item holds all tokens when it can, so
//    each weight is decoded once per call.
//  * Blocking: the tables of all T tokens are built first (4 bytes per token and input, in a buffer of the
//    calling thread kept between calls), laid out per micro-tile of TT = 6 tokens as [chunk][token][16]. The
//    work is cut into items of (all tokens, unless the threads need more items) x (up to 256 outputs, fewer
//    when in is large, so the item's weight indices stay in L2; a multiple of the thread count). Inside an item, for
//    each micro-tile, for each block of KB chunks (the tile's tables for it, 12 KiB, stay in L1), for each 16-output
//    column block, the micro kernel runs 6 tokens x 16 outputs over the block with every accumulator in a register, and
//    its int16 sums are added into the tile's int32 row buffer (which starts from z * wsum, undoing the centring);
//    once per micro-tile each row goes through the epilogue (qlinear_avx2.h: the float64 dequantization, low-rank
//    up-projection and bias, or a plain int32 store).
//  * Speed (Zen 3, one core): the micro kernel does ~4.1 G lookups/s (~265 G multiply-adds/s); the whole GEMM
//    ~200-225 G multiply-adds/s per core for bits 1..4 on the DiT-XL/2 shapes, ~4.5x torch.matmul fp32.
//    The limit is the vector ALU ports: each lookup costs one vpshufb and one vpaddb.
//  * Threads take whole items (dynamic schedule); every item's integer result is exact, so any thread count
//    and schedule gives identical output.
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "qlinear_avx2.h"
#include "robuq/avx512.h"
#include "robuq/cpu.h"
#include "robuq/ternary_gemm.h"

namespace robuq {
namespace {

// max chunks (4 inputs each) per k-block; the int16 bound above needs KB <= 128 (micro_plan's k-blocks keep it)
[[maybe_unused]] constexpr int64_t KB = 128;
constexpr int TT = 6;        // tokens per micro-tile (fixed: the micro kernel's register allocation)
constexpr int64_t OBB = 16;  // 16-output column blocks per work item (256 outputs)

// Weight pair (w0, w1) of the group-local slots 0..7: slot s <-> pattern p = s (s < 4) or s + 1, with
// p = (w0 + 1) + 3 (w1 + 1). Repeated for group B (slots 8..15) and for the second lane.
alignas(32) constexpr int8_t kW0[32] = {-1, 0, 1, -1, 1, -1, 0, 1, -1, 0, 1, -1, 1, -1, 0, 1,
                                        -1, 0, 1, -1, 1, -1, 0, 1, -1, 0, 1, -1, 1, -1, 0, 1};
alignas(32) constexpr int8_t kW1[32] = {-1, -1, -1, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 1, 1, 1,
                                        -1, -1, -1, 0, 0, 1, 1, 1, -1, -1, -1, 0, 0, 1, 1, 1};
// Broadcast q'0 / q'2 (lane 0: chunk 2m) and q'4 / q'6 (lane 1: chunk 2m+1) over a group's 8 slots; kSelB
// the same for the second input of each group.
alignas(32) constexpr int8_t kSelA[32] = {0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2,
                                          4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6};
alignas(32) constexpr int8_t kSelB[32] = {1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3,
                                          5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7};

// Tables of one token, written into its micro-tile's interleaved layout: chunk j's 16 bytes at
// tab + j * TT * 16 (tab points at the token's slot of chunk 0). Inputs >= in count as q' = 0; an odd
// chunk count also writes the table of chunk `chunks` (all zero), which the buffer has room for.
void build_tables(const uint8_t* q, int64_t in, int z, int8_t* tab) {
  const __m256i vz = _mm256_set1_epi8(static_cast<char>(z));
  const __m256i selA = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSelA));
  const __m256i selB = _mm256_load_si256(reinterpret_cast<const __m256i*>(kSelB));
  const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kW0));
  const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kW1));
  for (int64_t k = 0; k < in; k += 8) {
    uint8_t b[8];
    if (k + 8 <= in) {
      std::memcpy(b, q + k, 8);
    } else {
      std::memset(b, z, 8);  // centres to q' = 0
      std::memcpy(b, q + k, static_cast<size_t>(in - k));
    }
    long long v;
    std::memcpy(&v, b, 8);
    const __m256i x = _mm256_sub_epi8(_mm256_set1_epi64x(v), vz);  // q' in [-z, z-1] as int8
    const __m256i a = _mm256_shuffle_epi8(x, selA);
    const __m256i c = _mm256_shuffle_epi8(x, selB);
    const __m256i t = _mm256_add_epi8(_mm256_sign_epi8(a, w0), _mm256_sign_epi8(c, w1));
    int8_t* dst = tab + (k / 4) * (TT * 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(t));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + TT * 16), _mm256_extracti128_si256(t, 1));
  }
}

// ---- micro kernel: 6 tokens x 16 outputs over nj chunks, in inline assembly.
// GCC's register allocation of the intrinsic version adds a register copy per lookup (the loop-carried
// accumulators are live out of the loop), which cost ~20% here; the assembly keeps every accumulator in a
// fixed register: ymm0-5 int8 accumulators (one per token), ymm6-11 int16 accumulators, ymm12 = bytes of 1,
// ymm13 the chunk's 32 indices, ymm14/15 tables and lookups.
//   tp: interleaved tables [chunk][6][16]; wp: indices [chunk][32].
// One STEP = one chunk: 6 lookups (6 x 64 multiply-adds). A FLUSH folds the int8 sums into int16
// (vpmaddubsw with ones adds the group-A and group-B byte of each output) and clears them. The kernel runs
// nfull rounds of R iterations of U chunks (U * R <= N, the int8 bound for the bit width), then `rem` < N
// single chunks, then flushes and stores the int16 sums to out[6][16].
// The assembly macros below keep one instruction per line (not reformatted).
// clang-format off
#define ROBUQ_STEP(off)                                                                         \
  "vmovdqu " #off "*32(%[wp]), %%ymm13\n\t"                                                     \
  "vbroadcasti128 " #off "*96+0(%[tp]), %%ymm14\n\t"                                            \
  "vpshufb %%ymm13, %%ymm14, %%ymm14\n\t"                                                       \
  "vbroadcasti128 " #off "*96+16(%[tp]), %%ymm15\n\t"                                           \
  "vpaddb %%ymm14, %%ymm0, %%ymm0\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm15, %%ymm15\n\t"                                                       \
  "vbroadcasti128 " #off "*96+32(%[tp]), %%ymm14\n\t"                                           \
  "vpaddb %%ymm15, %%ymm1, %%ymm1\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm14, %%ymm14\n\t"                                                       \
  "vbroadcasti128 " #off "*96+48(%[tp]), %%ymm15\n\t"                                           \
  "vpaddb %%ymm14, %%ymm2, %%ymm2\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm15, %%ymm15\n\t"                                                       \
  "vbroadcasti128 " #off "*96+64(%[tp]), %%ymm14\n\t"                                           \
  "vpaddb %%ymm15, %%ymm3, %%ymm3\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm14, %%ymm14\n\t"                                                       \
  "vbroadcasti128 " #off "*96+80(%[tp]), %%ymm15\n\t"                                           \
  "vpaddb %%ymm14, %%ymm4, %%ymm4\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm15, %%ymm15\n\t"                                                       \
  "vpaddb %%ymm15, %%ymm5, %%ymm5\n\t"
#define ROBUQ_FLUSH1(a, s, tmp)                                                                 \
  "vpmaddubsw %%ymm" #a ", %%ymm12, %%ymm" #tmp "\n\t"                                          \
  "vpaddw %%ymm" #tmp ", %%ymm" #s ", %%ymm" #s "\n\t"                                          \
  "vpxor %%xmm" #a ", %%xmm" #a ", %%xmm" #a "\n\t"
#define ROBUQ_FLUSH                                                                             \
  ROBUQ_FLUSH1(0, 6, 14) ROBUQ_FLUSH1(1, 7, 15) ROBUQ_FLUSH1(2, 8, 14)                          \
  ROBUQ_FLUSH1(3, 9, 15) ROBUQ_FLUSH1(4, 10, 14) ROBUQ_FLUSH1(5, 11, 15)
#define ROBUQ_STEPS1 ROBUQ_STEP(0)
#define ROBUQ_STEPS3 ROBUQ_STEP(0) ROBUQ_STEP(1) ROBUQ_STEP(2)
#define ROBUQ_STEPS7 ROBUQ_STEPS3 ROBUQ_STEP(3) ROBUQ_STEP(4) ROBUQ_STEP(5) ROBUQ_STEP(6)

#define ROBUQ_MICRO_ASM(STEPS, U)                                                               \
  asm volatile(                                                                                 \
      "vpcmpeqb %%ymm12, %%ymm12, %%ymm12\n\t"                                                  \
      "vpabsb %%ymm12, %%ymm12\n\t"                                                             \
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"                                                        \
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"                                                        \
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"                                                        \
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"                                                        \
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"                                                        \
      "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"                                                        \
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t"                                                        \
      "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"                                                        \
      "vpxor %%xmm8, %%xmm8, %%xmm8\n\t"                                                        \
      "vpxor %%xmm9, %%xmm9, %%xmm9\n\t"                                                        \
      "vpxor %%xmm10, %%xmm10, %%xmm10\n\t"                                                     \
      "vpxor %%xmm11, %%xmm11, %%xmm11\n\t"                                                     \
      "test %[nfull], %[nfull]\n\t"                                                             \
      "jz 2f\n"                                                                                 \
      "1:\n\t"                                                                                  \
      "mov %[r], %[cnt]\n"                                                                      \
      "5:\n\t" STEPS                                                                            \
      "add $" #U "*32, %[wp]\n\t"                                                               \
      "add $" #U "*96, %[tp]\n\t"                                                               \
      "dec %[cnt]\n\t"                                                                          \
      "jnz 5b\n\t" ROBUQ_FLUSH                                                                  \
      "dec %[nfull]\n\t"                                                                        \
      "jnz 1b\n"                                                                                \
      "2:\n\t"                                                                                  \
      "test %[rem], %[rem]\n\t"                                                                 \
      "jz 4f\n"                                                                                 \
      "3:\n\t" ROBUQ_STEP(0)                                                                    \
      "add $32, %[wp]\n\t"                                                                      \
      "add $96, %[tp]\n\t"                                                                      \
      "dec %[rem]\n\t"                                                                          \
      "jnz 3b\n\t" ROBUQ_FLUSH                                                                  \
      "4:\n\t"                                                                                  \
      "vmovdqu %%ymm6, 0(%[out])\n\t"                                                           \
      "vmovdqu %%ymm7, 32(%[out])\n\t"                                                          \
      "vmovdqu %%ymm8, 64(%[out])\n\t"                                                          \
      "vmovdqu %%ymm9, 96(%[out])\n\t"                                                          \
      "vmovdqu %%ymm10, 128(%[out])\n\t"                                                        \
      "vmovdqu %%ymm11, 160(%[out])\n\t"                                                        \
      "vzeroupper\n\t"                                                                          \
      : [wp] "+r"(wp), [tp] "+r"(tp), [nfull] "+r"(nfull), [rem] "+r"(rem), [cnt] "=&r"(cnt)    \
      : [out] "r"(out), [r] "r"(r)                                                              \
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",  \
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory")

// out[6][16] = int16 sums over nj chunks; U chunks per unrolled step, R steps per flush (U * R <= N).
template <int U>
void micro_asm(const int8_t* tp, const uint8_t* wp, int64_t nj, int64_t r, int16_t* out) {
  int64_t nfull = nj / (U * r), rem = nj % (U * r), cnt;
  if constexpr (U == 7) {
    ROBUQ_MICRO_ASM(ROBUQ_STEPS7, 7);
  } else if constexpr (U == 3) {
    ROBUQ_MICRO_ASM(ROBUQ_STEPS3, 3);
  } else {
    ROBUQ_MICRO_ASM(ROBUQ_STEPS1, 1);
  }
}

#undef ROBUQ_MICRO_ASM
#undef ROBUQ_STEPS7
#undef ROBUQ_STEPS3
#undef ROBUQ_STEPS1
#undef ROBUQ_FLUSH
#undef ROBUQ_FLUSH1
#undef ROBUQ_STEP
// clang-format on

struct MicroPlan {
  void (*fn)(const int8_t*, const uint8_t*, int64_t, int64_t, int16_t*);
  int64_t r;   // U * r <= N = floor(127 / 2^bits)
  int64_t kb;  // k-block: the largest multiple of U * r <= KB, so only a row's last block has single steps
};

MicroPlan micro_plan(int bits) {
  switch (bits) {
    case 1: return {micro_asm<7>, 9, 126};   // U r = 63 <= 63
    case 2: return {micro_asm<7>, 4, 112};   // 28 <= 31
    case 3: return {micro_asm<7>, 2, 126};   // 14 <= 15
    case 4: return {micro_asm<7>, 1, 126};   //  7 <= 7
    case 5: return {micro_asm<3>, 1, 126};   //  3 <= 3
    default: return {micro_asm<1>, 1, 128};  // 1 <= 1
  }
}

// C[t * ldc + i] += out[t][i] (int16 -> int32), t < 6, i < 16; first: C = out (the row's first k-block, so
// the int32 tile needs no clearing).
inline void add_tile(const int16_t* out, int32_t* C, int64_t ldc, bool first, const int32_t* zw) {
  const __m256i* zv = reinterpret_cast<const __m256i*>(zw);
  for (int t = 0; t < TT; ++t) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out + 16 * t));
    __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a)),
            hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1));
    __m256i* c = reinterpret_cast<__m256i*>(C + t * ldc);
    lo = _mm256_add_epi32(_mm256_loadu_si256(first ? zv : c), lo);
    hi = _mm256_add_epi32(_mm256_loadu_si256(first ? zv + 1 : c + 1), hi);
    _mm256_storeu_si256(c, lo);
    _mm256_storeu_si256(c + 1, hi);
  }
}

// Table (and index) buffers of the calling thread, kept between calls (no page faults per call).
struct Buf {
  int8_t* p = nullptr;
  size_t n = 0;
  ~Buf() { std::free(p); }
};
thread_local Buf tl_buf[2];

template <int kWhich>
int8_t* thread_buffer(size_t bytes) {
  Buf& buf = tl_buf[kWhich];
  bytes = std::max<size_t>(bytes, 64);
  if (buf.n < bytes) {
    std::free(buf.p);
    buf.p = static_cast<int8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (!buf.p) {
      buf.n = 0;
      throw std::bad_alloc();
    }
    buf.n = bytes;
  }
  return buf.p;
}
int8_t* table_buffer(size_t bytes) { return thread_buffer<0>(bytes); }
int8_t* table_buffer_indices(size_t bytes) { return thread_buffer<1>(bytes); }
void release_table_buffers() {
  for (Buf& b : tl_buf) {
    std::free(b.p);
    b.p = nullptr;
    b.n = 0;
  }
}

// ---- weights: the file layout (robuq/pack.h) decoded per work item into the index layout of
// robuq/ternary_gemm.h, for the item's column blocks and every chunk. A row's byte j holds chunk j: pair A in
// the low nibble (c0 | c1 << 2), pair B in the high nibble. A nibble becomes its pattern slot by vpshufb;
// the (A, B) slot bytes of a row are interleaved into 16-bit words, and 16 rows x 32 chunks of words are
// transposed (two 8 x 8 word transposes per 128-bit lane) into 32 chunks x 16 outputs.
//
// Slot of a nibble: p = c0 + 3 c1, 0x80 for the zero pattern p = 4, else p (p < 4) or p - 1. Code 3 occurs
// only in padding positions (QLinear rejects it elsewhere) and is read as weight 0; a padding weight meets
// a centred activation of 0 in the tables, so its value never matters.
alignas(32) constexpr uint8_t kNibbleSlotA[32] = {
    0, 1, 2, 1, 3, 0x80, 4, 0x80, 5, 6, 7, 6, 3, 0x80, 4, 0x80,   // nibble c0 | c1 << 2 -> slot; code 3
    0, 1, 2, 1, 3, 0x80, 4, 0x80, 5, 6, 7, 6, 3, 0x80, 4, 0x80};  // read as 1 (weight 0); both lanes
alignas(32) constexpr uint8_t kNibbleSlotB[32] = {                // group B: slot + 8
    8, 9, 10, 9, 11, 0x80, 12, 0x80, 13, 14, 15, 14, 11, 0x80, 12, 0x80,
    8, 9, 10, 9, 11, 0x80, 12, 0x80, 13, 14, 15, 14, 11, 0x80, 12, 0x80};

inline void transpose8x8_epi16(__m256i r[8]) {
  const __m256i t0 = _mm256_unpacklo_epi16(r[0], r[1]), t1 = _mm256_unpackhi_epi16(r[0], r[1]);
  const __m256i t2 = _mm256_unpacklo_epi16(r[2], r[3]), t3 = _mm256_unpackhi_epi16(r[2], r[3]);
  const __m256i t4 = _mm256_unpacklo_epi16(r[4], r[5]), t5 = _mm256_unpackhi_epi16(r[4], r[5]);
  const __m256i t6 = _mm256_unpacklo_epi16(r[6], r[7]), t7 = _mm256_unpackhi_epi16(r[6], r[7]);
  const __m256i u0 = _mm256_unpacklo_epi32(t0, t2), u1 = _mm256_unpackhi_epi32(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi32(t1, t3), u3 = _mm256_unpackhi_epi32(t1, t3);
  const __m256i u4 = _mm256_unpacklo_epi32(t4, t6), u5 = _mm256_unpackhi_epi32(t4, t6);
  const __m256i u6 = _mm256_unpacklo_epi32(t5, t7), u7 = _mm256_unpackhi_epi32(t5, t7);
  r[0] = _mm256_unpacklo_epi64(u0, u4);
  r[1] = _mm256_unpackhi_epi64(u0, u4);
  r[2] = _mm256_unpacklo_epi64(u1, u5);
  r[3] = _mm256_unpackhi_epi64(u1, u5);
  r[4] = _mm256_unpacklo_epi64(u2, u6);
  r[5] = _mm256_unpackhi_epi64(u2, u6);
  r[6] = _mm256_unpacklo_epi64(u3, u7);
  r[7] = _mm256_unpackhi_epi64(u3, u7);
}

// dst[(c * chunks + j) * 32 + 2i + h] for column blocks cb0 .. cb0 + ncb - 1 (c = cb - cb0), all chunks.
void decode_indices(const uint8_t* packed, int64_t out, int64_t chunks, int64_t cb0, int64_t ncb, uint8_t* dst) {
  const __m256i lutA = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleSlotA));
  const __m256i lutB = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleSlotB));
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  alignas(32) uint8_t pad[32];
  for (int64_t c = 0; c < ncb; ++c) {
    const int64_t rbase = (cb0 + c) * 16;
    for (int64_t j0 = 0; j0 < chunks; j0 += 32) {
      const int64_t nj = std::min<int64_t>(32, chunks - j0);
      __m256i lo[16], hi[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t r = rbase + i;
        __m256i R;
        if (r < out && nj == 32) {
          R = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + r * chunks + j0));
        } else {
          std::memset(pad, 0x55, 32);  // weight 0 everywhere
          if (r < out) std::memcpy(pad, packed + r * chunks + j0, static_cast<size_t>(nj));
          R = _mm256_load_si256(reinterpret_cast<const __m256i*>(pad));
        }
        const __m256i A = _mm256_shuffle_epi8(lutA, _mm256_and_si256(R, low4));
        const __m256i B = _mm256_shuffle_epi8(lutB, _mm256_and_si256(_mm256_srli_epi16(R, 4), low4));
        lo[i] = _mm256_unpacklo_epi8(A, B);  // words: chunks 0..7 | 16..23
        hi[i] = _mm256_unpackhi_epi8(A, B);  // chunks 8..15 | 24..31
      }
      transpose8x8_epi16(lo);
      transpose8x8_epi16(lo + 8);
      transpose8x8_epi16(hi);
      transpose8x8_epi16(hi + 8);
      uint8_t* d = dst + (c * chunks + j0) * 32;
      for (int jj = 0; jj < 8; ++jj) {
        const __m256i o[4] = {_mm256_permute2x128_si256(lo[jj], lo[8 + jj], 0x20),   // chunk jj
                              _mm256_permute2x128_si256(hi[jj], hi[8 + jj], 0x20),   // chunk 8 + jj
                              _mm256_permute2x128_si256(lo[jj], lo[8 + jj], 0x31),   // chunk 16 + jj
                              _mm256_permute2x128_si256(hi[jj], hi[8 + jj], 0x31)};  // chunk 24 + jj
        for (int g = 0; g < 4; ++g) {
          const int64_t j = jj + 8 * g;
          if (j < nj) _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j * 32), o[g]);
        }
      }
    }
  }
}

// Codes of at most 6 bits.
void gemm_direct(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                 const int32_t* wsum, const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep) {
  const int64_t chunks = (in + 3) / 4, col_blocks = (out + 15) / 16;
  const int z = 1 << (bits - 1);
  const int64_t tile_bytes = ((chunks + 1) / 2 * 2) * TT * 16;  // one micro-tile's tables (even chunk count)
  const int64_t n_tiles = (T + TT - 1) / TT;
  int8_t* tabs = table_buffer(static_cast<size_t>(n_tiles * tile_bytes));
  const MicroPlan plan = micro_plan(bits);
  // Work items: (token block) x (output block). An output block's indices (obb * chunks * 32 bytes) should
  // stay in L2 (~256 KiB); there are as few as that allows, but a multiple of the thread count, of nearly
  // equal size. All tokens form one block (each weight is decoded once per call) unless that leaves fewer
  // than 4 items per thread (a core slowed by another tenant then costs only its share).
  const int64_t obb_max = std::max<int64_t>(1, std::min<int64_t>(OBB, (256 << 10) / std::max<int64_t>(1, chunks * 32)));
  int64_t n_ob = (col_blocks + obb_max - 1) / obb_max;
  n_ob = std::min(col_blocks, (n_ob + threads - 1) / threads * threads);
  const int64_t obb = (col_blocks + n_ob - 1) / n_ob;
  n_ob = (col_blocks + obb - 1) / obb;
  const int64_t n_tb = std::min(n_tiles, std::max<int64_t>(1, (4 * threads + n_ob - 1) / n_ob));
  const int64_t TB = (n_tiles + n_tb - 1) / n_tb * TT;
  const int64_t items = n_tb * n_ob;
  const int64_t ldc = obb * 16;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
  // Per-thread buffers, allocated here so that nothing inside the parallel region can throw: the int32 tile
  // (TT rows of the item's outputs), the item's decoded indices, the epilogue's scratch.
  const int64_t idx_bytes = (obb * chunks * 32 + 63) / 64 * 64;
  const int64_t epi_floats = e.block_scratch(ldc);
  std::vector<int32_t> cbufs(static_cast<size_t>(threads * TT * ldc));
  std::vector<float> ebufs(static_cast<size_t>(std::max<int64_t>(1, threads * epi_floats)));
  // The tables hold centred codes q - z, so a token's exact sums are z * wsum plus the tiles: its int32 row
  // starts from z * wsum (outputs padded to whole 16-output blocks with 0).
  std::vector<int32_t> zws(static_cast<size_t>(col_blocks * 16), 0);
  for (int64_t r = 0; r < out; ++r) zws[static_cast<size_t>(r)] = z * wsum[r];
  const int32_t* const zw = zws.data();
  uint8_t* ibufs = reinterpret_cast<uint8_t*>(table_buffer_indices(static_cast<size_t>(threads * idx_bytes)));
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    static_assert(TT % 2 == 0, "token pairs");
    int32_t* const C = cbufs.data() + static_cast<size_t>(tid) * TT * ldc;
    uint8_t* const ibuf = ibufs + tid * idx_bytes;
    float* const escr = ebufs.data() + tid * epi_floats;
    alignas(32) int16_t tile_out[TT * 16];
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t t2 = 0; t2 < n_tiles * TT; t2 += 2) {  // token pairs (TT is even), 4 pairs per grab
      // the rows' codes, made by this thread just before use
      if (prep != nullptr && t2 < T) (*prep)(t2, std::min<int64_t>(2, T - t2), tid);
      for (int64_t t = t2; t < t2 + 2; ++t) {
        int8_t* tab = tabs + (t / TT) * tile_bytes + (t % TT) * 16;
        if (t < T) {
          build_tables(q + t * in, in, z, tab);
        } else {
          for (int64_t j = 0; j < (chunks + 1) / 2 * 2; ++j) std::memset(tab + j * TT * 16, 0, 16);
        }
      }
    }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t it = 0; it < items; ++it) {
      // Consecutive items share a token block (its tables stay hot); the weights of a layer stay in L3.
      const int64_t tb = it / n_ob, ob = it % n_ob;
      const int64_t t0 = tb * TB, nt = std::min(TB, T - t0);
      const int64_t cb0 = ob * obb, ncb = std::min(obb, col_blocks - cb0);
      const int64_t r0 = cb0 * 16, nr = std::min(ncb * 16, out - r0);
      decode_indices(packed, out, chunks, cb0, ncb, ibuf);
      e.block_begin(r0, nr, escr);
      for (int64_t tt = 0; tt < nt; tt += TT) {
        if (chunks == 0)  // no k-block writes the tile (in == 0)
          for (int64_t t = 0; t < TT; ++t) std::copy(zw + r0, zw + r0 + ncb * 16, C + t * ldc);
        const int8_t* tab = tabs + ((t0 + tt) / TT) * tile_bytes;
        // The next k-block's tables (this micro-tile's, or the next micro-tile's first) are fetched while the
        // current one runs, a slice before each micro kernel call: a table block is read from far away once
        // per item (L3 or DRAM when T * in * 4 bytes of tables exceed the cache), then reused from L1.
        const int8_t* tab_end = tabs + n_tiles * tile_bytes;
        for (int64_t j0 = 0; j0 < chunks; j0 += plan.kb) {
          const int64_t nj = std::min(plan.kb, chunks - j0);
          const int8_t* next = j0 + plan.kb < chunks ? tab + (j0 + plan.kb) * TT * 16 : tab + tile_bytes;
          const int64_t next_bytes = std::min<int64_t>(plan.kb * TT * 16, tab_end - next);
          const int64_t slice = (next_bytes / 64 + ncb - 1) / ncb;
          for (int64_t cb = 0; cb < ncb; ++cb) {
            for (int64_t l = cb * slice; l < std::min((cb + 1) * slice, next_bytes / 64); ++l)
              _mm_prefetch(reinterpret_cast<const char*>(next + l * 64), _MM_HINT_T0);
            plan.fn(tab + j0 * TT * 16, ibuf + (cb * chunks + j0) * 32, nj, plan.r, tile_out);
            add_tile(tile_out, C + cb * 16, ldc, j0 == 0, zw + r0 + cb * 16);
          }
        }
        const int64_t ntt = std::min<int64_t>(TT, nt - tt);
        e.tile(t0 + tt, ntt, r0, nr, C, ldc, escr);
      }
    }
  }
}

void check_args(int bits, int64_t T, int64_t out, int64_t in, int threads) {
  if (bits < 1 || bits > 8) throw std::invalid_argument("ternary_gemm_avx2: bits must be in 1..8");
  if (T < 0 || out < 0 || in < 0) throw std::invalid_argument("ternary_gemm_avx2: negative shape");
  if (threads < 1) throw std::invalid_argument("ternary_gemm_avx2: threads must be >= 1");
}

}  // namespace

namespace avx2 {

void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const QEpilogue& e, int threads, const RowPrep* prep) {
  check_args(bits, T, out, in, threads);
  if (T == 0 || out == 0) return;
  if (bits <= 6) {
    gemm_direct(q, T, bits, packed, out, in, wsum, e, threads, prep);
    return;
  }
  if (prep != nullptr) {
    [[maybe_unused]] const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, T)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < T; t += 2) {
      int tid = 0;
#ifdef _OPENMP
      tid = omp_get_thread_num();
#endif
      (*prep)(t, std::min<int64_t>(2, T - t), tid);
    }
  }
  // 7 or 8 bits: q = 16 q_hi + q_lo, q_lo < 16 (4 bits), q_hi < 2^(bits-4); exact sums first, then e.
  const size_t n = static_cast<size_t>(T * in);
  std::vector<uint8_t> qs(n);
  std::vector<int32_t> hi(static_cast<size_t>(T * out)), lo(hi.size());
  QEpilogue ea;
  ea.out = out;
  ea.acc = hi.data();
  for (size_t i = 0; i < n; ++i) qs[i] = static_cast<uint8_t>(q[i] >> 4);
  gemm_direct(qs.data(), T, bits - 4, packed, out, in, wsum, ea, threads, nullptr);
  ea.acc = lo.data();
  for (size_t i = 0; i < n; ++i) qs[i] = static_cast<uint8_t>(q[i] & 15);
  gemm_direct(qs.data(), T, 4, packed, out, in, wsum, ea, threads, nullptr);
  for (size_t i = 0; i < hi.size(); ++i) hi[i] = hi[i] * 16 + lo[i];
  std::vector<float> scr(static_cast<size_t>(std::max<int64_t>(1, e.block_scratch(out))));
  e.block_begin(0, out, scr.data());
  for (int64_t t = 0; t < T; t += QEpilogue::kTileRows)
    e.tile(t, std::min(QEpilogue::kTileRows, T - t), 0, out, hi.data() + t * out, out, scr.data());
}

void release_gemm_scratch() { release_table_buffers(); }

}  // namespace avx2

void ternary_gemm_avx2(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                       const int32_t* wsum, int32_t* acc, int threads) {
  avx2::QEpilogue e;
  e.out = out;
  e.acc = acc;
  avx2::ternary_gemm(q, T, bits, packed, out, in, wsum, e, threads, nullptr);
}

#ifdef ROBUQ_HAVE_AVX512
// Here, not in kernels/avx512/: QEpilogue's inline members are then only ever built for AVX2.
void ternary_gemm_avx512(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                         const int32_t* wsum, int32_t* acc, int threads) {
  if (!tier_available(Tier::Avx512))
    throw std::runtime_error("ternary_gemm_avx512: this CPU / build has no avx512 tier (AVX-512 F/BW/VL/VBMI/VNNI)");
  if (!avx512::ternary_gemm_supported(bits)) {  // 7 and 8 bits: the avx2 kernel (exact as well)
    ternary_gemm_avx2(q, T, bits, packed, out, in, wsum, acc, threads);
    return;
  }
  avx2::QEpilogue e;
  e.out = out;
  e.acc = acc;
  avx512::ternary_gemm(q, T, bits, packed, out, in, wsum, e, threads, nullptr);
}
#endif

#ifdef ROBUQ_HAVE_AMX
void ternary_gemm_amx(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                      const int32_t* wsum, int32_t* acc, int threads) {
  if (!tier_available(Tier::Amx))
    throw std::runtime_error("ternary_gemm_amx: this CPU / OS / build has no amx tier (AMX-INT8 and the avx512 tier)");
  avx2::QEpilogue e;
  e.out = out;
  e.acc = acc;
  amx::ternary_gemm(q, T, bits, packed, out, in, wsum, e, threads, nullptr);
}
#endif

void ternary_lut_indices_avx2(const uint8_t* packed, int64_t out, int64_t in, uint8_t* idx) {
  if (out < 0 || in < 0) throw std::invalid_argument("ternary_lut_indices_avx2: negative shape");
  decode_indices(packed, out, (in + 3) / 4, 0, (out + 15) / 16, idx);
}

}  // namespace robuq
