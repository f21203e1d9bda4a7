// Kernels of the avx512 tier (kernels/avx512/*.cpp, the only files compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vbmi -mavx512vnni). Call them only when tier_available(Tier::Avx512); the dispatchers do.
// Everything the avx512 tier has no kernel of its own for runs on the avx2 kernels (robuq/avx2.h), so the two
// tiers share all float arithmetic; the integer results of the ternary GEMM are exact in both.
//
// This header declares no intrinsics and no inline code: the avx2 and generic files include it.
#pragma once
#include <cstdint>

namespace robuq {
namespace avx2 {
struct QEpilogue;
struct RowPrep;
}  // namespace avx2

struct HadamardPlan;

namespace avx512 {

// Frees the calling thread's buffers of the avx512 ternary GEMM (robuq::release_thread_scratch).
void release_gemm_scratch();

// rot = x @ H for one row (x and rot must not alias; scratch: plan.scratch_size() floats; sgn: the plan's K x K
// sign table as avx2::RowTransform holds it), bit-identical to ref::hadamard_transform_row. Returns false, doing
// nothing, for plans it does not take (butterfly segments under 16 floats, the identity): the caller then runs
// the avx2 transform.
bool hadamard_row(const HadamardPlan& plan, const float* sgn, const float* x, float* rot, float* scratch);

// One (sample n, head h) of ops::attention, bit-identical to avx2::attention_head (same scratch size:
// avx2::attention_scratch_floats).
void attention_head(const float* qkv, int64_t n, int64_t h, int64_t T, int64_t H, int64_t head_dim, int bits,
                    float* out, float* scratch);

// Per-token quantization of one row: the contract of ref::quantize_row / avx2::quantize_row, bit-identical.
void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero);
// quantize_row of two rows (scale[0], zero[0] for x0; scale[1], zero[1] for x1), the same bits as two calls; their
// float64 statistics run as two interleaved chains.
void quantize_rows2(const float* x0, const float* x1, int64_t n, int bits, float clip_k, uint8_t* codes0,
                    uint8_t* codes1, float* scale, float* zero);

// avx2::layernorm_modulate_rows 16 wide (count 1..4 rows), the same bits: row i is x[i] -> y[i] with shift[i],
// scale[i]; the rows' float64 statistics run as interleaved chains.
void layernorm_modulate_rows(int count, const float* const* x, int64_t D, const float* const* shift,
                             const float* const* scale, float* const* y);

// Activation bit widths the AVX-512 ternary GEMM takes (1..6; 7 and 8 bits run the avx2 kernel).
bool ternary_gemm_supported(int bits);

// Ternary weights in the file layout x activation codes of `bits` bits (1..6): the exact sums
// acc[t, r] = sum_k q[t, k] w[r, k] go through e, as avx2::ternary_gemm (kernels/avx2/qlinear_avx2.h) does;
// with prep, row t of q is made by (*prep)(t, tid) inside the GEMM's parallel region before anything reads it.
// Threads take token blocks from a shared counter (dynamic schedule); the result does not depend on the split.
// Throws std::invalid_argument on bits outside 1..6, a negative shape or threads < 1.
void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep);

// The avx512 epilogue (kernels/avx512/ternary_gemm_avx512.cpp), shared with the amx tier's GEMM: outputs
// r0 .. r1 - 1 (r0 a multiple of 16) of tokens t0 .. t0 + nt - 1 from their exact (uncentred) sums
// C[i * ldc + (r - r0)], with the avx2 tier's QEpilogue arithmetic (the same bits); `panels` holds up as
// pack_up made it for all outputs (null: no low-rank term).
void epilogue_rows(const avx2::QEpilogue& e, int64_t t0, int64_t nt, int64_t r0, int64_t r1, const int32_t* C,
                   int64_t ldc, const float* panels);
// up [out, rank] -> panels[p][j][16] (zero-padded) for the 16-output panels p0 .. p1 - 1.
void pack_up(const float* up, int64_t out, int64_t rank, int64_t p0, int64_t p1, float* panels);

// The kernel's weight layout for a whole matrix (tests): idx [ceil(out / 96)][ceil(in / 6)][3][64] bytes, see
// ternary_gemm_avx512.cpp. Bytes of padding outputs (r >= out) are unspecified.
void ternary_lut_indices(const uint8_t* packed, int64_t out, int64_t in, uint8_t* idx);

// Instruction-throughput loops of robuq-bench's ceilings table (ceilings_avx512.cpp; robuq/ceilings.h lists and
// runs them): their number, names, the index of a name (-1: none) and operations per second of one thread
// running loop i for about `seconds`.
int ceiling_count();
const char* ceiling_name(int i);
int ceiling_find(const char* kind);
double ceiling_one_thread(int i, double seconds);

}  // namespace avx512

// The amx tier's kernels (kernels/amx/*.cpp, compiled with the avx512 flags plus -mamx-tile -mamx-int8). Call
// them only when tier_available(Tier::Amx).
namespace amx {

// The contract of avx512::ternary_gemm for activation codes of 1..8 bits, on AMX tiles (tdpbusd: unsigned codes
// x signed weights, exact int32 sums), through the avx512 epilogue: the same bits as the other tiers.
void ternary_gemm(const uint8_t* q, int64_t T, int bits, const uint8_t* packed, int64_t out, int64_t in,
                  const int32_t* wsum, const avx2::QEpilogue& e, int threads, const avx2::RowPrep* prep);

// Frees the calling thread's buffers of the amx ternary GEMM.
void release_gemm_scratch();

// robuq-bench's "amx_tdpbusd" ceiling: u8 x s8 multiply-adds per second of one thread running tdpbusd on 4
// accumulator tiles (operands in tile registers) for about `seconds`.
double ceiling_tdpbusd(double seconds);

}  // namespace amx
}  // namespace robuq
