// DiT model-level operations (see ops.h).
#include "ops.h"

#include <cmath>
#include <cstring>

namespace robuq {
namespace ops {

void timestep_embedding(const int64_t* t, int64_t N, float* out) {
  const int64_t half = kFreqDim / 2;
  // torch: (-math.log(10000) * arange(half, float32)) / half, exp, all float32 (the scalar is rounded to
  // float32 first).
  const float neg_log = static_cast<float>(-std::log(10000.0));
  float freqs[kFreqDim / 2];
  for (int64_t i = 0; i < half; ++i) freqs[i] = std::exp((neg_log * static_cast<float>(i)) / static_cast<float>(half));
  for (int64_t n = 0; n < N; ++n) {
    const float tn = static_cast<float>(t[n]);
    float* o = out + n * kFreqDim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = tn * freqs[i];
      o[i] = std::cos(a);
      o[half + i] = std::sin(a);
    }
  }
}

void silu(const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out) {
  const int64_t g = S / p, F = C * p * p;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < g; ++i)
      for (int64_t j = 0; j < g; ++j) {
        float* o = out + ((n * g + i) * g + j) * F;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t pr = 0; pr < p; ++pr) {
            const float* src = x + ((n * C + c) * S + i * p + pr) * S + j * p;
            std::memcpy(o + (c * p + pr) * p, src, sizeof(float) * static_cast<size_t>(p));
          }
      }
}

void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out) {
  const int64_t S = grid * p, F = p * p * C;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < grid; ++i)
      for (int64_t j = 0; j < grid; ++j) {
        const float* f = feats + ((n * grid + i) * grid + j) * F;
        for (int64_t pr = 0; pr < p; ++pr)
          for (int64_t pc = 0; pc < p; ++pc)
            for (int64_t c = 0; c < C; ++c)
              out[((n * C + c) * S + i * p + pr) * S + j * p + pc] = f[(pr * p + pc) * C + c];
      }
}

}  // namespace ops
}  // namespace robuq
