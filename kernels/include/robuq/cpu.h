// CPU feature detection and kernel-tier selection (scalar reference, portable generic, AVX2).
#pragma once
#include <string>

namespace robuq {

enum class Tier { Reference = 0, Generic = 1, Avx2 = 2 };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
};

// Features of the CPU this process runs on (cached after the first call).
const CpuFeatures& cpu_features();

// The tier the kernels use: the best one the CPU supports and the build contains, unless the
// environment variable ROBUQ_KERNEL_TIER (reference | generic | avx2) or set_tier() forces one.
// Forcing a tier the CPU or build cannot run throws std::runtime_error.
Tier active_tier();
void set_tier(Tier t);
Tier parse_tier(const std::string& name);  // throws std::invalid_argument on an unknown name
const char* tier_name(Tier t);
bool tier_available(Tier t);

}  // namespace robuq
