// robuq._C.cuda_host (docs/cuda.md): the CUDA kernels' per-thread arithmetic (kernels/cuda/host_device_math.h)
// compiled for the host and arranged as the device kernels arrange it, in every build (with or without
// nvcc), so that the CPU test suite checks it against the reference kernels (tests/test_cuda_host.py).
// Test-only: not part of the engine; a build with -DROBUQ_TEST_HOOKS=OFF leaves this file out.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../kernels/cuda/host_device_math.h"
#include "array_util.h"
#include "diffusion.h"
#include "robuq/hadamard.h"
#include "robuq/qlinear.h"
#include "robuq/quant.h"

namespace py = pybind11;
namespace host_device = robuq::host_device;

namespace {

using robuq_bind::CArray;
using robuq_bind::input_array;
using robuq_bind::new_array;
using robuq_bind::ss;

// ------------------------------------------------------------------------------ host emulation
// One row quantized as hadamard_quantize_kernel does it: min / max, the 8 float64 lanes each summed on
// its own (one thread per lane on the device), combined, then the codes.
void quantize_row(const float* row, int64_t n, int bits, float clip_k, uint8_t* codes, float* scale, float* zero) {
  float mn = row[0], mx = row[0];
  for (int64_t i = 0; i < n; ++i) {
    mn = host_device::fmin_hd(mn, row[i]);
    mx = host_device::fmax_hd(mx, row[i]);
  }
  host_device::Clip clip = host_device::clip_minmax(mn, mx);
  if (clip_k > 0.0f) {
    double lanes[robuq::kStatLanes];
    for (int l = 0; l < robuq::kStatLanes; ++l) lanes[l] = host_device::lane_partial(row, n, l, 0.0, false);
    const double mean = host_device::combine_lanes(lanes) / static_cast<double>(n);
    for (int l = 0; l < robuq::kStatLanes; ++l) lanes[l] = host_device::lane_partial(row, n, l, mean, true);
    clip = host_device::clip_gauss(mn, mx, mean, host_device::combine_lanes(lanes), n, clip_k);
  }
  const host_device::QuantParams p = host_device::quant_params(clip, bits);
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(host_device::quant_code(row[i], p));
  *scale = p.scale;
  *zero = p.zero;
}

// The rotation of hadamard_quantize_kernel on one row: butterflies stage by stage per segment, the K-mix
// into scratch, the norm.
void rotate_row(const robuq::HadamardPlan& plan, float* row, std::vector<float>& mix) {
  if (plan.form == robuq::HadamardForm::None) return;
  const int64_t n = plan.n, M = plan.M, K = plan.K;
  for (int64_t off = 0; off < n; off += M) host_device::walsh_hadamard(row + off, M);
  if (K > 1) {
    mix.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      mix[static_cast<size_t>(i)] = host_device::kmix_value(row, plan.base.data(), K, M, i / M, i % M);
    for (int64_t i = 0; i < n; ++i) row[i] = mix[static_cast<size_t>(i)] * plan.norm;
  } else {
    for (int64_t i = 0; i < n; ++i) row[i] = row[i] * plan.norm;
  }
}

void check_bits(int bits) {
  if (bits < 1 || bits > 8) throw std::invalid_argument("bits must be in 1..8, got " + std::to_string(bits));
}

py::tuple py_quantize_rows(const py::object& x_obj, int bits, float clip_k) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  check_bits(bits);
  const int64_t T = x.shape(0), n = x.shape(1);
  if (n < 1) throw std::invalid_argument("rows must have at least one element");
  auto codes = new_array<uint8_t>({ss(T), ss(n)});
  auto scale = new_array<float>({ss(T)});
  auto zero = new_array<float>({ss(T)});
  for (int64_t t = 0; t < T; ++t)
    quantize_row(x.data() + t * n, n, bits, clip_k, codes.mutable_data() + t * n, scale.mutable_data() + t,
                 zero.mutable_data() + t);
  return py::make_tuple(codes, scale, zero);
}

py::tuple py_hadamard_quantize(const py::object& x_obj, int bits, float clip_k, const std::string& form,
                               int64_t block) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  if (bits != 0) check_bits(bits);
  const int64_t T = x.shape(0), n = x.shape(1);
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(n, robuq::parse_hadamard_form(form), block);
  auto rotated = new_array<float>({ss(T), ss(n)});
  auto codes = new_array<uint8_t>({ss(T), ss(n)});
  auto scale = new_array<float>({ss(T)});
  auto zero = new_array<float>({ss(T)});
  std::vector<float> mix;
  for (int64_t t = 0; t < T; ++t) {
    float* row = rotated.mutable_data() + t * n;
    std::memcpy(row, x.data() + t * n, sizeof(float) * static_cast<size_t>(n));
    rotate_row(plan, row, mix);
    if (bits > 0)
      quantize_row(row, n, bits, clip_k, codes.mutable_data() + t * n, scale.mutable_data() + t,
                   zero.mutable_data() + t);
  }
  return py::make_tuple(codes, scale, zero, rotated);
}

// codes of a packed [rows, packed_cols] matrix through the B-fragment loader (host_device::load_b_reg), 4 at a time.
py::array_t<int8_t> py_unpack(const py::object& packed_obj, int64_t cols, const std::string& weight) {
  CArray<uint8_t> packed = input_array<uint8_t>(packed_obj, "packed", "uint8", 2, "[rows, packed_cols]");
  const robuq::WeightFormat f = robuq::parse_weight_format(weight);
  const int64_t rows = packed.shape(0), pc = packed.shape(1);
  if (cols < 0 || pc != robuq::packed_cols(f, cols))
    throw std::invalid_argument(weight + " with " + std::to_string(cols) + " columns needs " +
                                std::to_string(robuq::packed_cols(f, cols)) + " bytes per row, got " +
                                std::to_string(pc));
  auto out = new_array<int8_t>({ss(rows), ss(cols)});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k0 = 0; k0 < cols; k0 += 4) {
      const uint32_t w = host_device::load_b_reg(f, packed.data() + r * pc, cols, k0, 0, 0);
      for (int64_t q = 0; q < 4 && k0 + q < cols; ++q)
        out.mutable_data()[r * cols + k0 + q] = static_cast<int8_t>(host_device::s8_lane(w, static_cast<int>(q)));
    }
  return out;
}

// mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 on registers of 32 lanes, from the PTX ISA's fragment
// table written out independently of host_device::frag_*: element A[row][k] is byte k % 4 of register
// (row >= 8) + 2 (k >= 16) of lane 4 (row % 8) + (k % 16) / 4; B[k][col] is byte k % 4 of register (k >= 16)
// of lane 4 col + (k % 16) / 4; C[row][col] is register 2 (row >= 8) + col % 2 of lane 4 (row % 8) + col / 2.
void mma_emulate(const uint32_t A[32][4], const uint32_t B[32][2], int32_t C[32][4]) {
  auto a = [&](int row, int k) {
    const uint32_t reg = A[4 * (row % 8) + (k % 16) / 4][(row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0)];
    return static_cast<int>((reg >> (8 * (k % 4))) & 0xffu);  // unsigned
  };
  auto b = [&](int k, int col) { return host_device::s8_lane(B[4 * col + (k % 16) / 4][k >= 16 ? 1 : 0], k % 4); };
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 8; ++col) {
      int32_t acc = 0;
      for (int k = 0; k < 32; ++k) acc += a(row, k) * b(k, col);
      C[4 * (row % 8) + col / 2][(row >= 8 ? 2 : 0) + col % 2] += acc;
    }
}

// The warp-level GEMM of qgemm_kernel, one 16 x 8 tile at a time: registers filled by the kernel's loaders
// (host_device::frag_a_*, host_device::load_b_reg), multiplied by mma_emulate, stored through host_device::frag_c_*.
std::vector<int32_t> gemm_emulate(const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
                                  int64_t out, robuq::WeightFormat format) {
  const int64_t ld = (in + 31) / 32 * 32;
  std::vector<uint8_t> padded(static_cast<size_t>(T * ld), 0);  // the kernel's code rows: zeros past in
  for (int64_t t = 0; t < T; ++t) std::memcpy(padded.data() + t * ld, codes + t * in, static_cast<size_t>(in));
  std::vector<int32_t> y(static_cast<size_t>(T * out), 0);
  for (int64_t row0 = 0; row0 < T; row0 += 16)
    for (int64_t col0 = 0; col0 < out; col0 += 8) {
      int32_t C[32][4] = {};
      for (int64_t k0 = 0; k0 < ld; k0 += 32) {
        uint32_t A[32][4], B[32][2];
        for (int lane = 0; lane < 32; ++lane) {
          for (int i = 0; i < 4; ++i) {
            const int64_t r = row0 + host_device::frag_a_row(lane, i);
            uint32_t v = 0;
            if (r < T) std::memcpy(&v, padded.data() + r * ld + k0 + host_device::frag_a_k(lane, i), 4);
            A[lane][i] = v;
          }
          const int64_t c = col0 + host_device::frag_b_col(lane);
          for (int i = 0; i < 2; ++i)
            B[lane][i] = c < out ? host_device::load_b_reg(format, packed + c * pc, in, k0, lane, i) : 0u;
        }
        mma_emulate(A, B, C);
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const int64_t t = row0 + host_device::frag_c_row(lane, i), r = col0 + host_device::frag_c_col(lane, i);
          if (t < T && r < out) y[static_cast<size_t>(t * out + r)] = C[lane][i];
        }
    }
  return y;
}

// The fast ternary GEMM (qgemm_fast_kernel) one 16 x 8 tile at a time: codes written in the interleave16
// layout with row sums as hadamard_quantize writes them, per 64-code step each lane's 16-byte activation loads
// and 4-byte weight load, the fragments of sub-steps 0 and 1 (host_device::fast_a_frag / fast_b_frag), the emulated
// mma, then the row sum subtracted. Needs in % 64 == 0.
std::vector<int32_t> gemm_fast_emulate(const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
                                       int64_t out) {
  const int64_t ld = (in + 63) / 64 * 64;
  std::vector<uint8_t> il(static_cast<size_t>(T * ld), 0);
  std::vector<int32_t> rowsum(static_cast<size_t>(T), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < in; ++k) {
      il[static_cast<size_t>(t * ld + host_device::interleave16(k))] = codes[t * in + k];
      rowsum[static_cast<size_t>(t)] += codes[t * in + k];
    }
  std::vector<int32_t> y(static_cast<size_t>(T * out), 0);
  for (int64_t row0 = 0; row0 < T; row0 += 16)
    for (int64_t col0 = 0; col0 < out; col0 += 8) {
      int32_t C[32][4] = {};
      for (int64_t k0 = 0; k0 < ld; k0 += 64) {
        uint32_t lo[32][4] = {}, hi[32][4] = {}, w[32] = {};
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, q = lane % 4;
          const int64_t r0 = row0 + g, r1 = row0 + g + 8, c = col0 + g;
          if (r0 < T) std::memcpy(lo[lane], il.data() + r0 * ld + k0 + 16 * q, 16);
          if (r1 < T) std::memcpy(hi[lane], il.data() + r1 * ld + k0 + 16 * q, 16);
          if (c < out) std::memcpy(&w[lane], packed + c * pc + k0 / 4 + 4 * q, 4);
        }
        for (int m = 0; m < 2; ++m) {
          uint32_t A[32][4], B[32][2];
          for (int lane = 0; lane < 32; ++lane) {
            host_device::fast_a_frag(lo[lane], hi[lane], m, A[lane]);
            host_device::fast_b_frag(w[lane], m, B[lane]);
          }
          mma_emulate(A, B, C);
        }
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const int64_t t = row0 + host_device::frag_c_row(lane, i), r = col0 + host_device::frag_c_col(lane, i);
          if (t < T && r < out) y[static_cast<size_t>(t * out + r)] = C[lane][i] - rowsum[static_cast<size_t>(t)];
        }
    }
  return y;
}

py::array_t<int32_t> py_gemm_fast(const py::object& codes_obj, const py::object& packed_obj, int64_t in) {
  CArray<uint8_t> codes = input_array<uint8_t>(codes_obj, "codes", "uint8", 2, "[T, in]");
  CArray<uint8_t> packed = input_array<uint8_t>(packed_obj, "packed", "uint8", 2, "[out, in / 4]");
  if (in % 64 != 0) throw std::invalid_argument("the fast ternary GEMM needs in_features % 64 == 0");
  if (codes.shape(1) != in || packed.shape(1) != in / 4)
    throw std::invalid_argument("codes must be [T, in] and packed [out, in / 4]");
  const int64_t T = codes.shape(0), out = packed.shape(0);
  const std::vector<int32_t> y = gemm_fast_emulate(codes.data(), T, in, packed.data(), in / 4, out);
  auto res = new_array<int32_t>({ss(T), ss(out)});
  std::memcpy(res.mutable_data(), y.data(), sizeof(int32_t) * y.size());
  return res;
}

py::array_t<int32_t> py_gemm(const py::object& codes_obj, const py::object& packed_obj, int64_t in,
                             const std::string& weight) {
  CArray<uint8_t> codes = input_array<uint8_t>(codes_obj, "codes", "uint8", 2, "[T, in]");
  CArray<uint8_t> packed = input_array<uint8_t>(packed_obj, "packed", "uint8", 2, "[out, packed_cols]");
  const robuq::WeightFormat f = robuq::parse_weight_format(weight);
  if (codes.shape(1) != in || packed.shape(1) != robuq::packed_cols(f, in))
    throw std::invalid_argument("codes must be [T, in] and packed [out, packed_cols(in)]");
  const int64_t T = codes.shape(0), out = packed.shape(0);
  const std::vector<int32_t> y = gemm_emulate(codes.data(), T, in, packed.data(), packed.shape(1), out, f);
  auto res = new_array<int32_t>({ss(T), ss(out)});
  std::memcpy(res.mutable_data(), y.data(), sizeof(int32_t) * y.size());
  return res;
}

// A whole quantized linear as the CUDA engine runs it (CudaEngine::Impl::run_linear): fused Hadamard +
// quantize, low-rank u, the mma GEMM (or the float-activation kernel's loop), the epilogue.
py::array_t<float> py_qlinear(const std::string& weight, int64_t in, const py::object& packed_obj,
                              const py::object& scale_obj, const py::object& wsum_obj, const py::object& bias_obj,
                              const py::object& down_obj, const py::object& up_obj, int act_bits, float clip_k,
                              const std::string& hadamard, int64_t block, const py::object& x_obj, bool gelu) {
  const robuq::WeightFormat f = robuq::parse_weight_format(weight);
  CArray<uint8_t> packed = input_array<uint8_t>(packed_obj, "packed", "uint8", 2, "[out, packed_cols]");
  CArray<float> scale = input_array<float>(scale_obj, "scale", "float32", 1, "[out]");
  CArray<int32_t> wsum = input_array<int32_t>(wsum_obj, "wsum", "int32", 1, "[out]");
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, in]");
  const int64_t out = packed.shape(0), pc = packed.shape(1), T = x.shape(0);
  if (pc != robuq::packed_cols(f, in) || scale.shape(0) != out || wsum.shape(0) != out || x.shape(1) != in)
    throw std::invalid_argument("inconsistent shapes");
  CArray<float> bias, down, up;
  const float* bp = nullptr;
  if (!bias_obj.is_none()) {
    bias = input_array<float>(bias_obj, "bias", "float32", 1, "[out]");
    if (bias.shape(0) != out) throw std::invalid_argument("bias must be [out]");
    bp = bias.data();
  }
  int64_t R = 0;
  if (!down_obj.is_none()) {
    down = input_array<float>(down_obj, "down", "float32", 2, "[rank, in]");
    up = input_array<float>(up_obj, "up", "float32", 2, "[out, rank]");
    R = down.shape(0);
    if (down.shape(1) != in || up.shape(0) != out || up.shape(1) != R)
      throw std::invalid_argument("down must be [rank, in] and up [out, rank]");
  }
  if (act_bits != 0) check_bits(act_bits);
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(in, robuq::parse_hadamard_form(hadamard), block);

  std::vector<float> rot(static_cast<size_t>(T * in)), mix;
  std::vector<uint8_t> codes(static_cast<size_t>(T * in));
  std::vector<float> sx(static_cast<size_t>(T)), zx(static_cast<size_t>(T));
  std::memcpy(rot.data(), x.data(), sizeof(float) * rot.size());
  for (int64_t t = 0; t < T; ++t) {
    rotate_row(plan, rot.data() + t * in, mix);
    if (act_bits > 0) quantize_row(rot.data() + t * in, in, act_bits, clip_k, codes.data() + t * in, &sx[t], &zx[t]);
  }
  std::vector<float> u(static_cast<size_t>(T * (R > 0 ? R : 1)), 0.0f);
  for (int64_t t = 0; t < T; ++t)  // rowdot_f32: k ascending from 0
    for (int64_t j = 0; j < R; ++j) {
      float acc = 0.0f;
      for (int64_t k = 0; k < in; ++k) acc = acc + rot[static_cast<size_t>(t * in + k)] * down.data()[j * in + k];
      u[static_cast<size_t>(t * R + j)] = acc;
    }
  std::vector<int32_t> acc;
  if (act_bits > 0) acc = gemm_emulate(codes.data(), T, in, packed.data(), pc, out, f);
  auto y = new_array<float>({ss(T), ss(out)});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < out; ++r) {
      float v;
      if (act_bits > 0) {
        v = host_device::epilogue_quant(acc[static_cast<size_t>(t * out + r)], sx[t], zx[t], scale.data()[r],
                                        wsum.data()[r]);
      } else {  // qlinear_float_act_kernel
        float a = 0.0f;
        for (int64_t k0 = 0; k0 < in; k0 += 4) {
          const uint32_t w = host_device::load_b_reg(f, packed.data() + r * pc, in, k0, 0, 0);
          for (int64_t q = 0; q < 4 && k0 + q < in; ++q)
            a = a + rot[static_cast<size_t>(t * in + k0 + q)] *
                        static_cast<float>(host_device::s8_lane(w, static_cast<int>(q)));
        }
        v = scale.data()[r] * a;
      }
      y.mutable_data()[t * out + r] = host_device::epilogue_finish(
          v, u.data() + t * R, R > 0 ? up.data() + r * R : nullptr, R, bp != nullptr ? bp + r : nullptr, gelu ? 1 : 0);
    }
  return y;
}

template <float (*F)(float)>
py::array_t<float> elementwise(const py::object& x_obj) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 1, "[n]");
  auto y = new_array<float>({x.shape(0)});
  for (py::ssize_t i = 0; i < x.shape(0); ++i) y.mutable_data()[i] = F(x.data()[i]);
  return y;
}

float f_exp(float v) { return host_device::exp_hd(v); }
float f_gelu(float v) { return host_device::gelu_tanh_hd(v); }
float f_silu(float v) { return host_device::silu_hd(v); }

// layernorm_modulate_kernel on the host: x [N, T, D], shift / scale [N, D].
py::array_t<float> py_layernorm_modulate(const py::object& x_obj, const py::object& shift_obj,
                                         const py::object& scale_obj) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 3, "[N, T, D]");
  CArray<float> sh = input_array<float>(shift_obj, "shift", "float32", 2, "[N, D]");
  CArray<float> sc = input_array<float>(scale_obj, "scale", "float32", 2, "[N, D]");
  const int64_t N = x.shape(0), T = x.shape(1), D = x.shape(2);
  if (sh.shape(0) != N || sh.shape(1) != D || sc.shape(0) != N || sc.shape(1) != D || D < 1)
    throw std::invalid_argument("shift and scale must be [N, D], D >= 1");
  auto y = new_array<float>({ss(N), ss(T), ss(D)});
  for (int64_t r = 0; r < N * T; ++r) {
    const float* xr = x.data() + r * D;
    double lanes[robuq::kStatLanes];
    for (int l = 0; l < robuq::kStatLanes; ++l) lanes[l] = host_device::lane_partial(xr, D, l, 0.0, false);
    const double mean = host_device::combine_lanes(lanes) / static_cast<double>(D);
    for (int l = 0; l < robuq::kStatLanes; ++l) lanes[l] = host_device::lane_partial(xr, D, l, mean, true);
    float m, rstd;
    host_device::layernorm_stats(mean, host_device::combine_lanes(lanes), D, &m, &rstd);
    const int64_t n = r / T;
    for (int64_t k = 0; k < D; ++k)
      y.mutable_data()[r * D + k] =
          host_device::modulate_hd(xr[k], m, rstd, sc.data()[n * D + k], sh.data()[n * D + k]);
  }
  return y;
}

// attention_fake_quant_kernel + attention_kernel on the host: qkv [N * T, 3D] -> out [N * T, D].
py::array_t<float> py_attention(const py::object& qkv_obj, int64_t N, int64_t H, int bits) {
  CArray<float> qkv = input_array<float>(qkv_obj, "qkv", "float32", 2, "[N * T, 3 D]");
  const int64_t NT = qkv.shape(0), D3 = qkv.shape(1);
  if (N < 1 || H < 1 || NT % N != 0 || D3 % (3 * H) != 0)
    throw std::invalid_argument("qkv must be [N * T, 3 H head_dim]");
  if (bits != 0) check_bits(bits);
  const int64_t T = NT / N, D = D3 / 3, head_dim_ = D / H;
  std::vector<float> work(qkv.data(), qkv.data() + NT * D3);
  if (bits > 0)
    for (int64_t row = 0; row < NT * 3 * H; ++row)
      host_device::fake_quant_row(qkv.data() + row * head_dim_, head_dim_, bits, work.data() + row * head_dim_);
  const float score_scale = static_cast<float>(std::pow(static_cast<double>(head_dim_), -0.5));
  const float levels = bits > 0 ? static_cast<float>((1 << bits) - 1) : 0.0f;
  auto out = new_array<float>({ss(NT), ss(D)});
  std::vector<float> s(static_cast<size_t>(T));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        const float* q = work.data() + (n * T + i) * D3 + h * head_dim_;
        float mx = -INFINITY;
        for (int64_t j = 0; j < T; ++j) {
          const float* k = work.data() + (n * T + j) * D3 + D + h * head_dim_;
          float acc = 0.0f;
          for (int64_t d = 0; d < head_dim_; ++d) acc = acc + q[d] * k[d];
          s[static_cast<size_t>(j)] = acc * score_scale;
          mx = host_device::fmax_hd(mx, s[static_cast<size_t>(j)]);
        }
        float sum = 0.0f;
        for (float& v : s) {
          v = host_device::exp_hd(v - mx);
          sum = sum + v;
        }
        const float inv = 1.0f / sum;
        for (float& v : s) {
          v = v * inv;
          if (levels > 0.0f) v = host_device::prob_grid(v, levels);
        }
        for (int64_t d = 0; d < head_dim_; ++d) {
          float acc = 0.0f;
          for (int64_t j = 0; j < T; ++j)
            acc = acc +
                  s[static_cast<size_t>(j)] * work[static_cast<size_t>((n * T + j) * D3 + 2 * D + h * head_dim_ + d)];
          out.mutable_data()[(n * T + i) * D + h * head_dim_ + d] = acc;
        }
      }
  return out;
}

}  // namespace

// The CUDA engine's reverse-process loop (CudaEngine::sample) with the device kernels' thread bodies run on
// the host (engine/sampler_step.h) and a Python model callback in place of the device forward: x_T from
// the noise kernel, per step the model, the step's noise (key 1 + i) where the sampler adds one, and the
// update kernel. tests/test_cuda_host.py compares it with the CPU sample_loop.
py::array_t<float> py_host_sample_loop(const py::function& model, int64_t N, int64_t C, int64_t H, int64_t W,
                                       const std::string& steps, const std::string& sampler, double eta,
                                       bool clip_denoised, bool learn_sigma, uint64_t seed,
                                       const std::optional<std::vector<uint64_t>>& seeds) {
  if (N < 1 || C < 1 || H < 1 || W < 1) throw std::invalid_argument("N, C, H, W must be positive");
  if (seeds && static_cast<int64_t>(seeds->size()) != N) throw std::invalid_argument("one seed per sample");
  robuq::SampleOptions opt;
  if (sampler != "ddpm" && sampler != "ddim") throw std::invalid_argument("sampler must be 'ddpm' or 'ddim'");
  opt.sampler = sampler == "ddpm" ? robuq::Sampler::DDPM : robuq::Sampler::DDIM;
  opt.eta = eta;
  opt.clip_denoised = clip_denoised;
  opt.learn_sigma = learn_sigma;
  opt.seed = seed;
  const uint64_t* sd = seeds ? seeds->data() : nullptr;
  const robuq::SpacedSchedule sched = robuq::make_schedule(1000, steps);
  const int64_t per = C * H * W, cout_per = (learn_sigma ? 2 * C : C) * H * W, K = sched.size();
  std::vector<float> x(static_cast<size_t>(N * per)), noise(static_cast<size_t>(N * per));
  const auto draw = [&](uint64_t key, float* dst) {
    for (int64_t i = 0; i < robuq::step::gaussian_threads(sd, N, per); ++i)
      robuq::step::gaussian_thread(i, seed, sd, key, N, per, dst);
  };
  draw(0, x.data());
  for (int64_t i = 0; i < K; ++i) {
    const int64_t t = K - 1 - i;
    py::array_t<float> xa({N, C, H, W});
    std::memcpy(xa.mutable_data(), x.data(), sizeof(float) * x.size());
    py::array_t<int64_t> ta(N);
    for (int64_t n = 0; n < N; ++n) ta.mutable_data()[n] = sched.timestep_map[t];
    auto mo = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(model(xa, ta));
    if (!mo || mo.size() != N * cout_per) throw std::invalid_argument("model callback returned the wrong shape");
    const bool need_noise = t > 0 && (opt.sampler == robuq::Sampler::DDPM || eta != 0.0);
    if (need_noise) draw(static_cast<uint64_t>(1 + i), noise.data());
    const robuq::step::Scalars sc = robuq::step_scalars(sched, t, opt);
    for (int64_t e = 0; e < N * per; ++e)
      robuq::step::step_thread(e, sc, x.data(), mo.data(), per, cout_per, need_noise ? noise.data() : nullptr);
  }
  py::array_t<float> out({N, C, H, W});
  std::memcpy(out.mutable_data(), x.data(), sizeof(float) * x.size());
  return out;
}

void bind_cuda_host(py::module_& m) {
  py::module_ h = m.def_submodule(
      "cuda_host",
      "The CUDA kernels' per-thread arithmetic (kernels/cuda/host_device_math.h) compiled for the host, arranged as\n"
      "the device kernels arrange it; tests/test_cuda_host.py checks it against the CPU reference kernels.");
  h.def("sample_loop", &py_host_sample_loop, py::arg("model"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("steps") = "250", py::arg("sampler") = "ddpm", py::arg("eta") = 0.0, py::arg("clip_denoised") = false,
        py::arg("learn_sigma") = true, py::arg("seed") = 0, py::arg("seeds") = py::none(),
        "The CUDA engine's sampling loop arranged as on the device (noise and update kernels' thread bodies),\n"
        "with a model callback; the same arguments as robuq._C.sample_loop, plus per-sample seeds.");
  h.def("quantize_rows", &py_quantize_rows, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        "quantize_rows(x float32 [T, n], bits, clip_k) -> (codes uint8 [T, n], scale [T], zero [T])");
  h.def("hadamard_quantize", &py_hadamard_quantize, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        py::arg("form") = "full", py::arg("block") = 0,
        "hadamard_quantize(x, bits, clip_k, form='full', block=0) -> (codes, scale, zero, rotated)\n"
        "bits 0: only the rotation (codes, scale, zero left unset).");
  h.def("unpack", &py_unpack, py::arg("packed"), py::arg("cols"), py::arg("weight") = "ternary",
        "unpack(packed uint8 [rows, packed_cols], cols, weight='ternary'|'int4'|'int8') -> int8 [rows, cols]:\n"
        "the codes as the GEMM's B-fragment loader produces them.");
  h.def("gemm", &py_gemm, py::arg("codes"), py::arg("packed"), py::arg("in_features"), py::arg("weight") = "ternary",
        "gemm(codes uint8 [T, in], packed uint8 [out, packed_cols], in_features, weight) -> int32 [T, out]:\n"
        "the mma.sync GEMM's fragments, loaded as the kernel loads them and multiplied by an emulated mma.");
  h.def("gemm_fast", &py_gemm_fast, py::arg("codes"), py::arg("packed"), py::arg("in_features"),
        "gemm_fast(codes uint8 [T, in], packed ternary uint8 [out, in / 4], in_features) -> int32 [T, out]:\n"
        "the fast ternary GEMM's loads, fragments and row-sum correction, with an emulated mma (in % 64 == 0).");
  h.def("qlinear", &py_qlinear, py::arg("weight"), py::arg("in_features"), py::arg("packed"), py::arg("scale"),
        py::arg("wsum"), py::arg("bias") = py::none(), py::arg("down") = py::none(), py::arg("up") = py::none(),
        py::arg("act_bits") = 0, py::arg("clip_k") = 0.0f, py::arg("hadamard") = "none", py::arg("hadamard_block") = 0,
        py::arg("x") = py::none(), py::arg("gelu") = false,
        "qlinear(weight, in_features, packed, scale, wsum, bias=None, down=None, up=None, act_bits=0, clip_k=0,\n"
        "        hadamard='none', hadamard_block=0, x=..., gelu=False) -> float32 [T, out]:\n"
        "a quantized linear as the CUDA engine computes it (arguments as robuq._C.QLinear).");
  h.def("exp", &elementwise<f_exp>, py::arg("x"), "exp of float32 [n] by host_device_math.h's exp_hd");
  h.def("gelu_tanh", &elementwise<f_gelu>, py::arg("x"), "GELU (tanh form) of float32 [n], gelu_tanh_hd");
  h.def("silu", &elementwise<f_silu>, py::arg("x"), "SiLU of float32 [n], silu_hd");
  h.def("attention", &py_attention, py::arg("qkv"), py::arg("N"), py::arg("num_heads"), py::arg("bits") = 0,
        "attention(qkv float32 [N * T, 3 D], N, num_heads, bits=0) -> float32 [N * T, D], as the device kernels\n"
        "(fake quantization of q, k, v, scores, softmax with exp_hd, probability grid, output)");
  h.def("layernorm_modulate", &py_layernorm_modulate, py::arg("x"), py::arg("shift"), py::arg("scale"),
        "layernorm_modulate(x [N, T, D], shift [N, D], scale [N, D]) -> float32 [N, T, D], as the device kernel");
}
