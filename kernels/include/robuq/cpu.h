// CPU feature detection and kernel-tier selection (scalar reference, portable generic, AVX2, AVX-512, AMX).
#pragma once
#include <string>

namespace robuq {

enum class Tier { Reference = 0, Generic = 1, Avx2 = 2, Avx512 = 3, Amx = 4 };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  // AVX-512 subsets the avx512 tier uses (F, BW, VL, VBMI: vpermb / vpmultishiftqb, VNNI: vpdpbusd), all
  // with the operating system's zmm state enabled.
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vbmi = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;  // reported (robuq-bench's machine line); no kernel uses it yet
  // AMX tiles with int8 dot products (Intel Sapphire Rapids and later), usable by this process: the CPU has
  // them, the OS saves the tile state (XCR0 bits 17, 18) and granted this process the tile data (Linux
  // arch_prctl ARCH_REQ_XCOMP_PERM, asked once, at the first call of cpu_features()).
  bool amx_int8 = false;
};

// Features of the CPU this process runs on (cached after the first call).
const CpuFeatures& cpu_features();

// The tier the kernels use: the best one the CPU supports and the build contains (amx, else avx512, else
// avx2, else generic), unless the environment variable ROBUQ_KERNEL_TIER (reference | generic | avx2 | avx512 |
// amx) or set_tier() forces one. The avx512 tier runs the avx2 tier's kernels wherever it has no kernel of its
// own, so it needs everything the avx2 tier needs too; the amx tier is the avx512 tier with the ternary GEMM
// on AMX tiles (the same exact integer sums, so the same bits).
// Forcing a tier the CPU or build cannot run throws std::runtime_error.
Tier active_tier();
void set_tier(Tier t);
Tier parse_tier(const std::string& name);  // throws std::invalid_argument on an unknown name
const char* tier_name(Tier t);
bool tier_available(Tier t);
// The avx2, avx512 or amx tier: the avx2 kernels (and their arithmetic) serve all three.
bool tier_uses_avx2_kernels(Tier t);
// The avx512 or amx tier: the avx512 kernels serve both.
bool tier_uses_avx512_kernels(Tier t);

}  // namespace robuq
