// robuq._C bindings of the reference-tier kernels: Hadamard, activation quantization, ternary packing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "array_util.h"
#include "robuq/hadamard.h"
#include "robuq/pack.h"
#include "robuq/quant.h"

namespace py = pybind11;

namespace {

using robuq_bind::CArray;
using robuq_bind::input_array;
using robuq_bind::new_array;

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

py::array_t<float> py_hadamard_transform(const py::object& x_obj, const std::string& form, int64_t block) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  const int64_t T = x.shape(0), n = x.shape(1);
  const robuq::HadamardPlan plan = robuq::make_hadamard_plan(n, robuq::parse_hadamard_form(form), block);
  auto out = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
  const float* src = x.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(T * n));
    robuq::ref::hadamard_transform(plan, dst, T);
  }
  return out;
}

py::tuple py_quantize_tokens(const py::object& x_obj, int bits, float clip_k) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[T, n]");
  const int64_t T = x.shape(0), n = x.shape(1);
  robuq::check_act_bits(bits);
  robuq::check_clip_k(clip_k);
  if (n < 1) throw std::invalid_argument("x must have at least one column to quantize, got shape [" +
                                         std::to_string(T) + ", 0]");
  auto codes = new_array<uint8_t>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(n)});
  auto scale = new_array<float>({static_cast<py::ssize_t>(T)});
  auto zero = new_array<float>({static_cast<py::ssize_t>(T)});
  const float* src = x.data();
  uint8_t* c = codes.mutable_data();
  float* s = scale.mutable_data();
  float* z = zero.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::ref::quantize_tokens(src, T, n, bits, clip_k, c, s, z);
  }
  return py::make_tuple(codes, scale, zero);
}

py::tuple py_hadamard_quantize(const py::object& x_obj, int bits, float clip_k, const std::string& form,
                               int64_t block, bool return_rotated) {
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
    throw std::invalid_argument("packed has " + std::to_string(B) + " bytes per row but cols = " +
                                std::to_string(cols) + " needs ceil(cols / 4) = " +
                                std::to_string(robuq::ternary_packed_cols(cols)));
  auto out = new_array<int8_t>({static_cast<py::ssize_t>(R), static_cast<py::ssize_t>(cols)});
  const uint8_t* src = p.data();
  int8_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    robuq::unpack_ternary(src, R, B, cols, dst);
  }
  return out;
}

}  // namespace

void bind_kernels(py::module_& m) {
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
  m.def("hadamard_transform", &py_hadamard_transform, py::arg("x"), py::arg("form") = "full",
        py::arg("block") = 0,
        "hadamard_transform(x, form='full', block=0) -> float32 array [T, n]\n\n"
        "Fast transform x @ H of each row of x (float32, [T, n]; not modified), in the operation order\n"
        "of docs/quantization.md (reference tier).");
  m.def("quantize_tokens", &py_quantize_tokens, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        "quantize_tokens(x, bits, clip_k) -> (codes uint8 [T, n], scale float32 [T], zero float32 [T])\n\n"
        "Per-row asymmetric quantization of x (float32, [T, n], n >= 1) to bits in 1..8. clip_k <= 0:\n"
        "minmax range; clip_k > 0: gauss range [mean - k std, mean + k std] clipped to [min, max], with\n"
        "k = clip_k as float32. Dequantize: (codes - zero[:, None]) * scale[:, None].");
  m.def("hadamard_quantize", &py_hadamard_quantize, py::arg("x"), py::arg("bits"), py::arg("clip_k"),
        py::arg("form") = "full", py::arg("block") = 0, py::arg("return_rotated") = false,
        "hadamard_quantize(x, bits, clip_k, form='full', block=0, return_rotated=False)\n"
        "    -> (codes uint8 [T, n], scale float32 [T], zero float32 [T][, rotated float32 [T, n]])\n\n"
        "Fused hadamard_transform then quantize_tokens for x (float32, [T, n]); bit-identical to the\n"
        "composition. With return_rotated the transformed float rows are returned too.");
  m.def("pack_ternary", &py_pack_ternary, py::arg("w"),
        "pack_ternary(w) -> uint8 array [R, ceil(C / 4)]\n\n"
        "Packs ternary codes w (int8 in {-1, 0, 1}, [R, C]) 4 per byte: weight 4j+i is stored as w+1 in\n"
        "bits 2i..2i+1 of byte j; rows are padded with code 1 (weight 0). ValueError on other values.");
  m.def("unpack_ternary", &py_unpack_ternary, py::arg("packed"), py::arg("cols"),
        "unpack_ternary(packed, cols) -> int8 array [R, cols]\n\n"
        "Inverse of pack_ternary for packed (uint8, [R, ceil(cols / 4)]). ValueError on code 3.");
}
