#include "rng.h"

#include "sampler_step.h"

namespace robuq {

void gaussian_noise(uint64_t seed, uint64_t key, float* out, int64_t n) {
  const uint64_t base = step::stream_base(seed, key);
  for (int64_t p = 0; 2 * p < n; ++p) {
    float z0, z1;
    step::gaussian_pair(base, static_cast<uint64_t>(p), &z0, &z1);
    out[2 * p] = z0;
    if (2 * p + 1 < n) out[2 * p + 1] = z1;
  }
}

}  // namespace robuq
