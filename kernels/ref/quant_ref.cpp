// Scalar reference of per-token activation quantization and the fused Hadamard-quantize pass.
// Spec: docs/quantization.md, "Activations". Every float operation below is a single IEEE float32
// (or, for the gauss statistics, float64) operation, in the order the spec gives.
#include "robuq/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace robuq {

void check_act_bits(int bits) {
  if (bits < kMinActBits || bits > kMaxActBits)
    throw std::invalid_argument("activation bits must be in 1..8, got " + std::to_string(bits));
}

void check_clip_k(float clip_k) {
  if (!std::isfinite(clip_k))
    throw std::invalid_argument("clip_k must be finite (<= 0 for minmax, > 0 for gauss), got " +
                                std::to_string(clip_k));
}

namespace ref {

static_assert(kStatLanes == 8, "lane_sum combines 8 lanes");
// (declared in robuq/quant.h) sum_k v_k over 8 interleaved float64 lanes (v_k = x_k, or (x_k - m)^2 when square),
// combined as
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
double lane_sum(const float* x, int64_t n, double m, bool square) {
  double l[kStatLanes] = {};
  for (int64_t k = 0; k < n; ++k) {
    double v = static_cast<double>(x[k]);
    if (square) {
      v = v - m;
      v = v * v;
    }
    l[k % kStatLanes] += v;
  }
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

ClipRange clip_range(const float* x, int64_t n, float clip_k) {
  float mn = x[0], mx = x[0];
  for (int64_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  if (!(clip_k > 0.0f)) return {mn, mx};

  // Gauss: mean and population standard deviation in float64, each sum over kStatLanes interleaved
  // partial sums (element k goes to lane k % 8, k ascending within a lane) combined pairwise, so that
  // the AVX2 tier can compute them with two 4-wide double vectors and agree bit for bit.
  const double m = lane_sum(x, n, 0.0, false) / static_cast<double>(n);
  const double ss = lane_sum(x, n, m, true);
  const double sigma = std::sqrt(ss / static_cast<double>(n));
  const double k = static_cast<double>(clip_k);
  const double ks = k * sigma;
  const double lo = std::max(static_cast<double>(mn), m - ks);
  const double hi = std::min(static_cast<double>(mx), m + ks);
  return {static_cast<float>(lo), static_cast<float>(hi)};
}

void quantize_row(const float* x, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero) {
  const ClipRange r = clip_range(x, n, clip_k);
  const float lo = r.lo;
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float s = std::max(r.hi - lo, kScaleEps) / qmax;
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - lo;
    const float t = d / s;
    float q = std::nearbyint(t);  // default rounding mode: to nearest, ties to even
    if (!(q >= 0.0f)) q = 0.0f;   // also maps NaN to 0
    if (q > qmax) q = qmax;
    codes[i] = static_cast<uint8_t>(q);
  }
  *scale = s;
  *zero = -lo / s;
}

void quantize_tokens(const float* x, int64_t T, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale,
                     float* zero) {
  check_act_bits(bits);
  check_clip_k(clip_k);
  if (n < 1) throw std::invalid_argument("quantization width must be >= 1, got " + std::to_string(n));
  for (int64_t t = 0; t < T; ++t) quantize_row(x + t * n, n, bits, clip_k, codes + t * n, scale + t, zero + t);
}

void hadamard_quantize(const HadamardPlan& plan, const float* x, int64_t T, int bits, float clip_k, uint8_t* codes,
                       float* scale, float* zero, float* rotated) {
  check_act_bits(bits);
  check_clip_k(clip_k);
  const int64_t n = plan.n;
  if (n < 1) throw std::invalid_argument("quantization width must be >= 1, got " + std::to_string(n));
  std::vector<float> buf(static_cast<size_t>(n));
  std::vector<float> scratch(static_cast<size_t>(plan.scratch_size()));
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(buf.data(), x + t * n, sizeof(float) * static_cast<size_t>(n));
    hadamard_transform_row(plan, buf.data(), scratch.data());
    quantize_row(buf.data(), n, bits, clip_k, codes + t * n, scale + t, zero + t);
    if (rotated != nullptr) std::memcpy(rotated + t * n, buf.data(), sizeof(float) * static_cast<size_t>(n));
  }
}

}  // namespace ref
}  // namespace robuq
