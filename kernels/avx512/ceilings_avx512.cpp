// Instruction-throughput ceilings of the avx512 tier's candidate instructions, for robuq-bench's ceilings table
// (robuq/ceilings.h measures them next to the AVX2 loops when the CPU has the avx512 tier): register-resident
// loops of independent operations in inline assembly, timed per thread. They are what chose the ternary GEMM's
// design (docs/performance.md):
//   vpermb:       64-entry byte-table lookups (vpermb + vpaddb)    -> 64 lookups per instruction
//   vpermi2b:     128-entry byte-table lookups (index load, vpermi2b, vpaddb: vpermi2b overwrites its index)
//   vpdpbusd_zmm: u8 x s8 multiply-adds, 64 per instruction;  vpdpbusd_ymm: 32 per instruction
//   pshufb_zmm:   16-entry lookups per 128-bit lane (vpshufb zmm + vpaddb)
//   tl3_step:     the ternary micro kernel's inner step, in multiply-adds (192 per vpermb)
//   tl4_step:     the rejected 4-weight vpermi2b step with its fold, in multiply-adds (256 per lookup)
//   fma_add_zmm / xor_add_zmm: the Hadamard K x K step's term forms, in float additions (16 per term)
#include "avx512_common.h"  // first

#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "robuq/avx512.h"

namespace robuq {
namespace {

alignas(64) const uint8_t kBytes[512] = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 17, 33, 49, 2,  7,  63, 62, 5,  9,  11, 13, 40, 41, 42, 3, 1,
    3, 1, 4, 1, 5, 9, 2, 6, 5, 3,  5,  8,  9,  7,  9,  3, 27, 18, 28, 18, 28, 45, 23, 53, 60, 2,  8,  7,  4,  7,  1, 3};

// vpermb: 8 x (vpermb 64-entry lookup, vpaddb), 4 index registers -> 64 lookups per vpermb
double loop_vpermb(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "vmovdqu64 (%[b]), %%zmm20\n\t"
      "vmovdqu64 64(%[b]), %%zmm16\n\t"
      "vmovdqu64 128(%[b]), %%zmm17\n\t"
      "vmovdqu64 192(%[b]), %%zmm18\n\t"
      "vmovdqu64 256(%[b]), %%zmm19\n\t"
      "1:\n\t"
      "vpermb %%zmm20, %%zmm16, %%zmm8\n\t"
      "vpaddb %%zmm8, %%zmm0, %%zmm0\n\t"
      "vpermb %%zmm20, %%zmm17, %%zmm9\n\t"
      "vpaddb %%zmm9, %%zmm1, %%zmm1\n\t"
      "vpermb %%zmm20, %%zmm18, %%zmm10\n\t"
      "vpaddb %%zmm10, %%zmm2, %%zmm2\n\t"
      "vpermb %%zmm20, %%zmm19, %%zmm11\n\t"
      "vpaddb %%zmm11, %%zmm3, %%zmm3\n\t"
      "vpermb %%zmm20, %%zmm16, %%zmm12\n\t"
      "vpaddb %%zmm12, %%zmm4, %%zmm4\n\t"
      "vpermb %%zmm20, %%zmm17, %%zmm13\n\t"
      "vpaddb %%zmm13, %%zmm5, %%zmm5\n\t"
      "vpermb %%zmm20, %%zmm18, %%zmm14\n\t"
      "vpaddb %%zmm14, %%zmm6, %%zmm6\n\t"
      "vpermb %%zmm20, %%zmm19, %%zmm15\n\t"
      "vpaddb %%zmm15, %%zmm7, %%zmm7\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// vpermi2b: 8 x (index from L1, vpermi2b 128-entry lookup, vpaddb) -> 64 lookups per vpermi2b
double loop_vpermi2b(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "vmovdqu64 (%[b]), %%zmm20\n\t"
      "vmovdqu64 320(%[b]), %%zmm21\n\t"
      "1:\n\t"
      "vmovdqu64 64(%[b]), %%zmm8\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm8\n\t"
      "vpaddb %%zmm8, %%zmm0, %%zmm0\n\t"
      "vmovdqu64 128(%[b]), %%zmm9\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm9\n\t"
      "vpaddb %%zmm9, %%zmm1, %%zmm1\n\t"
      "vmovdqu64 192(%[b]), %%zmm10\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm10\n\t"
      "vpaddb %%zmm10, %%zmm2, %%zmm2\n\t"
      "vmovdqu64 256(%[b]), %%zmm11\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm11\n\t"
      "vpaddb %%zmm11, %%zmm3, %%zmm3\n\t"
      "vmovdqu64 64(%[b]), %%zmm12\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm12\n\t"
      "vpaddb %%zmm12, %%zmm4, %%zmm4\n\t"
      "vmovdqu64 128(%[b]), %%zmm13\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm13\n\t"
      "vpaddb %%zmm13, %%zmm5, %%zmm5\n\t"
      "vmovdqu64 192(%[b]), %%zmm14\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm14\n\t"
      "vpaddb %%zmm14, %%zmm6, %%zmm6\n\t"
      "vmovdqu64 256(%[b]), %%zmm15\n\t"
      "vpermi2b %%zmm21, %%zmm20, %%zmm15\n\t"
      "vpaddb %%zmm15, %%zmm7, %%zmm7\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// vpdpbusd_zmm: 10 independent vpdpbusd zmm chains -> 64 u8 x s8 multiply-adds per instruction
double loop_dpbusd_zmm(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vmovdqu64 (%[b]), %%zmm20\n\t"
      "vmovdqu64 64(%[b]), %%zmm21\n\t"
      "1:\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm0\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm1\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm2\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm3\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm4\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm5\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm6\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm7\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm8\n\t"
      "vpdpbusd %%zmm20, %%zmm21, %%zmm9\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// vpdpbusd_ymm: 10 independent vpdpbusd ymm chains -> 32 multiply-adds per instruction
double loop_dpbusd_ymm(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vmovdqu64 (%[b]), %%zmm20\n\t"
      "vmovdqu64 64(%[b]), %%zmm21\n\t"
      "1:\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm0\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm1\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm2\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm3\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm4\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm5\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm6\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm7\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm8\n\t"
      "vpdpbusd %%ymm20, %%ymm21, %%ymm9\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// pshufb_zmm: 8 x (vpshufb zmm 16-entry lookup, vpaddb) -> 64 lookups per vpshufb
double loop_pshufb_zmm(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
      "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
      "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
      "vmovdqu64 (%[b]), %%zmm20\n\t"
      "vmovdqu64 64(%[b]), %%zmm16\n\t"
      "vmovdqu64 128(%[b]), %%zmm17\n\t"
      "vmovdqu64 192(%[b]), %%zmm18\n\t"
      "vmovdqu64 256(%[b]), %%zmm19\n\t"
      "1:\n\t"
      "vpshufb %%zmm16, %%zmm20, %%zmm8\n\t"
      "vpaddb %%zmm8, %%zmm0, %%zmm0\n\t"
      "vpshufb %%zmm17, %%zmm20, %%zmm9\n\t"
      "vpaddb %%zmm9, %%zmm1, %%zmm1\n\t"
      "vpshufb %%zmm18, %%zmm20, %%zmm10\n\t"
      "vpaddb %%zmm10, %%zmm2, %%zmm2\n\t"
      "vpshufb %%zmm19, %%zmm20, %%zmm11\n\t"
      "vpaddb %%zmm11, %%zmm3, %%zmm3\n\t"
      "vpshufb %%zmm16, %%zmm20, %%zmm12\n\t"
      "vpaddb %%zmm12, %%zmm4, %%zmm4\n\t"
      "vpshufb %%zmm17, %%zmm20, %%zmm13\n\t"
      "vpaddb %%zmm13, %%zmm5, %%zmm5\n\t"
      "vpshufb %%zmm18, %%zmm20, %%zmm14\n\t"
      "vpaddb %%zmm14, %%zmm6, %%zmm6\n\t"
      "vpshufb %%zmm19, %%zmm20, %%zmm15\n\t"
      "vpaddb %%zmm15, %%zmm7, %%zmm7\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// tl3_step: the ternary micro kernel's step (3 index + 4 table loads from L1, 12 x (vpermb, vpaddb)) -> 192
// multiply-adds per vpermb (3 ternary weights per lookup)
double loop_tl3_step(int64_t n) {
  asm volatile(
      "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
      "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
      "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
      "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
      "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
      "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
      "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
      "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
      "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
      "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
      "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
      "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
      "1:\n\t"
      "vmovdqu64 0(%[b]), %%zmm24\n\t"
      "vmovdqu64 64(%[b]), %%zmm25\n\t"
      "vmovdqu64 128(%[b]), %%zmm26\n\t"
      "vmovdqu64 256(%[b]), %%zmm27\n\t"
      "vpermb %%zmm27, %%zmm24, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm0, %%zmm0\n\t"
      "vpermb %%zmm27, %%zmm25, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm1, %%zmm1\n\t"
      "vpermb %%zmm27, %%zmm26, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm2, %%zmm2\n\t"
      "vmovdqu64 320(%[b]), %%zmm27\n\t"
      "vpermb %%zmm27, %%zmm24, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm3, %%zmm3\n\t"
      "vpermb %%zmm27, %%zmm25, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm4, %%zmm4\n\t"
      "vpermb %%zmm27, %%zmm26, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm5, %%zmm5\n\t"
      "vmovdqu64 384(%[b]), %%zmm27\n\t"
      "vpermb %%zmm27, %%zmm24, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm6, %%zmm6\n\t"
      "vpermb %%zmm27, %%zmm25, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm7, %%zmm7\n\t"
      "vpermb %%zmm27, %%zmm26, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm8, %%zmm8\n\t"
      "vmovdqu64 448(%[b]), %%zmm27\n\t"
      "vpermb %%zmm27, %%zmm24, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm9, %%zmm9\n\t"
      "vpermb %%zmm27, %%zmm25, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm10, %%zmm10\n\t"
      "vpermb %%zmm27, %%zmm26, %%zmm28\n\t"
      "vpaddb %%zmm28, %%zmm11, %%zmm11\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
  return 0.0;
}

// tl4_step: the rejected 4-weight candidate (docs/performance.md): a 128-entry vpermi2b table per token holds the
// 81 patterns of 4 ternary weights, one lookup = 64 outputs x 4 inputs (256 multiply-adds). A step of 4 tokens x
// 2 output vectors (2 index + 8 table loads, 8 x (copy, vpermi2b, vpaddb)); every 15 steps the int8 sums are
// folded into int16 by sign extension (the lanes are 64 different outputs). Counts multiply-adds.
// clang-format off
#define ROBUQ_C4_LK(tl, th, ir, t, a)                                                 \
  "vmovdqa64 %%zmm" #ir ", %%zmm" #t "\n\t"                                           \
  "vpermi2b %%zmm" #th ", %%zmm" #tl ", %%zmm" #t "\n\t"                              \
  "vpaddb %%zmm" #t ", %%zmm" #a ", %%zmm" #a "\n\t"
#define ROBUQ_C4_STEP                                                                 \
  "vmovdqu64 0(%[b]), %%zmm8\n\t"                                                     \
  "vmovdqu64 64(%[b]), %%zmm9\n\t"                                                    \
  "vmovdqu64 128(%[b]), %%zmm10\n\t"                                                  \
  "vmovdqu64 192(%[b]), %%zmm11\n\t"                                                  \
  "vmovdqu64 256(%[b]), %%zmm12\n\t"                                                  \
  "vmovdqu64 320(%[b]), %%zmm13\n\t"                                                  \
  ROBUQ_C4_LK(10, 11, 8, 20, 0) ROBUQ_C4_LK(10, 11, 9, 21, 1)                         \
  ROBUQ_C4_LK(12, 13, 8, 22, 2) ROBUQ_C4_LK(12, 13, 9, 23, 3)                         \
  "vmovdqu64 384(%[b]), %%zmm14\n\t"                                                  \
  "vmovdqu64 448(%[b]), %%zmm15\n\t"                                                  \
  "vmovdqu64 128(%[b]), %%zmm16\n\t"                                                  \
  "vmovdqu64 192(%[b]), %%zmm17\n\t"                                                  \
  ROBUQ_C4_LK(14, 15, 8, 24, 4) ROBUQ_C4_LK(14, 15, 9, 25, 5)                         \
  ROBUQ_C4_LK(16, 17, 8, 26, 6) ROBUQ_C4_LK(16, 17, 9, 27, 7)
#define ROBUQ_C4_FOLD1(a)                                                             \
  "vpmovsxbw %%ymm" #a ", %%zmm28\n\t"                                                \
  "vextracti64x4 $1, %%zmm" #a ", %%ymm29\n\t"                                        \
  "vpmovsxbw %%ymm29, %%zmm29\n\t"                                                    \
  "vpaddw %%zmm28, %%zmm18, %%zmm18\n\t"                                              \
  "vpaddw %%zmm29, %%zmm19, %%zmm19\n\t"                                              \
  "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
double loop_tl4_step(int64_t n) {
  asm volatile(
      "vpxord %%zmm18, %%zmm18, %%zmm18\n\t"
      "vpxord %%zmm19, %%zmm19, %%zmm19\n\t"
      "1:\n\t"
      ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP
      ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP ROBUQ_C4_STEP
      ROBUQ_C4_STEP
      ROBUQ_C4_FOLD1(0) ROBUQ_C4_FOLD1(1) ROBUQ_C4_FOLD1(2) ROBUQ_C4_FOLD1(3) ROBUQ_C4_FOLD1(4)
      ROBUQ_C4_FOLD1(5) ROBUQ_C4_FOLD1(6) ROBUQ_C4_FOLD1(7)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29");
  return 0.0;
}
#undef ROBUQ_C4_LK
#undef ROBUQ_C4_STEP
#undef ROBUQ_C4_FOLD1

// fma_add_zmm: the Hadamard K x K step's two term forms interleaved (vfmadd231ps with 1.0, vaddps), 12 chains
// -> terms per second; xor_add_zmm: the sign-xor-then-add form it replaced (vxorps + vaddps per term).
#define ROBUQ_FA(a) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define ROBUQ_AD(a) "vaddps %%zmm30, %%zmm" #a ", %%zmm" #a "\n\t"
#define ROBUQ_XA(a, t) "vxorps %%zmm29, %%zmm30, %%zmm" #t "\n\t" "vaddps %%zmm" #t ", %%zmm" #a ", %%zmm" #a "\n\t"
double loop_fma_add_zmm(int64_t n) {
  asm volatile(
      "vmovdqu64 0(%[b]), %%zmm30\n\t"
      "vpxord %%zmm31, %%zmm31, %%zmm31\n\t"
      "1:\n\t"
      ROBUQ_FA(0) ROBUQ_AD(1) ROBUQ_FA(2) ROBUQ_AD(3) ROBUQ_FA(4) ROBUQ_AD(5)
      ROBUQ_FA(6) ROBUQ_AD(7) ROBUQ_FA(8) ROBUQ_AD(9) ROBUQ_FA(10) ROBUQ_AD(11)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm30", "xmm31");
  return 0.0;
}
double loop_xor_add_zmm(int64_t n) {
  asm volatile(
      "vmovdqu64 0(%[b]), %%zmm30\n\t"
      "vpxord %%zmm29, %%zmm29, %%zmm29\n\t"
      "1:\n\t"
      ROBUQ_XA(0, 12) ROBUQ_XA(1, 13) ROBUQ_XA(2, 14) ROBUQ_XA(3, 15) ROBUQ_XA(4, 16) ROBUQ_XA(5, 17)
      ROBUQ_XA(6, 18) ROBUQ_XA(7, 19) ROBUQ_XA(8, 20) ROBUQ_XA(9, 21) ROBUQ_XA(10, 22) ROBUQ_XA(11, 23)
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm29", "xmm30");
  return 0.0;
}
#undef ROBUQ_FA
#undef ROBUQ_AD
#undef ROBUQ_XA
// clang-format on

struct Loop {
  const char* name;
  double (*fn)(int64_t);
  double ops_per_iter;
};

const Loop kLoops[] = {
    {"vpermb", loop_vpermb, 8 * 64},
    {"vpermi2b", loop_vpermi2b, 8 * 64},
    {"vpdpbusd_zmm", loop_dpbusd_zmm, 10 * 64},
    {"vpdpbusd_ymm", loop_dpbusd_ymm, 10 * 32},
    {"pshufb_zmm", loop_pshufb_zmm, 8 * 64},
    {"tl3_step", loop_tl3_step, 12 * 192},
    {"tl4_step", loop_tl4_step, 15 * 8 * 256},
    {"fma_add_zmm", loop_fma_add_zmm, 12 * 16},
    {"xor_add_zmm", loop_xor_add_zmm, 12 * 16},
};

}  // namespace

// (No std::string or std::vector here: their out-of-line template instances built with AVX-512 flags could
// stand in for the ones the other files use.)
namespace avx512 {

int ceiling_count() { return static_cast<int>(sizeof(kLoops) / sizeof(kLoops[0])); }

const char* ceiling_name(int i) { return i >= 0 && i < ceiling_count() ? kLoops[i].name : nullptr; }

int ceiling_find(const char* kind) {
  for (int i = 0; i < ceiling_count(); ++i)
    if (std::strcmp(kind, kLoops[i].name) == 0) return i;
  return -1;
}

double ceiling_one_thread(int i, double seconds) {
  if (i < 0 || i >= ceiling_count()) throw std::invalid_argument("avx512 ceiling index out of range");
  const Loop* l = &kLoops[i];
  using clock = std::chrono::steady_clock;
  int64_t n = 1 << 14;
  for (;;) {  // calibrate: grow until a run takes a tenth of the time asked for
    const auto t0 = clock::now();
    l->fn(n);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > seconds / 10 || n > (int64_t(1) << 40)) break;
    n *= 4;
  }
  const auto t0 = clock::now();
  const int64_t iters = n * 10;
  l->fn(iters);
  const double dt = std::chrono::duration<double>(clock::now() - t0).count();
  return static_cast<double>(iters) * l->ops_per_iter / dt;
}

}  // namespace avx512
}  // namespace robuq
