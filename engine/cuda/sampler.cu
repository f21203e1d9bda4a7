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

// One thread per pair of elements of a stream. seeds == nullptr: one stream (seed, key) over all n = N * per
// elements; otherwise sample s has its own stream (seeds[s], key) over its per elements.
__global__ void gaussian_kernel(uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per,
                                float* out) {
  const int64_t pairs_per_stream = seeds == nullptr ? (N * per + 1) / 2 : (per + 1) / 2;
  const int64_t streams = seeds == nullptr ? 1 : N;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= streams * pairs_per_stream) return;
  const int64_t s = i / pairs_per_stream, p = i % pairs_per_stream;
  const int64_t len = seeds == nullptr ? N * per : per;
  float* dst = out + s * per;  // s == 0 for the single stream
  float z0, z1;
  step::gaussian_pair(step::stream_base(seeds == nullptr ? seed : seeds[s], key), static_cast<uint64_t>(p), &z0, &z1);
  dst[2 * p] = z0;
  if (2 * p + 1 < len) dst[2 * p + 1] = z1;
}

// x [N, per] <- update(x, eps, var, noise); mo [N, cout_per]: eps in the first per values of a sample, the
// variance channels (learn_sigma) in the next per.
__global__ void step_kernel(step::Scalars sc, float* x, const float* mo, int64_t N, int64_t per, int64_t cout_per,
                            const float* noise) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * per) return;
  const int64_t n = i / per, j = i % per;
  const float* eps = mo + n * cout_per;
  const float v = sc.learn_sigma ? eps[per + j] : 0.0f;
  x[i] = step::update(sc, x[i], eps[j], v, noise != nullptr ? noise[i] : 0.0f);
}

}  // namespace

void gaussian(uint64_t seed, const uint64_t* seeds, uint64_t key, int64_t N, int64_t per, float* out,
              cudaStream_t stream) {
  const int64_t pairs = seeds == nullptr ? (N * per + 1) / 2 : N * ((per + 1) / 2);
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
