// Instruction-throughput ceilings of the machine, for the benchmark (robuq-bench): register-resident loops of
// independent operations written in inline assembly (nothing for the compiler to fold or reorder), timed per
// thread. They say what the kernels could reach at best on this CPU, measured in the same run as the kernels.
//   fma_f32:  10 independent vfmadd231ps chains           -> 8 multiply-adds per instruction
//   maddubs:  5 x (vpmaddubsw u8 x s8 -> s16, vpaddw)    -> 32 multiply-adds per vpmaddubsw
//   pshufb:   6 x (vpshufb with the index from L1, vpaddb) -> 32 table lookups per vpshufb
#include "robuq/ceilings.h"

#include "robuq/avx512.h"
#include "robuq/cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace robuq {
namespace {

alignas(32) const float kOnes[8] = {1, 1, 1, 1, 1, 1, 1, 1};
alignas(32) const uint8_t kBytes[64] = {1, 2, 3, 4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6,
                                        7, 8, 9, 10, 11, 12, 13, 14, 15, 0,  3,  1,  4,  1,  5,  9, 2, 6, 5, 3, 5, 8,
                                        9, 7, 9, 3,  3,  1,  4,  1,  5,  9,  2,  6,  5,  3,  5,  8, 9, 7, 9, 3};

// Each returns the operations (multiply-adds or lookups) done by n iterations.
double loop_fma(int64_t n) {
  asm volatile(
      "vbroadcastss (%[one]), %%ymm10\n\t"
      "vbroadcastss (%[one]), %%ymm11\n\t"
      "vxorps %%xmm0, %%xmm0, %%xmm0\n\t"
      "vxorps %%xmm1, %%xmm1, %%xmm1\n\t"
      "vxorps %%xmm2, %%xmm2, %%xmm2\n\t"
      "vxorps %%xmm3, %%xmm3, %%xmm3\n\t"
      "vxorps %%xmm4, %%xmm4, %%xmm4\n\t"
      "vxorps %%xmm5, %%xmm5, %%xmm5\n\t"
      "vxorps %%xmm6, %%xmm6, %%xmm6\n\t"
      "vxorps %%xmm7, %%xmm7, %%xmm7\n\t"
      "vxorps %%xmm8, %%xmm8, %%xmm8\n\t"
      "vxorps %%xmm9, %%xmm9, %%xmm9\n"
      "1:\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm0\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm1\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm2\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm3\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm4\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm5\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm6\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm7\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm8\n\t"
      "vfmadd231ps %%ymm10, %%ymm11, %%ymm9\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [one] "r"(kOnes)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "cc");
  return 0.0;
}

double loop_maddubs(int64_t n) {
  asm volatile(
      "vmovdqa (%[b]), %%ymm10\n\t"
      "vmovdqa 32(%[b]), %%ymm11\n\t"
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n"
      "1:\n\t"
      "vpmaddubsw %%ymm11, %%ymm10, %%ymm5\n\t"
      "vpmaddubsw %%ymm11, %%ymm10, %%ymm6\n\t"
      "vpmaddubsw %%ymm11, %%ymm10, %%ymm7\n\t"
      "vpmaddubsw %%ymm11, %%ymm10, %%ymm8\n\t"
      "vpmaddubsw %%ymm11, %%ymm10, %%ymm9\n\t"
      "vpaddw %%ymm5, %%ymm0, %%ymm0\n\t"
      "vpaddw %%ymm6, %%ymm1, %%ymm1\n\t"
      "vpaddw %%ymm7, %%ymm2, %%ymm2\n\t"
      "vpaddw %%ymm8, %%ymm3, %%ymm3\n\t"
      "vpaddw %%ymm9, %%ymm4, %%ymm4\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "cc");
  return 0.0;
}

double loop_pshufb(int64_t n) {
  asm volatile(
      "vmovdqa (%[b]), %%ymm12\n\t"
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpxor %%xmm5, %%xmm5, %%xmm5\n"
      "1:\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm6\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm7\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm8\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm9\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm10\n\t"
      "vpshufb 32(%[b]), %%ymm12, %%ymm11\n\t"
      "vpaddb %%ymm6, %%ymm0, %%ymm0\n\t"
      "vpaddb %%ymm7, %%ymm1, %%ymm1\n\t"
      "vpaddb %%ymm8, %%ymm2, %%ymm2\n\t"
      "vpaddb %%ymm9, %%ymm3, %%ymm3\n\t"
      "vpaddb %%ymm10, %%ymm4, %%ymm4\n\t"
      "vpaddb %%ymm11, %%ymm5, %%ymm5\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      : [b] "r"(kBytes)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "cc",
        "memory");
  return 0.0;
}

struct Loop {
  double (*fn)(int64_t);
  double ops_per_iter;
};

Loop loop_for(const std::string& kind) {
  if (kind == "fma_f32") return {loop_fma, 10 * 8};
  if (kind == "maddubs") return {loop_maddubs, 5 * 32};
  if (kind == "pshufb") return {loop_pshufb, 6 * 32};
  throw std::invalid_argument("unknown ceiling '" + kind + "' (expected fma_f32, maddubs or pshufb" +
                              (tier_available(Tier::Avx512) ? std::string(", or an avx512 one)")
                                                            : std::string("; the avx512 ones need an AVX-512 CPU)")));
}

// Operations per second of one thread running the loop for about `seconds`.
double run_one(const Loop& l, double seconds) {
  using clock = std::chrono::steady_clock;
  int64_t n = 1 << 16;
  for (;;) {  // calibrate: grow until a run takes a tenth of the time asked for
    const auto t0 = clock::now();
    l.fn(n);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > seconds / 10 || n > (int64_t(1) << 40)) break;
    n *= 4;
  }
  const auto t0 = clock::now();
  const int64_t iters = n * 10;
  l.fn(iters);
  const double dt = std::chrono::duration<double>(clock::now() - t0).count();
  return static_cast<double>(iters) * l.ops_per_iter / dt;
}

// Operations per second summed over `threads` threads, each running one_thread() (its own operations over its
// own time).
template <class F>
double sum_over_threads(int threads, double seconds, F one_thread) {
  if (threads < 1) throw std::invalid_argument("measure_ceiling: threads must be >= 1");
  if (!(seconds > 0)) throw std::invalid_argument("measure_ceiling: seconds must be > 0");
  std::vector<double> rates(static_cast<size_t>(threads), 0.0);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    rates[static_cast<size_t>(tid)] = one_thread();
  }
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

}  // namespace

std::vector<std::string> ceiling_kinds() {
  std::vector<std::string> v = {"fma_f32", "maddubs", "pshufb"};
#ifdef ROBUQ_HAVE_AVX512
  if (tier_available(Tier::Avx512))
    for (int i = 0; i < avx512::ceiling_count(); ++i) v.emplace_back(avx512::ceiling_name(i));
#endif
#ifdef ROBUQ_HAVE_AMX
  if (tier_available(Tier::Amx)) v.emplace_back("amx_tdpbusd");
#endif
  return v;
}

double measure_ceiling(const std::string& kind, int threads, double seconds) {
#ifdef ROBUQ_HAVE_AMX
  if (kind == "amx_tdpbusd" && tier_available(Tier::Amx))
    return sum_over_threads(threads, seconds, [seconds] { return amx::ceiling_tdpbusd(seconds); });
#endif
#ifdef ROBUQ_HAVE_AVX512
  // Only call into kernels/avx512 (compiled with AVX-512 flags) once the CPU is known to run them.
  if (const int i = tier_available(Tier::Avx512) ? avx512::ceiling_find(kind.c_str()) : -1; i >= 0)
    return sum_over_threads(threads, seconds, [i, seconds] { return avx512::ceiling_one_thread(i, seconds); });
#endif
  const Loop l = loop_for(kind);
  return sum_over_threads(threads, seconds, [&l, seconds] { return run_one(l, seconds); });
}

}  // namespace robuq
