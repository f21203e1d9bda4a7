// Device side of the sampler loop (engine/cuda/sampler.cu); the arithmetic is engine/sampler_step.h.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "sampler_step.h"

namespace robuq {
namespace cuda {

// out [N, per] <- the seeded noise stream `key`: one stream (seed, key) over all N * per values when seeds is
// null (a device array otherwise: sample s gets stream (seeds[s], key) over its per values), as
// robuq::gaussian_noise / sample_loop draw it on the CPU.
void gaussian(uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per, float* out,
              cudaStream_t stream);

// One reverse step on x [N, per] in place: mo [N, cout_per] the guided model output (eps, then the variance
// channels when sc.learn_sigma), noise [N, per] or null when the step adds none.
void sampler_step(const step::Scalars& sc, float* x, const float* mo, int64_t N, int64_t per, int64_t cout_per,
                  const float* noise, cudaStream_t stream);

}  // namespace cuda
}  // namespace robuq
