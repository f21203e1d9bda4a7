#include "rng.h"

#include <cmath>

namespace robuq {
namespace {

inline uint64_t mix(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline double to_unit(uint64_t x) { return (static_cast<double>(x >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

}  // namespace

void gaussian_noise(uint64_t seed, uint64_t key, float* out, int64_t n) {
  const uint64_t base = mix(seed * 0x9E3779B97F4A7C15ULL + key * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL);
  const double two_pi = 2.0 * M_PI;
  for (int64_t p = 0; 2 * p < n; ++p) {
    const double u1 = to_unit(mix(base + static_cast<uint64_t>(2 * p)));
    const double u2 = to_unit(mix(base + static_cast<uint64_t>(2 * p + 1)));
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double th = two_pi * u2;
    out[2 * p] = static_cast<float>(r * std::cos(th));
    if (2 * p + 1 < n) out[2 * p + 1] = static_cast<float>(r * std::sin(th));
  }
}

}  // namespace robuq
