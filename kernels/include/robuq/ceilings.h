// Instruction-throughput ceilings of the CPU (kernels/avx2/ceilings_avx2.cpp), measured by robuq-bench next to
// the kernels. Requires an AVX2 CPU (tier_available(Tier::Avx2)).
#pragma once
#include <string>
#include <vector>

namespace robuq {

// "fma_f32" (fp32 multiply-adds by vfmadd231ps), "maddubs" (u8 x s8 multiply-adds by vpmaddubsw + vpaddw),
// "pshufb" (16-entry table lookups by vpshufb + vpaddb, index from L1).
std::vector<std::string> ceiling_kinds();

// Operations per second summed over `threads` threads each running the loop for about `seconds` (each
// thread's rate is its own operations over its own time). Throws std::invalid_argument on an unknown kind.
double measure_ceiling(const std::string& kind, int threads, double seconds);

}  // namespace robuq
