// AMX ternary GEMM (robuq/avx512.h, namespace amx): ternary weights x 1..8-bit activation codes on the tile
// unit of Intel Sapphire Rapids and later.
//
// Why (numbers in docs/performance.md): one tdpbusd multiplies a 16 x 64 tile of unsigned bytes by a 64 x 16
// tile of signed bytes into 16 x 16 int32 sums, 16384 multiply-adds, one per 16 cycles per core: robuq-bench's
// amx_tdpbusd ceiling measured 3.85 T multiply-adds/s per core on a 2-core Intel Xeon VM (2.2-2.3 T with the
// operands loaded from L1 / L2), where the avx512 tier's vpermb table step (tl3_step) reached 0.72 T. The activation
// codes are unsigned bytes and the weights -1 / 0 / +1 signed bytes, so the sums are the exact integers sum_k q[t, k]
// w[r, k] of every tier, uncentred, for any bit width 1..8 (|sum| <= 255 * in, exact in int32 for in < 8.4e6), and the
// shared avx512 epilogue turns them into the same float bits.
//
// Layouts:
//  * A (activation codes): all tokens' rows with stride ldk (in rounded up to 64, zero padded) and Tp rows (T
//    rounded up to 32, zero rows), so a tile is 16 consecutive rows x 64 consecutive inputs. Where in = ldk (every
//    DiT width) and the codes are aligned, the codes' own rows are A and only a last partial 32-token pair is
//    copied and padded.
//  * B (weights): tdpbusd wants for 16 outputs and 64 inputs a tile whose row i holds, for each output c, its
//    4 weights of inputs 4 i .. 4 i + 3 (bytes 4 c .. 4 c + 3): the "VNNI" layout. Weights stay in the .rq
//    2-bit layout; the thread that takes an output group decodes the group's tiles into its own buffer
//    b[panel of 16 outputs][k-block of 64][16][64] signed bytes (zero beyond `out` and `in`; at most 512 KiB,
//    L2) right before using them, so every weight is decoded once per call and nothing is kept between calls.
//    A 16-byte run of a packed row is exactly the 64 weights of one k-block, and tile row i needs byte i of the
//    16 rows' runs: the 16 x 16 bytes are transposed (two rounds of vpermt2b), then per tile row vpermb copies
//    each byte to the 4 lanes of its weights, vpmultishiftqb moves each lane's 2 bits down and vpshufb maps
//    code c to c - 1 (decode_tile).
//
// Work, for weights over 1 MiB decoded (smaller ones: gemm_token_major below), in one parallel region: (1) threads
// take chunks of 16 tokens from a dynamic schedule and make their codes (prep: Hadamard + quantize) into A; (2) after
// the barrier they take output groups (<= 256 outputs, at least 4 per thread where `out` allows) from a dynamic
// schedule: decode the group's weights, run 32-token x 32-output blocks (4 accumulator tiles, 2 A and 2 B tiles) over k
// in chunks whose A rows for all tokens stay in L2, keep the int32 sums of all tokens x the group (L2), and apply the
// epilogue to each 32 tokens as soon as the last k chunk has finished them (while their sums are in L1). So the weights
// stream from memory once per call (a token-block schedule streamed them once per block: 1.2 vs 2.3 T
// multiply-adds/s per core in a loop test with the weights beyond / within L2). Sums are exact integers and the
// epilogue works per output, so any split gives the same bits.
#include "../avx512/avx512_common.h"  // first

#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../avx2/qlinear_avx2.h"
#include "robuq/avx512.h"

namespace robuq {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t round_up(int64_t a, int64_t m) { return (a + m - 1) / m * m; }

constexpr int64_t KT = 64;                       // inputs per tile (64 bytes per A row)
constexpr int64_t TILE = 16 * 64;                // bytes of a full tile
constexpr int64_t kMaxG = 256;                   // outputs per group at most
constexpr int64_t kBGroupBytes = 512 << 10;      // decoded weights of one output group (per thread, L2)
constexpr int64_t kAChunkBytes = 768 << 10;      // the A rows of one k chunk for all tokens (L2)
constexpr int64_t kTokChunk = 16;                // tokens per item of the preparation pass
constexpr int64_t kLocalWeightsBytes = 1 << 20;  // decoded weights small enough for one copy per thread (L2)

// The tile configuration (palette 1): tiles 0..3 the 16 x 16 int32 sums, 4..5 A (16 rows x 64 bytes), 6..7 B.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) {
      colsb[i] = 64;
      rows[i] = 16;
    }
  }
};

struct Consts {
  uint8_t shift[64];   // lane l: bit offset of its 2-bit code in its qword (two packed bytes, each 4 times)
  uint8_t to_w[64];    // code c (0..3) -> weight c - 1 (code 3, invalid, never reaches here: QLinear rejects it)
  uint8_t t1[2][64];   // 16 x 16 byte transpose, round 1: U[8 i' + c'] = row c' (of 8), byte 8 h + i'
  uint8_t t2[2][64];   // round 2: O[16 k + c] = U_rows0-7[8 (4 m + k) + c] or U_rows8-15[8 (4 m + k) + c - 8]
  uint8_t rep[4][64];  // expansion: lane l <- byte 16 k + l / 4 of O (tile row 4 m + k, output l / 4)
  constexpr Consts() : shift(), to_w(), t1(), t2(), rep() {
    for (int l = 0; l < 64; ++l) {
      const int p = l % 8;  // qword lanes 0..3 hold packed byte 2 q, lanes 4..7 byte 2 q + 1
      shift[l] = static_cast<uint8_t>(p < 4 ? 2 * p : 32 + 2 * (p - 4));
      const int c = l % 16;
      to_w[l] = static_cast<uint8_t>(c < 3 ? c - 1 : 0);
      const int i1 = l / 8, c1 = l % 8;  // round 1
      for (int h = 0; h < 2; ++h)
        t1[h][l] = static_cast<uint8_t>(c1 < 4 ? 16 * c1 + 8 * h + i1 : 64 + 16 * (c1 - 4) + 8 * h + i1);
      const int k = l / 16, c2 = l % 16;  // round 2
      for (int m = 0; m < 2; ++m)
        t2[m][l] = static_cast<uint8_t>(c2 < 8 ? 8 * (4 * m + k) + c2 : 64 + 8 * (4 * m + k) + c2 - 8);
      for (int kk = 0; kk < 4; ++kk) rep[kk][l] = static_cast<uint8_t>(16 * kk + l / 4);
    }
  }
};
alignas(64) constexpr Consts kC{};

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// ldtilecfg from a configuration in memory. The compiler barrier keeps the configuration's stores: GCC 12 treats
// the builtin as reading only part of its operand and dropped the stores to the row / column fields of a local
// configuration (the tiles then stayed unconfigured and the first tile instruction raised #UD).
inline void load_tile_config(const void* cfg) {
  __asm__ volatile("" : : "r"(cfg) : "memory");
  _tile_loadconfig(cfg);
}

// The B tile of outputs 16 p .. 16 p + 15 and inputs 64 kb .. 64 kb + 63 into dst (1 KiB). Row i of the tile
// holds, for each output c, the 4 weights of packed byte P[c][16 kb + i]: the 16 x 16 packed bytes are
// transposed (two rounds of vpermt2b), then each tile row is expanded (vpermb copies byte c to lanes 4 c ..
// 4 c + 3, vpmultishiftqb moves each lane's 2 bits down, vpshufb maps code c to weight c - 1).
void decode_tile(const uint8_t* packed, int64_t out, int64_t in, int64_t pc, int64_t p, int64_t kb, uint8_t* dst) {
  const int64_t b0 = kb * 16, nb = imin(16, pc - b0);
  const __mmask16 lm = static_cast<__mmask16>((1u << nb) - 1);
  const int64_t valid = imin(64, in - kb * KT);  // weights of inputs >= in read as 0
  __m512i z[4];
  for (int j = 0; j < 4; ++j) {
    __m512i v = _mm512_setzero_si512();
    for (int rho = 0; rho < 4; ++rho) {
      const int64_t row = p * 16 + 4 * j + rho;
      const __m128i x = _mm_maskz_loadu_epi8(row < out ? lm : __mmask16(0), packed + imin(row, out - 1) * pc + b0);
      switch (rho) {  // the lane index of vinserti32x4 is an immediate
        case 0: v = _mm512_inserti32x4(v, x, 0); break;
        case 1: v = _mm512_inserti32x4(v, x, 1); break;
        case 2: v = _mm512_inserti32x4(v, x, 2); break;
        default: v = _mm512_inserti32x4(v, x, 3); break;
      }
    }
    z[j] = v;
  }
  const __m512i t1a = load512(kC.t1[0]), t1b = load512(kC.t1[1]), t2a = load512(kC.t2[0]), t2b = load512(kC.t2[1]);
  const __m512i u_lo01 = _mm512_permutex2var_epi8(z[0], t1a, z[1]), u_hi01 = _mm512_permutex2var_epi8(z[0], t1b, z[1]);
  const __m512i u_lo23 = _mm512_permutex2var_epi8(z[2], t1a, z[3]), u_hi23 = _mm512_permutex2var_epi8(z[2], t1b, z[3]);
  const __m512i o[4] = {_mm512_permutex2var_epi8(u_lo01, t2a, u_lo23), _mm512_permutex2var_epi8(u_lo01, t2b, u_lo23),
                        _mm512_permutex2var_epi8(u_hi01, t2a, u_hi23), _mm512_permutex2var_epi8(u_hi01, t2b, u_hi23)};
  const __m512i shift = load512(kC.shift), to_w = load512(kC.to_w), three = _mm512_set1_epi8(3);
  for (int i = 0; i < 16; ++i) {
    // lanes of inputs 4 i + (l % 4) >= valid read as 0
    const int64_t v = valid - 4 * i;
    const __mmask64 km = v >= 4 ? ~__mmask64(0) : v <= 0 ? __mmask64(0) : 0x1111111111111111ull * ((1ull << v) - 1);
    __m512i y = _mm512_permutexvar_epi8(load512(kC.rep[i % 4]), o[i / 4]);
    y = _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, y), three);
    _mm512_storeu_si512(dst + i * 64, _mm512_maskz_shuffle_epi8(km, to_w, y));
  }
}

// 32 tokens (A rows a .. a + 31, stride lda, from k-block kb0) x 32 outputs (B panels b, b + kbs tiles) over
// nkb k-blocks: the int32 sums into c[i * ldc + j], i < 32, j < 32, added to what c holds unless first.
inline void block32x32(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t kbs, int64_t kb0, int64_t nkb,
                       int32_t* c, int64_t ldc, bool first) {
  const uint8_t* a1 = a + 16 * lda;
  const uint8_t* b1 = b + kbs * TILE;
  const int64_t st = ldc * 4;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c, st);
    _tile_loadd(1, c + 16, st);
    _tile_loadd(2, c + 16 * ldc, st);
    _tile_loadd(3, c + 16 * ldc + 16, st);
  }
  for (int64_t kb = kb0; kb < kb0 + nkb; ++kb) {
    _tile_loadd(4, a + kb * KT, lda);
    _tile_loadd(6, b + kb * TILE, 64);
    _tile_loadd(7, b1 + kb * TILE, 64);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_loadd(5, a1 + kb * KT, lda);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  _tile_stored(0, c, st);
  _tile_stored(1, c + 16, st);
  _tile_stored(2, c + 16 * ldc, st);
  _tile_stored(3, c + 16 * ldc + 16, st);
}

thread_local avx512::ScratchBuffer tl_w, tl_work;

void check_args(int bits, int64_t T, int64_t out, int64_t in, int threads) {
  if (bits < 1 || bits > 8) throw std::invalid_argument("amx::ternary_gemm: bits must be in 1..8");
  if (T < 0 || out < 0 || in < 0) throw std::invalid_argument("amx::ternary_gemm: negative shape");
  if (threads < 1) throw std::invalid_argument("amx::ternary_gemm: threads must be >= 1");
}

// The schedule for small weight matrices (decoded size <= kLocalWeightsBytes): every thread decodes the whole
// matrix into its own buffer (L2), then threads take token blocks from a dynamic schedule and do everything for
// their tokens: prep, an aligned copy of the codes (A), the sums over all outputs and the epilogue, 32 tokens at
// a time. No cache line moves between cores except the outputs; the output-major schedule reads every token's
// codes on every core, which for small layers cost more than the GEMM (DiT-S/2 proj: 2 threads slower than 1).
void gemm_token_major(const uint8_t* q, int64_t T, const uint8_t* packed, int64_t out, int64_t in,
                      const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep, const float* up_panels) {
  const int64_t ldk = imax(KT, round_up(in, KT)), kbs = ldk / KT, out_p = round_up(out, 32), pc = (in + 3) / 4;
  const int64_t panels = out_p / 16;
  const int64_t TB = imax(32, imin(256, round_up((T + 4 * threads - 1) / (4 * threads), 32)));
  const int64_t items = (T + TB - 1) / TB;
  const int64_t b_bytes = panels * kbs * TILE, a_bytes = TB * ldk, c_bytes = round_up(32 * out_p * 4, 64);
  const int64_t per_thread = b_bytes + a_bytes + c_bytes;
  const int nt = static_cast<int>(imax(1, imin(threads, items)));
  uint8_t* const work = tl_work.get(static_cast<size_t>(per_thread * nt));
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    uint8_t* const B = work + tid * per_thread;
    uint8_t* const A = B + b_bytes;
    int32_t* const C = reinterpret_cast<int32_t*>(A + a_bytes);
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t kb = 0; kb < kbs; ++kb) decode_tile(packed, out, in, pc, p, kb, B + (p * kbs + kb) * TILE);
    const TileConfig cfg;
    load_tile_config(&cfg);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) nowait
#endif
    for (int64_t it = 0; it < items; ++it) {
      const int64_t t0 = it * TB, n = imin(TB, T - t0), np = round_up(n, 32);
      if (prep != nullptr) (*prep)(t0, n, tid);
      for (int64_t i = 0; i < np; ++i) {
        uint8_t* row = A + i * ldk;
        if (i < n) {
          std::memcpy(row, q + (t0 + i) * in, static_cast<size_t>(in));
          std::memset(row + in, 0, static_cast<size_t>(ldk - in));
        } else {
          std::memset(row, 0, static_cast<size_t>(ldk));
        }
      }
      for (int64_t i = 0; i < np; i += 32) {
        for (int64_t r = 0; r < out_p; r += 32)
          block32x32(A + i * ldk, ldk, B + (r / 16) * kbs * TILE, kbs, 0, kbs, C + r, out_p, true);
        avx512::epilogue_rows(e, t0 + i, imin(32, n - i), 0, out, C, out_p, up_panels);
      }
    }
    _tile_release();
  }
}

}  // namespace

namespace amx {

void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep) {
  check_args(bits, T, out, in, threads);
  (void)wsum;  // the sums are uncentred: nothing to undo
  if (T == 0 || out == 0) return;
  const int64_t ldk = imax(KT, round_up(in, KT)), kbs = ldk / KT, Tp = round_up(T, 32);
  const int64_t out_p = round_up(out, 32), pc = (in + 3) / 4;
  // Output groups of G outputs (a multiple of 32): at least 4 per thread where `out` allows, so that a core
  // slowed by another tenant costs only its share; at most kMaxG (the group's int32 sums for all tokens stay
  // in L2 next to its weights).
  const int64_t g_bal = round_up((out_p + 4 * threads - 1) / (4 * threads), 32);
  const int64_t g_mem = imax(32, kBGroupBytes / ldk / 32 * 32);
  const int64_t G = imax(32, imin(imin(imin(kMaxG, g_mem), g_bal), out_p)), groups = (out_p + G - 1) / G;
  // k in chunks of KC k-blocks: the A rows of one chunk for all tokens (Tp x 64 KC bytes) stay in L2 while the
  // group's output pairs pass
  const int64_t KC = imax(1, imin(kbs, kAChunkBytes / (Tp * KT)));
  const bool lowrank = e.y != nullptr && e.u != nullptr && e.rank > 0;
  const int64_t n_up = (out + 15) / 16, up_bytes = lowrank ? round_up(n_up * e.rank * 16 * 4, 64) : 0;
  if (out_p * ldk <= kLocalWeightsBytes) {  // small weights: every thread its own copy, token blocks
    float* const up = lowrank ? reinterpret_cast<float*>(tl_w.get(static_cast<size_t>(up_bytes))) : nullptr;
    if (lowrank) avx512::pack_up(e.up, out, e.rank, 0, n_up, up);
    gemm_token_major(q, T, packed, out, in, e, threads, prep, up);
    return;
  }
  // Where in is a multiple of 64 (every DiT width) and the codes are 64-byte aligned (the quantized linears'
  // scratch is), the codes' own rows serve as A and only the last partial 32-token pair is copied (zero padded);
  // otherwise every row is copied into A with stride ldk. (Tile rows that straddle two cache lines made a whole
  // forward 9 % slower when the codes buffer was not aligned.)
  const bool direct = in == ldk && reinterpret_cast<uintptr_t>(q) % 64 == 0;
  const int64_t T32 = direct ? T / 32 * 32 : 0;  // rows of A read from q
  const int64_t a_bytes = round_up((Tp - T32) * ldk, 64);
  const int64_t b_bytes = G / 16 * kbs * TILE, c_bytes = round_up(Tp * G * 4, 64), per_thread = b_bytes + c_bytes;
  const int64_t tok_items = (T + kTokChunk - 1) / kTokChunk;
  const int nt = static_cast<int>(imax(1, imin(threads, imax(groups, tok_items))));
  uint8_t* const shared = tl_w.get(static_cast<size_t>(a_bytes + up_bytes));
  uint8_t* const A_copy = shared;  // rows T32 .. Tp - 1
  auto arow = [&](int64_t i) { return i < T32 ? q + i * in : A_copy + (i - T32) * ldk; };
  float* const up_panels = lowrank ? reinterpret_cast<float*>(shared + a_bytes) : nullptr;
  uint8_t* const work = tl_work.get(static_cast<size_t>(per_thread * nt));
  if (lowrank) avx512::pack_up(e.up, out, e.rank, 0, n_up, up_panels);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    // 1. the codes of every token (prep: Hadamard + quantize); rows from T32 on copied into A_copy, zero padded
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t it = 0; it < tok_items; ++it) {
      const int64_t t0 = it * kTokChunk, n = imin(kTokChunk, T - t0);
      if (prep != nullptr) (*prep)(t0, n, tid);
      for (int64_t t = imax(t0, T32); t < t0 + n; ++t) {
        std::memcpy(A_copy + (t - T32) * ldk, q + t * in, static_cast<size_t>(in));
        std::memset(A_copy + (t - T32) * ldk + in, 0, static_cast<size_t>(ldk - in));
      }
      if (t0 + n == T && Tp > T) std::memset(A_copy + (T - T32) * ldk, 0, static_cast<size_t>((Tp - T) * ldk));
    }  // implicit barrier: every row of A is written
    // 2. per output group: decode its weights into B (L2), the sums of all tokens, the epilogue
    const TileConfig cfg;
    load_tile_config(&cfg);
    uint8_t* const B = work + tid * per_thread;
    int32_t* const C = reinterpret_cast<int32_t*>(B + b_bytes);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t g0 = g * G, g1 = imin(out_p, g0 + G), np = (g1 - g0) / 16;
      for (int64_t p = 0; p < np; ++p)
        for (int64_t kb = 0; kb < kbs; ++kb)
          decode_tile(packed, out, in, pc, g0 / 16 + p, kb, B + (p * kbs + kb) * TILE);
      // all k chunks but the last: output pairs outside, token pairs inside (an output pair's weights in L1)
      const int64_t k_last = (kbs - 1) / KC * KC;
      for (int64_t k0 = 0; k0 < k_last; k0 += KC) {
        for (int64_t r = 0; r < g1 - g0; r += 32) {
          const uint8_t* b = B + (r / 16) * kbs * TILE;
          for (int64_t i = 0; i < Tp; i += 32) block32x32(arow(i), ldk, b, kbs, k0, KC, C + i * G + r, G, k0 == 0);
        }
      }
      // the last chunk token pair by token pair, each followed by its epilogue while its sums are in L1
      for (int64_t i = 0; i < Tp; i += 32) {
        for (int64_t r = 0; r < g1 - g0; r += 32)
          block32x32(arow(i), ldk, B + (r / 16) * kbs * TILE, kbs, k_last, kbs - k_last, C + i * G + r, G, k_last == 0);
        if (i < T) avx512::epilogue_rows(e, i, imin(32, T - i), g0, imin(g1, out), C + i * G, G, up_panels);
      }
    }
    _tile_release();
  }
}

void release_gemm_scratch() {
  tl_w.release();
  tl_work.release();
}

double ceiling_tdpbusd(double seconds) {
  // 4 accumulators x (2 A, 2 B tiles) from registers: the tile unit's own rate, u8 x s8 multiply-adds
  alignas(64) static const uint8_t src[TILE] = {};
  const TileConfig cfg;
  load_tile_config(&cfg);
  _tile_loadd(4, src, 64);
  _tile_loadd(5, src, 64);
  _tile_loadd(6, src, 64);
  _tile_loadd(7, src, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  auto run = [](int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      _tile_dpbusd(0, 4, 6);
      _tile_dpbusd(1, 4, 7);
      _tile_dpbusd(2, 5, 6);
      _tile_dpbusd(3, 5, 7);
    }
  };
  using clock = std::chrono::steady_clock;
  int64_t n = 1 << 10;
  for (;;) {  // calibrate: grow until a run takes a tenth of the time asked for
    const auto t0 = clock::now();
    run(n);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > seconds / 10 || n > (int64_t(1) << 40)) break;
    n *= 4;
  }
  const auto t0 = clock::now();
  run(n * 10);
  const double dt = std::chrono::duration<double>(clock::now() - t0).count();
  _tile_release();
  return static_cast<double>(n * 10) * 4 * 16 * 16 * 64 / dt;
}

}  // namespace amx
}  // namespace robuq
