// CPU feature detection and kernel-tier selection (scalar reference, portable generic, AVX2, AVX-512).
#pragma once
#include <string>

namespace robuq {

enum class Tier { Reference = 0, Generic = 1, Avx2 = 2, Avx512 = 3 };

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
};

// Features of the CPU this process runs on (cached after the first call).
const CpuFeatures& cpu_features();

// The tier the kernels use: the best one the CPU supports and the build contains (avx512, else avx2, else
// generic), unless the environment variable ROBUQ_KERNEL_TIER (reference | generic | avx2 | avx512) or
// set_tier() forces one. The avx512 tier runs the avx2 tier's kernels wherever it has no kernel of its own,
// so it needs everything the avx2 tier needs too.
// Forcing a tier the CPU or build cannot run throws std::runtime_error.
Tier active_tier();
void set_tier(Tier t);
Tier parse_tier(const std::string& name);  // throws std::invalid_argument on an unknown name
const char* tier_name(Tier t);
bool tier_available(Tier t);
// The avx2 or the avx512 tier: the avx2 kernels (and their arithmetic) serve both.
bool tier_uses_avx2_kernels(Tier t);

}  // namespace robuq
