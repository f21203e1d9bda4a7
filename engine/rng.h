// Seeded Gaussian noise shared with Python (python/robuq/rng.py documents the construction): a
// counter-based SplitMix64 hash turned into normals by Box-Muller in double, rounded to float.
// The same (seed, key) gives the same array in the engine and in the PyTorch reference sampler.
#pragma once
#include <cstdint>

namespace robuq {

// Fills out[0..n) with the stream (seed, key). Keys: 0 = initial latents, 1 + i = noise of step i.
void gaussian_noise(uint64_t seed, uint64_t key, float* out, int64_t n);

}  // namespace robuq
