#include "robuq/cpu.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace robuq {

namespace {
#if defined(__x86_64__)
// XCR0: the state components the OS saves on a context switch (bit 17 tile config, bit 18 tile data).
uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// AMX-TILE and AMX-INT8 (cpuid leaf 7 edx bits 24, 25), enabled by the OS, and this process allowed to use the
// tile data: Linux hands the (8 KiB) tile state to a process only after it asks (arch_prctl, since 5.16).
bool detect_amx_int8() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  if ((edx & (1u << 24)) == 0 || (edx & (1u << 25)) == 0) return false;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || (ecx & bit_OSXSAVE) == 0) return false;
  if ((xcr0() & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif
}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures r;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    r.avx2 = __builtin_cpu_supports("avx2");
    r.fma = __builtin_cpu_supports("fma");
    // f16c through cpuid: clang before 16 does not know the "f16c" name in __builtin_cpu_supports.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    r.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    // __builtin_cpu_supports reports an AVX-512 feature only when the OS saves the zmm state (XCR0).
    r.avx512f = __builtin_cpu_supports("avx512f");
    r.avx512bw = __builtin_cpu_supports("avx512bw");
    r.avx512vl = __builtin_cpu_supports("avx512vl");
    r.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
    r.avx512vnni = __builtin_cpu_supports("avx512vnni");
    // AVX512_BF16: cpuid leaf 7, subleaf 1, eax bit 5 (older compilers lack the builtin name).
    r.avx512bf16 = r.avx512f && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && (eax & (1u << 5)) != 0;
#endif
#if defined(__x86_64__)
    r.amx_int8 = r.avx512f && detect_amx_int8();
#endif
    return r;
  }();
  return f;
}

bool tier_available(Tier t) {
  switch (t) {
    case Tier::Reference:
    case Tier::Generic: return true;
    case Tier::Avx2:
#ifdef ROBUQ_HAVE_AVX2
      return cpu_features().avx2 && cpu_features().fma && cpu_features().f16c;
#else
      return false;
#endif
    case Tier::Avx512:
#if defined(ROBUQ_HAVE_AVX2) && defined(ROBUQ_HAVE_AVX512)
      return tier_available(Tier::Avx2) && cpu_features().avx512f && cpu_features().avx512bw &&
             cpu_features().avx512vl && cpu_features().avx512vbmi && cpu_features().avx512vnni;
#else
      return false;
#endif
    case Tier::Amx:
#if defined(ROBUQ_HAVE_AMX)
      return tier_available(Tier::Avx512) && cpu_features().amx_int8;
#else
      return false;
#endif
  }
  return false;
}

bool tier_uses_avx2_kernels(Tier t) { return t == Tier::Avx2 || t == Tier::Avx512 || t == Tier::Amx; }
bool tier_uses_avx512_kernels(Tier t) { return t == Tier::Avx512 || t == Tier::Amx; }

Tier parse_tier(const std::string& name) {
  if (name == "reference" || name == "ref") return Tier::Reference;
  if (name == "generic") return Tier::Generic;
  if (name == "avx2") return Tier::Avx2;
  if (name == "avx512") return Tier::Avx512;
  if (name == "amx") return Tier::Amx;
  throw std::invalid_argument("unknown kernel tier '" + name + "' (expected reference, generic, avx2, avx512 or amx)");
}

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::Reference: return "reference";
    case Tier::Generic: return "generic";
    case Tier::Avx2: return "avx2";
    case Tier::Avx512: return "avx512";
    case Tier::Amx: return "amx";
  }
  return "?";
}

namespace {
std::atomic<int> g_forced{-1};

Tier best_tier() {
  if (tier_available(Tier::Amx)) return Tier::Amx;
  if (tier_available(Tier::Avx512)) return Tier::Avx512;
  if (tier_available(Tier::Avx2)) return Tier::Avx2;
  return Tier::Generic;
}

Tier initial_tier() {
  const char* env = std::getenv("ROBUQ_KERNEL_TIER");
  if (env == nullptr || *env == '\0') return best_tier();
  Tier t = parse_tier(env);
  if (!tier_available(t))
    throw std::runtime_error(std::string("ROBUQ_KERNEL_TIER=") + env + " is not available on this CPU/build");
  return t;
}
}  // namespace

Tier active_tier() {
  int f = g_forced.load();
  if (f >= 0) return static_cast<Tier>(f);
  static const Tier t = initial_tier();
  return t;
}

void set_tier(Tier t) {
  if (!tier_available(t))
    throw std::runtime_error(std::string("kernel tier ") + tier_name(t) + " is not available on this CPU/build");
  g_forced.store(static_cast<int>(t));
}

}  // namespace robuq
