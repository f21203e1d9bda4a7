// Scalar reference of the quantized linear (robuq/qlinear.h) and of the dense float32 linear: the
// header formula written out, single-threaded, codes read straight from the packed file layout.
#include <cstring>
#include <vector>

#include "../qlinear_tiers.h"
#include "robuq/quant.h"

namespace robuq {
namespace ref {

void qlinear_forward(const QLinearDesc& d, const float* x, int64_t T, float* y) {
  const int64_t n = d.in, out = d.out;
  const size_t tn = static_cast<size_t>(T * n);
  std::vector<float> rot(tn);  // x @ H
  std::vector<uint8_t> codes;
  std::vector<float> scale, zero;
  if (d.act_bits > 0) {
    codes.resize(tn);
    scale.resize(static_cast<size_t>(T));
    zero.resize(static_cast<size_t>(T));
    hadamard_quantize(d.plan, x, T, d.act_bits, d.clip_k, codes.data(), scale.data(), zero.data(), rot.data());
  } else {
    std::memcpy(rot.data(), x, sizeof(float) * tn);
    hadamard_transform(d.plan, rot.data(), T);
  }

  const int64_t pc = packed_cols(d.format, n);
  std::vector<int8_t> w(static_cast<size_t>(n));
  for (int64_t r = 0; r < out; ++r) {
    detail::decode_row(d.format, d.packed + r * pc, n, w.data());
    for (int64_t t = 0; t < T; ++t) {
      if (d.act_bits > 0) {
        const uint8_t* q = codes.data() + t * n;
        int64_t acc = 0;
        for (int64_t k = 0; k < n; ++k) acc += static_cast<int64_t>(q[k]) * w[static_cast<size_t>(k)];
        y[t * out + r] = detail::qlinear_epilogue(acc, scale[static_cast<size_t>(t)], zero[static_cast<size_t>(t)],
                                                  d.scale[r], d.wsum[r]);
      } else {
        const float* xr = rot.data() + t * n;
        float acc = 0.0f;
        for (int64_t k = 0; k < n; ++k) acc += xr[k] * static_cast<float>(w[static_cast<size_t>(k)]);
        y[t * out + r] = d.scale[r] * acc;
      }
    }
  }

  if (d.rank > 0) {
    // The low-rank branch reads the rotated, unquantized activations: ((xr @ down^T) @ up^T).
    const int64_t R = d.rank;
    std::vector<float> u(static_cast<size_t>(T * R));
    linear_f32(rot.data(), T, n, d.down, nullptr, R, u.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < out; ++r) {
        float acc = 0.0f;
        for (int64_t j = 0; j < R; ++j) acc += u[static_cast<size_t>(t * R + j)] * d.up[r * R + j];
        y[t * out + r] += acc;
      }
  }
  if (d.bias != nullptr)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < out; ++r) y[t * out + r] += d.bias[r];
}

void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x + t * in;
    for (int64_t r = 0; r < out; ++r) {
      const float* wr = W + r * in;
      float acc = 0.0f;
      for (int64_t k = 0; k < in; ++k) acc += xt[k] * wr[k];
      y[t * out + r] = b != nullptr ? acc + b[r] : acc;
    }
  }
}

}  // namespace ref
}  // namespace robuq
