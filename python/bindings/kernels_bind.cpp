// robuq._C bindings of the reference-tier kernels: Hadamard, activation quantization, ternary packing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "array_util.h"
#include "ops.h"
#include "robuq/avx2.h"
#include "robuq/avx512.h"
#include "robuq/cpu.h"
#include "robuq/format.h"
#include "robuq/hadamard.h"
#include "robuq/pack.h"
#include "robuq/qlinear.h"
#include "robuq/quant.h"
#include "robuq/ternary_gemm.h"

namespace py = pybind11;

namespace {

using robuq_bind::CArray;
using robuq_bind::input_array;
using robuq_bind::new_array;

// kernel tier argument of the Hadamard / quantization bindings: "reference" (default), "avx2", "avx512" or "amx"
// (which must be available: these kernels are bit-identical, so tests compare them; the avx512 tier runs the
// avx2 ones where it has none, the amx tier the avx512 ones).
bool use_avx2_tier(const std::string& tier) {
  const robuq::Tier t = robuq::parse_tier(tier);
  if (t == robuq::Tier::Generic)
    throw std::invalid_argument(
        "tier must be 'reference', 'avx2', 'avx512' or 'amx' (the generic tier runs the reference kernels here)");
  if (t != robuq::Tier::Reference && !robuq::tier_available(t))
    throw std::invalid_argument(std::string("the ") + robuq::tier_name(t) +
                                " tier is not available on this CPU / build");
  return robuq::tier_uses_avx2_kernels(t);
}

py::array_t<int8_t> py_hadamard_base(int64_t K) {
  const std::vector<int8_t> H = robuq::hadamard_base(K);
  auto out = new_array<int8_t>({static_cast<py::ssize_t>(K), static_cast<py::ssize_t>(K)});
  std::memcpy(out.mutable_data(), H.data(), H.size());
  return out;
}

py::tuple py_hadamard_factor(int64_t n) {
  const robuq::HadamardFactor f = robuq::hadamard_factor(n);
  return py::make_tuple(f.K, f.M);
}

py::array_t<double> py_hadamard_matrix(int64_t n, const std::string& form, int64_t block) {
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(n, robuq::parse_hadamard_form(form), block);
  auto out = new_array<double>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(n)});
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::hadamard_dense(plan, dst);
  }
  return out;
}

py::array_t<float> py_hadamard_transform(const py::object& x_obj, const std::string& form, int64_t block,
                                         const std::string& tier) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  const int64_t T = x.shape(0), n = x.shape(1);
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(n, robuq::parse_hadamard_form(form), block);
  const bool vec = use_avx2_tier(tier);
  auto out = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
  const float* src = x.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(T * n));
    if (vec) {
      std::vector<float> scratch(static_cast<size_t>(plan.scratch_size()));
#ifdef ROBUQ_HAVE_AVX512
      if (robuq::tier_uses_avx512_kernels(robuq::parse_tier(tier))) {  // the avx512 row transform where it applies
        const robuq::avx2::RowTransform transform(plan);
        std::vector<float> row(static_cast<size_t>(n)), scr(static_cast<size_t>(std::max<int64_t>(n, 1)));
        for (int64_t t = 0; t < T; ++t) {
          std::memcpy(row.data(), dst + t * n, sizeof(float) * static_cast<size_t>(n));
          if (!robuq::avx512::hadamard_row(plan, transform.signs(), row.data(), dst + t * n, scr.data()))
            transform(row.data(), dst + t * n, scratch.data());
        }
      } else
#endif
        for (int64_t t = 0; t < T; ++t) robuq::avx2::hadamard_transform_row(plan, dst + t * n, scratch.data());
    } else {
      robuq::ref::hadamard_transform(plan, dst, T);
    }
  }
  return out;
}

py::tuple py_quantize_tokens(const py::object& x_obj, int bits, float clip_k, const std::string& tier) {
  const bool vec = use_avx2_tier(tier);
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  const int64_t T = x.shape(0), n = x.shape(1);
  robuq::check_act_bits(bits);
  robuq::check_clip_k(clip_k);
  if (n < 1)
    throw std::invalid_argument("x must have at least one column to quantize, got shape [" + std::to_string(T) +
                                ", 0]");
  auto codes = new_array<uint8_t>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
  auto scale = new_array<float>({static_cast<py::ssize_t>(T)});
  auto zero = new_array<float>({static_cast<py::ssize_t>(T)});
  const float* src = x.data();
  uint8_t* c = codes.mutable_data();
  float* s = scale.mutable_data();
  float* z = zero.mutable_data();
  {
    py::gil_scoped_release release;
#ifdef ROBUQ_HAVE_AVX512
    if (robuq::tier_uses_avx512_kernels(robuq::parse_tier(tier))) {
      // as the engine's linears do: rows in pairs (quantize_rows2), an odd last row alone
      int64_t t = 0;
      for (; t + 2 <= T; t += 2)
        robuq::avx512::quantize_rows2(src + t * n, src + (t + 1) * n, n, bits, clip_k, c + t * n, c + (t + 1) * n,
                                      s + t, z + t);
      if (t < T) robuq::avx512::quantize_row(src + t * n, n, bits, clip_k, c + t * n, s + t, z + t);
    } else
#endif
        if (vec)
      for (int64_t t = 0; t < T; ++t) robuq::avx2::quantize_row(src + t * n, n, bits, clip_k, c + t * n, s + t, z + t);
    else
      robuq::ref::quantize_tokens(src, T, n, bits, clip_k, c, s, z);
  }
  return py::make_tuple(codes, scale, zero);
}

py::tuple py_hadamard_quantize(const py::object& x_obj, int bits, float clip_k, const std::string& form, int64_t block,
                               bool return_rotated, const std::string& tier, int threads) {
  const bool vec = use_avx2_tier(tier);
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  const int64_t T = x.shape(0), n = x.shape(1);
  robuq::check_act_bits(bits);
  robuq::check_clip_k(clip_k);
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(n, robuq::parse_hadamard_form(form), block);
  auto codes = new_array<uint8_t>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
  auto scale = new_array<float>({static_cast<py::ssize_t>(T)});
  auto zero = new_array<float>({static_cast<py::ssize_t>(T)});
  py::array_t<float> rotated;
  float* rot = nullptr;
  if (return_rotated) {
    rotated = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
    rot = rotated.mutable_data();
  }
  const float* src = x.data();
  uint8_t* c = codes.mutable_data();
  float* s = scale.mutable_data();
  float* z = zero.mutable_data();
  {
    py::gil_scoped_release release;
    if (vec)
      robuq::avx2::hadamard_quantize(plan, src, T, bits, clip_k, c, s, z, rot, threads);
    else
      robuq::ref::hadamard_quantize(plan, src, T, bits, clip_k, c, s, z, rot);
  }
  if (return_rotated) return py::make_tuple(codes, scale, zero, rotated);
  return py::make_tuple(codes, scale, zero);
}

py::array_t<uint8_t> py_pack_ternary(const py::object& w_obj) {
  CArray<int8_t> w = input_array<int8_t>(w_obj, "w", "int8", 2, "[rows, cols]");
  const int64_t R = w.shape(0), C = w.shape(1);
  const int64_t B = robuq::ternary_packed_cols(C);
  auto out = new_array<uint8_t>({static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(B)});
  const int8_t* src = w.data();
  uint8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::pack_ternary(src, R, C, dst);
  }
  return out;
}

py::array_t<int8_t> py_unpack_ternary(const py::object& p_obj, int64_t cols) {
  CArray<uint8_t> p = input_array<uint8_t>(p_obj, "packed", "uint8", 2, "[rows, ceil(cols / 4)]");
  const int64_t R = p.shape(0), B = p.shape(1);
  if (cols < 0) throw std::invalid_argument("cols must be >= 0, got " + std::to_string(cols));
  if (B != robuq::ternary_packed_cols(cols))
    throw std::invalid_argument("packed has " + std::to_string(B) +
                                " bytes per row but cols = " + std::to_string(cols) +
                                " needs ceil(cols / 4) = " + std::to_string(robuq::ternary_packed_cols(cols)));
  auto out = new_array<int8_t>({static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(cols)});
  const uint8_t* src = p.data();
  int8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::unpack_ternary(src, R, B, cols, dst);
  }
  return out;
}

// ------------------------------------------------- ternary table-lookup GEMM (reference layout, avx2, avx512)
py::array_t<int32_t> py_ternary_matmul(const py::object& q_obj, const py::object& p_obj, int64_t in, int bits,
                                       int threads, const std::string& tier) {
  const robuq::Tier t = robuq::parse_tier(tier);
  if (t != robuq::Tier::Reference && !robuq::tier_uses_avx2_kernels(t))
    throw std::invalid_argument("ternary_matmul: tier must be 'reference', 'avx2', 'avx512' or 'amx'");
  if (!robuq::tier_available(t))
    throw std::invalid_argument(std::string("ternary_matmul: the ") + tier +
                                " tier is not available on this CPU / build");
  CArray<uint8_t> q = input_array<uint8_t>(q_obj, "codes", "uint8", 2, "[T, in]");
  CArray<uint8_t> p = input_array<uint8_t>(p_obj, "packed", "uint8", 2, "[out, ceil(in / 4)]");
  const int64_t T = q.shape(0), out = p.shape(0);
  if (q.shape(1) != in || p.shape(1) != robuq::ternary_packed_cols(in))
    throw std::invalid_argument("codes must be [T, in] and packed [out, ceil(in / 4)]");
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  for (int64_t i = 0; i < T * in; ++i)
    if (q.data()[i] >> bits) throw std::invalid_argument("a code does not fit in `bits` bits");
  // weight sums (codes in used positions; the kernel needs them to undo its centring)
  std::vector<int8_t> w(static_cast<size_t>(out * in));
  robuq::unpack_ternary(p.data(), out, p.shape(1), in, w.data());
  std::vector<int32_t> wsum(static_cast<size_t>(out), 0);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; ++k) wsum[static_cast<size_t>(r)] += w[static_cast<size_t>(r * in + k)];
  auto acc = new_array<int32_t>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(out)});
  const uint8_t* qs = q.data();
  const uint8_t* ps = p.data();
  int32_t* a = acc.mutable_data();
  {
    py::gil_scoped_release release;
    if (t == robuq::Tier::Reference) {  // the layout's specification: repack, then the scalar GEMM over it
      const robuq::TernaryLutWeights lw = robuq::ref::ternary_lut_repack(ps, out, in);
      robuq::ref::ternary_gemm_lut(qs, T, bits, lw, a);
      return acc;
    }
#ifdef ROBUQ_HAVE_AVX512
    if (t == robuq::Tier::Avx512) {
      robuq::ternary_gemm_avx512(qs, T, bits, ps, out, in, wsum.data(), a, threads);
      return acc;
    }
#endif
#ifdef ROBUQ_HAVE_AMX
    if (t == robuq::Tier::Amx) {
      robuq::ternary_gemm_amx(qs, T, bits, ps, out, in, wsum.data(), a, threads);
      return acc;
    }
#endif
    robuq::ternary_gemm_avx2(qs, T, bits, ps, out, in, wsum.data(), a, threads);
  }
  return acc;
}

py::array_t<uint8_t> py_ternary_lut_indices(const py::object& p_obj, int64_t in, const std::string& tier) {
  CArray<uint8_t> p = input_array<uint8_t>(p_obj, "packed", "uint8", 2, "[out, ceil(in / 4)]");
  const int64_t out = p.shape(0), chunks = robuq::ternary_packed_cols(in);
  if (p.shape(1) != chunks) throw std::invalid_argument("packed must be [out, ceil(in / 4)]");
  auto idx = new_array<uint8_t>({static_cast<py::ssize_t>((out + 15) / 16), static_cast<py::ssize_t>(chunks), 32});
  if (tier == "avx2") {
    if (!robuq::tier_available(robuq::Tier::Avx2)) throw std::invalid_argument("the avx2 tier is not available");
    robuq::ternary_lut_indices_avx2(p.data(), out, in, idx.mutable_data());
  } else if (tier == "reference") {
    const robuq::TernaryLutWeights w = robuq::ref::ternary_lut_repack(p.data(), out, in);
    std::memcpy(idx.mutable_data(), w.idx.data(), w.idx.size());
  } else {
    throw std::invalid_argument("tier must be 'reference' or 'avx2'");
  }
  return idx;
}

// ------------------------------------------------ QLinear with a fused post op (active tier, tests)
// Builds a QLinear over the arrays (the .rq layout, as robuq._C.QLinear) for one call of forward(post=...).
py::array_t<float> py_qlinear_forward_post(const std::string& weight, int64_t in, const py::object& packed_obj,
                                           const py::object& scale_obj, const py::object& wsum_obj,
                                           const py::object& bias_obj, int act_bits, float clip_k,
                                           const std::string& hadamard, const py::object& x_obj, int threads,
                                           const std::string& post) {
  robuq::QLinearDesc d;
  d.format = robuq::parse_weight_format(weight);
  d.in = in;
  CArray<uint8_t> packed = input_array<uint8_t>(packed_obj, "packed", "uint8", 2, "[out, packed_cols]");
  CArray<float> scale = input_array<float>(scale_obj, "scale", "float32", 1, "[out]");
  CArray<int32_t> wsum = input_array<int32_t>(wsum_obj, "wsum", "int32", 1, "[out]");
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, in]");
  CArray<float> bias;
  d.out = packed.shape(0);
  if (packed.shape(1) != robuq::packed_cols(d.format, in) || scale.shape(0) != d.out || wsum.shape(0) != d.out ||
      x.shape(1) != in)
    throw std::invalid_argument("inconsistent shapes");
  d.packed = packed.data();
  d.scale = scale.data();
  d.wsum = wsum.data();
  if (!bias_obj.is_none()) {
    bias = input_array<float>(bias_obj, "bias", "float32", 1, "[out]");
    d.bias = bias.data();
  }
  d.act_bits = act_bits;
  d.clip_k = clip_k;
  d.plan = robuq::make_hadamard_plan(in, robuq::parse_hadamard_form(hadamard), 0);
  robuq::PostOp op = robuq::PostOp::None;
  if (post == "gelu_tanh")
    op = robuq::PostOp::GeluTanh;
  else if (post != "none")
    throw std::invalid_argument("post must be 'none' or 'gelu_tanh'");
  const robuq::QLinear q(d);
  auto y = new_array<float>({x.shape(0), d.out});
  float* ys = y.mutable_data();
  {
    py::gil_scoped_release release;
    q.forward(x.data(), x.shape(0), ys, threads, op);
  }
  return y;
}

// ------------------------------------------------------------------ engine ops (active tier, tests)
py::array_t<float> py_gelu_tanh(const py::object& x_obj, int threads) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 1, "[n]");
  auto y = new_array<float>({x.shape(0)});
  std::memcpy(y.mutable_data(), x.data(), sizeof(float) * static_cast<size_t>(x.shape(0)));
  float* d = y.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::ops::gelu_tanh(d, x.shape(0), threads);
  }
  return y;
}

py::array_t<float> py_exp(const py::object& x_obj) {
  if (!robuq::tier_available(robuq::Tier::Avx2)) throw std::invalid_argument("exp_f32 needs the avx2 tier");
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 1, "[n]");
  auto y = new_array<float>({x.shape(0)});
  robuq::avx2::exp_f32(x.data(), x.shape(0), y.mutable_data());
  return y;
}

py::array_t<float> py_layernorm_modulate(const py::object& x_obj, const py::object& shift_obj,
                                         const py::object& scale_obj, int threads) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 3, "[N, T, D]");
  CArray<float> sh = input_array<float>(shift_obj, "shift", "float32", 2, "[N, D]");
  CArray<float> sc = input_array<float>(scale_obj, "scale", "float32", 2, "[N, D]");
  const int64_t N = x.shape(0), T = x.shape(1), D = x.shape(2);
  if (sh.shape(0) != N || sh.shape(1) != D || sc.shape(0) != N || sc.shape(1) != D)
    throw std::invalid_argument("shift and scale must be [N, D]");
  auto y = new_array<float>({N, T, D});
  float* d = y.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::ops::layernorm_modulate(x.data(), N, T, D, sh.data(), sc.data(), D, d, threads);
  }
  return y;
}

py::array_t<float> py_attention(const py::object& qkv_obj, int64_t N, int64_t H, int bits, int threads) {
  CArray<float> qkv = input_array<float>(qkv_obj, "qkv", "float32", 2, "[N * T, 3 D]");
  const int64_t NT = qkv.shape(0), D3 = qkv.shape(1);
  if (N < 1 || NT % N != 0 || D3 % (3 * H) != 0) throw std::invalid_argument("qkv must be [N * T, 3 H head_dim]");
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
  const int64_t T = NT / N, D = D3 / 3, head_dim = D / H;
  auto out = new_array<float>({NT, D});
  std::vector<float> scratch(static_cast<size_t>(threads) * robuq::ops::attention_scratch_floats(T, head_dim));
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::ops::attention(qkv.data(), N, T, H, head_dim, bits, o, scratch.data(), threads);
  }
  return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def(
      "weight_formats",
      [] {
        py::list out;
        for (const robuq::WeightFormatTraits& t : robuq::kWeightFormats) {
          py::dict d;
          d["name"] = t.name;
          d["value"] = static_cast<int>(t.format);
          d["code_min"] = t.code_min;
          d["code_max"] = t.code_max;
          d["codes_per_byte"] = t.codes_per_byte;
          out.append(d);
        }
        return out;
      },
      "weight_formats() -> [dict]: the C++ table of weight formats (robuq/format.h): name, value, code_min,\n"
      "code_max, codes_per_byte, in enum order.");
  m.def("hadamard_base", &py_hadamard_base, py::arg("K"),
        "hadamard_base(K) -> int8 array [K, K]\n\n"
        "The +-1 base matrix H_K (H_K @ H_K.T = K I): Sylvester for K = 1 and powers of two, otherwise\n"
        "Paley I (K-1 a prime = 3 mod 4), else Paley II (K/2-1 a prime = 1 mod 4). ValueError when none\n"
        "applies.");
  m.def("hadamard_factor", &py_hadamard_factor, py::arg("n"),
        "hadamard_factor(n) -> (K, M)\n\n"
        "n = K * M with M a power of two and the smallest K for which H_K exists (K = 1 for powers of two).\n"
        "ValueError when the width has no Hadamard matrix (e.g. 18).");
  m.def("hadamard_matrix", &py_hadamard_matrix, py::arg("n"), py::arg("form") = "full", py::arg("block") = 0,
        "hadamard_matrix(n, form='full', block=0) -> float64 array [n, n]\n\n"
        "Dense orthonormal H (y = x @ H): 'full' kron(H_K, H_M) / sqrt(n); 'block' I (x) H_b / sqrt(b) with\n"
        "b a power of two dividing n (0: the largest); 'none' the identity. block is ignored unless\n"
        "form == 'block'. The reference for the fast transform.");
  m.def("hadamard_transform", &py_hadamard_transform, py::arg("x"), py::arg("form") = "full", py::arg("block") = 0,
        py::arg("tier") = "reference",
        "hadamard_transform(x, form='full', block=0, tier='reference') -> float32 array [T, n]\n\n"
        "Fast transform x @ H of each row of x (float32, [T, n]; not modified), in the operation order\n"
        "of docs/quantization.md. tier: 'reference' or 'avx2' (bit-identical).");
  m.def("quantize_tokens", &py_quantize_tokens, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        py::arg("tier") = "reference",
        "quantize_tokens(x, bits, clip_k, tier='reference')\n"
        "    -> (codes uint8 [T, n], scale float32 [T], zero float32 [T])\n\n"
        "Per-row asymmetric quantization of x (float32, [T, n], n >= 1) to bits in 1..8. clip_k <= 0:\n"
        "minmax range; clip_k > 0: gauss range [mean - k std, mean + k std] clipped to [min, max], with\n"
        "k = clip_k as float32. Dequantize: (codes - zero[:, None]) * scale[:, None]. tier: 'reference' or\n"
        "'avx2' (bit-identical).");
  m.def("hadamard_quantize", &py_hadamard_quantize, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        py::arg("form") = "full", py::arg("block") = 0, py::arg("return_rotated") = false,
        py::arg("tier") = "reference", py::arg("threads") = 1,
        "hadamard_quantize(x, bits, clip_k, form='full', block=0, return_rotated=False, tier='reference',\n"
        "                  threads=1)\n"
        "    -> (codes uint8 [T, n], scale float32 [T], zero float32 [T][, rotated float32 [T, n]])\n\n"
        "Fused hadamard_transform then quantize_tokens for x (float32, [T, n]); bit-identical to the\n"
        "composition. With return_rotated the transformed float rows are returned too. tier: 'reference' or\n"
        "'avx2' (bit-identical; threads split the tokens).");
  m.def("pack_ternary", &py_pack_ternary, py::arg("w"),
        "pack_ternary(w) -> uint8 array [R, ceil(C / 4)]\n\n"
        "Packs ternary codes w (int8 in {-1, 0, 1}, [R, C]) 4 per byte: weight 4j+i is stored as w+1 in\n"
        "bits 2i..2i+1 of byte j; rows are padded with code 1 (weight 0). ValueError on other values.");
  m.def("unpack_ternary", &py_unpack_ternary, py::arg("packed"), py::arg("cols"),
        "unpack_ternary(packed, cols) -> int8 array [R, cols]\n\n"
        "Inverse of pack_ternary for packed (uint8, [R, ceil(cols / 4)]). ValueError on code 3.");
  m.def("ternary_matmul", &py_ternary_matmul, py::arg("codes"), py::arg("packed"), py::arg("in_features"),
        py::arg("bits"), py::arg("threads") = 1, py::arg("tier") = "avx2",
        "ternary_matmul(codes uint8 [T, in], packed uint8 [out, ceil(in / 4)], in_features, bits, threads=1,\n"
        "               tier='avx2') -> int32 [T, out]\n\n"
        "Exact sum_k codes[t, k] * w[r, k] by the table-lookup GEMM of the named tier ('reference': the scalar\n"
        "repack into the kernel layout and a scalar GEMM over it, any CPU; 'avx2': vpshufb; 'avx512': vpermb,\n"
        "bits 7 and 8 on the avx2 kernel; 'amx': AMX tiles, all bits), weights in the .rq 2-bit layout (padding "
        "positions may hold any\n"
        "code). The tier must be available.");
  m.def("ternary_lut_indices", &py_ternary_lut_indices, py::arg("packed"), py::arg("in_features"),
        py::arg("tier") = "reference",
        "ternary_lut_indices(packed, in_features, tier='reference') -> uint8 [ceil(out / 16), ceil(in / 4), 32]\n\n"
        "The table-lookup GEMM's weight layout (robuq/ternary_gemm.h): 'reference' the scalar repack,\n"
        "'avx2' the kernel's on-the-fly decoder.");
  m.def("gelu_tanh", &py_gelu_tanh, py::arg("x"), py::arg("threads") = 1,
        "gelu_tanh(x float32 [n], threads=1) -> float32 [n]: the engine's GELU (tanh form) on the active tier.");
  m.def("exp_f32", &py_exp, py::arg("x"),
        "exp_f32(x float32 [n]) -> float32 [n]: the avx2 tier's vector exp (softmax, GELU).");
  m.def("layernorm_modulate", &py_layernorm_modulate, py::arg("x"), py::arg("shift"), py::arg("scale"),
        py::arg("threads") = 1,
        "layernorm_modulate(x float32 [N, T, D], shift [N, D], scale [N, D], threads=1) -> float32 [N, T, D]:\n"
        "LayerNorm(x) * (1 + scale) + shift, the engine's op on the active tier.");
  m.def("attention", &py_attention, py::arg("qkv"), py::arg("N"), py::arg("num_heads"), py::arg("bits") = 0,
        py::arg("threads") = 1,
        "attention(qkv float32 [N * T, 3 D], N, num_heads, bits=0, threads=1) -> float32 [N * T, D]: the engine's\n"
        "multi-head attention core on the active tier (bits > 0: q, k, v fake-quantized per (token, head),\n"
        "probabilities on the 1 / (2^bits - 1) grid).");
  m.def("qlinear_forward_post", &py_qlinear_forward_post, py::arg("weight"), py::arg("in_features"), py::arg("packed"),
        py::arg("scale"), py::arg("wsum"), py::arg("bias"), py::arg("act_bits"), py::arg("clip_k"), py::arg("hadamard"),
        py::arg("x"), py::arg("threads") = 1, py::arg("post") = "gelu_tanh",
        "qlinear_forward_post(weight, in_features, packed, scale, wsum, bias, act_bits, clip_k, hadamard, x,\n"
        "                     threads=1, post='gelu_tanh') -> float32 [T, out]\n\n"
        "One forward of a QLinear over the arrays (as robuq._C.QLinear) with a post op fused into it\n"
        "('none' | 'gelu_tanh'), on the active tier: for tests against the separate pass.");
}
