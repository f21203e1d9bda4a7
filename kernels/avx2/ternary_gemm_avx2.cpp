// AVX2 table-lookup GEMM for ternary weights x 1..8-bit activation codes (robuq/ternary_gemm.h).
//
// Algorithm (cf. bitnet.cpp TL1 / T-MAC; our own arrangement):
//  * Activation codes are centred, q' = q - z with z = 2^(bits-1), so q' in [-z, z-1]; then
//    sum_k q w = sum_k q' w + z * wsum[r]   (wsum from the repack).
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
//  * Blocking: the tables of all T tokens are built first (4 bytes per token and input, in a buffer of the
//    calling thread kept between calls), laid out per micro-tile of TT = 6 tokens as [chunk][token][16]. The
//    work is cut into items of (up to TB = 48 tokens) x (up to 256 outputs, fewer when in is large, so the
//    item's weight indices stay in L2). Inside an item, for each micro-tile, for each block of KB chunks
//    (the tile's tables for it, 12 KiB, stay in L1), for each 16-output column block, the micro kernel runs
//    6 tokens x 16 outputs over the block with every accumulator in a register, and its int16 sums are added
//    into the tile's int32 row buffer, which is written to acc (+ z * wsum) once per micro-tile.
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

#include "robuq/ternary_gemm.h"

namespace robuq {
namespace {

constexpr int64_t KB = 128;   // max chunks (4 inputs each) per k-block; the int16 bound above needs KB <= 128
constexpr int TT = 6;         // tokens per micro-tile (fixed: the micro kernel's register allocation)
constexpr int64_t TB = 48;    // tokens per work item (a multiple of TT)
constexpr int64_t OBB = 16;   // 16-output column blocks per work item (256 outputs)

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

struct MicroPlan {
  void (*fn)(const int8_t*, const uint8_t*, int64_t, int64_t, int16_t*);
  int64_t r;   // U * r <= N = floor(127 / 2^bits)
  int64_t kb;  // k-block: the largest multiple of U * r <= KB, so only a row's last block has single steps
};

MicroPlan micro_plan(int bits) {
  switch (bits) {
    case 1: return {micro_asm<7>, 9, 126};  // U r = 63 <= 63
    case 2: return {micro_asm<7>, 4, 112};  // 28 <= 31
    case 3: return {micro_asm<7>, 2, 126};  // 14 <= 15
    case 4: return {micro_asm<7>, 1, 126};  //  7 <= 7
    case 5: return {micro_asm<3>, 1, 126};  //  3 <= 3
    default: return {micro_asm<1>, 1, 128};  // 1 <= 1
  }
}

// C[t * ldc + i] += out[t][i] (int16 -> int32), t < 6, i < 16.
inline void add_tile(const int16_t* out, int32_t* C, int64_t ldc) {
  for (int t = 0; t < TT; ++t) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out + 16 * t));
    __m256i* c = reinterpret_cast<__m256i*>(C + t * ldc);
    _mm256_storeu_si256(c, _mm256_add_epi32(_mm256_loadu_si256(c), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(a))));
    _mm256_storeu_si256(c + 1,
                        _mm256_add_epi32(_mm256_loadu_si256(c + 1), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(a, 1))));
  }
}

// Table buffer of the calling thread, kept between calls (no page faults per call).
int8_t* table_buffer(size_t bytes) {
  struct Buf {
    int8_t* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
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

// Codes of at most 6 bits.
void gemm_direct(const uint8_t* q, int64_t T, int bits, const TernaryWeightsAvx2& w, int32_t* acc, int threads) {
  const int64_t in = w.in, out = w.out, chunks = w.chunks;
  const int z = 1 << (bits - 1);
  const int64_t tile_bytes = ((chunks + 1) / 2 * 2) * TT * 16;  // one micro-tile's tables (even chunk count)
  const int64_t n_tiles = (T + TT - 1) / TT;
  int8_t* tabs = table_buffer(static_cast<size_t>(n_tiles * tile_bytes));
  const MicroPlan plan = micro_plan(bits);
  // Column blocks per item: the item's indices (obb * chunks * 32 bytes) should stay in L2 (~256 KiB).
  const int64_t obb = std::max<int64_t>(1, std::min<int64_t>(OBB, (256 << 10) / std::max<int64_t>(1, chunks * 32)));
  const int64_t n_tb = (T + TB - 1) / TB;
  const int64_t n_ob = (w.col_blocks + obb - 1) / obb;
  const int64_t items = n_tb * n_ob;
  const int64_t ldc = obb * 16;
  // Per-thread int32 tile (TT rows of the item's outputs), allocated here so that nothing inside the
  // parallel region can throw.
  std::vector<int32_t> cbufs(static_cast<size_t>(threads * TT * ldc));
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    int32_t* const C = cbufs.data() + static_cast<size_t>(omp_get_thread_num()) * TT * ldc;
#else
    int32_t* const C = cbufs.data();
#endif
    alignas(32) int16_t tile_out[TT * 16];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t t = 0; t < n_tiles * TT; ++t) {
      int8_t* tab = tabs + (t / TT) * tile_bytes + (t % TT) * 16;
      if (t < T) {
        build_tables(q + t * in, in, z, tab);
      } else {
        for (int64_t j = 0; j < (chunks + 1) / 2 * 2; ++j) std::memset(tab + j * TT * 16, 0, 16);
      }
    }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t it = 0; it < items; ++it) {
      const int64_t tb = it / n_ob, ob = it % n_ob;
      const int64_t t0 = tb * TB, nt = std::min(TB, T - t0);
      const int64_t cb0 = ob * obb, ncb = std::min(obb, w.col_blocks - cb0);
      const int64_t r0 = cb0 * 16, nr = std::min(ncb * 16, out - r0);
      for (int64_t tt = 0; tt < nt; tt += TT) {
        std::fill(C, C + TT * ldc, 0);
        const int8_t* tab = tabs + ((t0 + tt) / TT) * tile_bytes;
        for (int64_t j0 = 0; j0 < chunks; j0 += plan.kb) {
          const int64_t nj = std::min(plan.kb, chunks - j0);
          for (int64_t cb = 0; cb < ncb; ++cb) {
            const uint8_t* widx = w.idx.data() + ((cb0 + cb) * chunks + j0) * 32;
            plan.fn(tab + j0 * TT * 16, widx, nj, plan.r, tile_out);
            add_tile(tile_out, C + cb * 16, ldc);
          }
        }
        const int64_t ntt = std::min<int64_t>(TT, nt - tt);
        for (int64_t t = 0; t < ntt; ++t) {
          int32_t* dst = acc + (t0 + tt + t) * out + r0;
          const int32_t* src = C + t * ldc;
          for (int64_t r = 0; r < nr; ++r) dst[r] = src[r] + z * w.wsum[static_cast<size_t>(r0 + r)];
        }
      }
    }
  }
}

}  // namespace

void ternary_gemm_avx2(const uint8_t* q, int64_t T, int bits, const TernaryWeightsAvx2& w, int32_t* acc,
                       int threads) {
  if (bits < 1 || bits > 8) throw std::invalid_argument("ternary_gemm_avx2: bits must be in 1..8");
  if (T < 0) throw std::invalid_argument("ternary_gemm_avx2: negative T");
  if (threads < 1) throw std::invalid_argument("ternary_gemm_avx2: threads must be >= 1");
  if (T == 0 || w.out == 0) return;
  if (bits <= 6) {
    gemm_direct(q, T, bits, w, acc, threads);
    return;
  }
  // 7 or 8 bits: q = 16 q_hi + q_lo, q_lo < 16 (4 bits), q_hi < 2^(bits-4).
  const size_t n = static_cast<size_t>(T * w.in);
  std::vector<uint8_t> qs(n);
  for (size_t i = 0; i < n; ++i) qs[i] = static_cast<uint8_t>(q[i] >> 4);
  gemm_direct(qs.data(), T, bits - 4, w, acc, threads);
  std::vector<int32_t> lo(static_cast<size_t>(T * w.out));
  for (size_t i = 0; i < n; ++i) qs[i] = static_cast<uint8_t>(q[i] & 15);
  gemm_direct(qs.data(), T, 4, w, lo.data(), threads);
  for (size_t i = 0; i < lo.size(); ++i) acc[i] = acc[i] * 16 + lo[i];
}

}  // namespace robuq
