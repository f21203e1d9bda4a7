// The sampler's device kernels (CudaEngine::sample keeps x on the GPU for the whole reverse process): the
// seeded noise and the per-element update of engine/sampler_step.h, the very source the CPU sampler runs.
#include "sampler.cuh"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels.cuh"
#include "sampler_step.h"

namespace robuq {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  if (b > 0x7fffffffLL) throw std::invalid_argument("sampler kernel: " + std::to_string(n) + " elements is too many");
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

__global__ void gaussian_kernel(uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per,
                                float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < step::gaussian_threads(seeds, N, per)) step::gaussian_thread(i, seed, seeds, key, N, per, out);
}

__global__ void step_kernel(step::Scalars sc, float* x, const float* mo, int64_t N, int64_t per, int64_t cout_per,
                            const float* noise) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < N * per) step::step_thread(i, sc, x, mo, per, cout_per, noise);
}

}  // namespace

void gaussian(uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per, float* out,
              cudaStream_t stream) {
  const int64_t pairs = step::gaussian_threads(seeds, N, per);
  if (pairs == 0) return;
  gaussian_kernel<<<grid_for(pairs), kThreads, 0, stream>>>(seed, seeds, key, N, per, out);
  check(cudaGetLastError(), "gaussian launch");
}

void sampler_step(const step::Scalars& sc, float* x, const float* mo, int64_t N, int64_t per, int64_t cout_per,
                  const float* noise, cudaStream_t stream) {
  if (N * per == 0) return;
  step_kernel<<<grid_for(N * per), kThreads, 0, stream>>>(sc, x, mo, N, per, cout_per, noise);
  check(cudaGetLastError(), "sampler step launch");
}

}  // namespace cuda
}  // namespace robuq
