// The sampler's per-element arithmetic and the seeded noise, compiled for the CPU (engine/diffusion.cpp,
// engine/rng.cpp) and, as __host__ __device__ code, for the CUDA engine's device loop
// (engine/cuda/sampler.cu): one source for both, operation by operation (-ffp-contract=off on the CPU,
// --fmad=false under nvcc). The formulas are documented in engine/diffusion.h and python/robuq/rng.py.
//
// Where the two compilers may differ in the last bit: the library functions. The step's exp (DDPM's
// learned variance) is std::exp on the CPU and CUDA's expf (<= 2 ulp) on the device; the noise's
// Box-Muller uses double log / sqrt / cos / sin (CUDA's are within 1-2 ulp of double), rounded to float,
// so a noise value differs only when a double lands within an ulp of a float rounding boundary.
#pragma once
#include <stdint.h>

#ifndef __CUDACC__
#include <cmath>
#endif

#include "robuq/host_device.h"

namespace robuq {
namespace step {

// ------------------------------------------------------------------------------------ seeded noise
ROBUQ_HD uint64_t mix(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The first hash of stream (seed, key); element j of the stream is built from mix(base + j).
ROBUQ_HD uint64_t stream_base(uint64_t seed, uint64_t key) {
  return mix(seed * 0x9E3779B97F4A7C15ULL + key * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL);
}

ROBUQ_HD double to_unit(uint64_t x) { return (static_cast<double>(x >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

// Pair p of the stream: elements 2p (cosine) and 2p + 1 (sine) by Box-Muller in double.
ROBUQ_HD void gaussian_pair(uint64_t base, uint64_t p, float* z0, float* z1) {
  const double two_pi = 2.0 * 3.14159265358979323846;
  const double u1 = to_unit(mix(base + 2 * p));
  const double u2 = to_unit(mix(base + 2 * p + 1));
#ifdef __CUDA_ARCH__
  const double r = ::sqrt(-2.0 * ::log(u1));
  const double th = two_pi * u2;
  *z0 = static_cast<float>(r * ::cos(th));
  *z1 = static_cast<float>(r * ::sin(th));
#else
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double th = two_pi * u2;
  *z0 = static_cast<float>(r * std::cos(th));
  *z1 = static_cast<float>(r * std::sin(th));
#endif
}

// ------------------------------------------------------------------------------------ one step
// The scalars of step t (float64 schedule values rounded to float32, as robuq.diffusion._extract does).
struct Scalars {
  float srac, srm1;             // sqrt(1 / alphas_cumprod), sqrt(1 / alphas_cumprod - 1)
  float c1, c2;                 // posterior mean coefficients
  float min_log, max_log;       // clipped posterior log variance, log beta (learned-range variance)
  float fixed_log;              // fixed "large" log variance (learn_sigma false)
  float sigma, sqrt_ap, dir;    // DDIM: eta-scaled sigma, sqrt(alphas_cumprod_prev), direction coefficient
  int ddpm, learn_sigma, clip;  // sampler DDPM (else DDIM), variance channels present, clamp x0 to [-1, 1]
  int last;                     // t == 0: DDPM adds no noise
  int add_noise;                // DDIM: noise added at this step (eta != 0 and t > 0)
};

ROBUQ_HD float exp_f(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}

// x_{t-1} of one element from x_t (xv), the model's eps and (learn_sigma) variance output v, and noise.
ROBUQ_HD float update(const Scalars& s, float xv, float eps, float v, float noise) {
  float x0 = s.srac * xv - s.srm1 * eps;
  if (s.clip) {  // std::min(1, std::max(-1, x0)), NaN included
    const float lo = -1.0f < x0 ? x0 : -1.0f;
    x0 = lo < 1.0f ? lo : 1.0f;
  }
  if (s.ddpm) {
    float log_var = s.fixed_log;
    if (s.learn_sigma) {
      const float frac = (v + 1.0f) / 2.0f;
      log_var = frac * s.max_log + (1.0f - frac) * s.min_log;
    }
    const float mean = s.c1 * x0 + s.c2 * xv;
    return s.last ? mean : mean + exp_f(0.5f * log_var) * noise;
  }
  const float e2 = (s.srac * xv - x0) / s.srm1;
  const float mean = x0 * s.sqrt_ap + s.dir * e2;
  return s.add_noise ? mean + s.sigma * noise : mean;
}

// ------------------------------------------------------------------- the device kernels' thread bodies
// (engine/cuda/sampler.cu launches one thread per index; the host tests run the same bodies in a loop.)

// Threads of gaussian_thread: one per pair of values of a stream.
ROBUQ_HD int64_t gaussian_threads(const uint64_t* seeds, int64_t N, int64_t per) {
  return seeds == nullptr ? (N * per + 1) / 2 : N * ((per + 1) / 2);
}

// Thread i of the noise kernel: out [N, per] <- stream (seed, key) over all N * per values (seeds null), or
// stream (seeds[s], key) over the per values of sample s.
ROBUQ_HD void gaussian_thread(int64_t i, uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per,
                              float* out) {
  const int64_t len = seeds == nullptr ? N * per : per;
  const int64_t pairs = (len + 1) / 2;
  const int64_t s = i / pairs, p = i % pairs;
  float z0, z1;
  gaussian_pair(stream_base(seeds == nullptr ? seed : seeds[s], key), static_cast<uint64_t>(p), &z0, &z1);
  float* dst = out + s * per;  // s == 0 for the single stream
  dst[2 * p] = z0;
  if (2 * p + 1 < len) dst[2 * p + 1] = z1;
}

// Thread i < N * per of the step kernel: x [N, per] in place; mo [N, cout_per] (eps, then the variance
// channels when learned); noise [N, per] or null.
ROBUQ_HD void step_thread(int64_t i, const Scalars& sc, float* x, const float* mo, int64_t per, int64_t cout_per,
                          const float* noise) {
  const int64_t n = i / per, j = i % per;
  const float* eps = mo + n * cout_per;
  const float v = sc.learn_sigma ? eps[per + j] : 0.0f;
  x[i] = update(sc, x[i], eps[j], v, noise != nullptr ? noise[i] : 0.0f);
}

}  // namespace step
}  // namespace robuq
