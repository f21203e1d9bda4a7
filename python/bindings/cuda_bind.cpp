// robuq._C bindings of the CUDA backend (docs/cuda.md); the host emulation of its kernels for the tests,
// _C.cuda_host, is in cuda_host_bind.cpp:
//  * _C.cuda_compiled / cuda_available / cuda_build_info, and _C.CudaEngine (only usable in builds with
//    the CUDA backend, on a machine with a device; otherwise it raises RuntimeError saying which is missing).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "array_util.h"
#include "engine_calls.h"

#ifdef ROBUQ_HAVE_CUDA
#include "cuda_engine.h"
#endif

namespace py = pybind11;

namespace {

using robuq_bind::CArray;
using robuq_bind::input_array;
using robuq_bind::new_array;
using robuq_bind::ss;

// ----------------------------------------------------------------------------------- device side
std::string unavailable_reason() {
#ifdef ROBUQ_HAVE_CUDA
  std::string reason;
  if (robuq::cuda_device_available(&reason)) return "";
  return reason;
#else
  return "robuq was built without the CUDA backend (CMake found no nvcc, or ROBUQ_CUDA=OFF)";
#endif
}

#ifdef ROBUQ_HAVE_CUDA
class PyCudaEngine {
 public:
  PyCudaEngine(const std::string& path, int device) {
    py::gil_scoped_release release;
    e_ = std::make_unique<robuq::CudaEngine>(path, device);
  }

  py::array_t<float> forward(const py::object& x, const py::object& t, const py::object& y) {
    return robuq_bind::forward_call(*e_, x, t, y);
  }

  const robuq::LinearShape& shape(const std::string& name) const {
    for (const auto& l : e_->info().linears)
      if (l.name == name) return l;
    throw std::invalid_argument("the model has no linear layer named '" + name + "'");
  }

  py::array_t<float> linear(const std::string& name, const py::object& x) {
    return robuq_bind::linear_call(*e_, shape(name), name, x);
  }

  py::tuple quantize_input(const std::string& name, const py::object& x_obj) {
    const robuq::LinearShape& s = shape(name);
    CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[tokens, in_features]");
    if (x.shape(1) != s.in) throw std::invalid_argument("x must have in_features columns");
    const int64_t T = x.shape(0);
    auto codes = new_array<uint8_t>({ss(T), ss(s.in)});
    auto scale = new_array<float>({ss(T)});
    auto zero = new_array<float>({ss(T)});
    const float* xs = x.data();
    uint8_t* cs = codes.mutable_data();
    float *sp = scale.mutable_data(), *zp = zero.mutable_data();
    {
      py::gil_scoped_release release;
      e_->quantize_input(name, xs, T, cs, sp, zp);
    }
    return py::make_tuple(codes, scale, zero);
  }

  // CudaEngine::sample with Python arguments, as _C.Engine.sample (engine_calls.h: GIL, progress, Ctrl-C).
  py::array_t<float> sample(const py::object& classes, const std::string& steps, double cfg_scale, uint64_t seed,
                            const std::string& sampler, double eta, const std::optional<std::string>& cfg_mode,
                            std::optional<bool> clip_denoised, const py::object& progress,
                            const std::optional<std::vector<uint64_t>>& seeds, const py::object& noise) {
    return robuq_bind::sample_call(*e_, classes, steps, cfg_scale, seed, sampler, eta, cfg_mode, clip_denoised,
                                   progress, seeds, noise);
  }

  double time_forward(int64_t N, int iters) {
    py::gil_scoped_release release;
    return e_->time_forward(N, iters);
  }

  py::dict profile_forward(int64_t N) {
    std::vector<std::pair<std::string, double>> parts;
    {
      py::gil_scoped_release release;
      parts = e_->profile_forward(N);
    }
    py::dict d;
    for (const auto& p : parts) d[py::str(p.first)] = p.second;
    return d;
  }

  double time_linear(const std::string& name, int64_t T, int iters, bool gemm_only) {
    py::gil_scoped_release release;
    return e_->time_linear(name, T, iters, gemm_only);
  }

  void set_graphs(bool on) { e_->set_graphs(on); }
  std::string graph_status() const { return e_->graph_status(); }
  std::string device_name() const { return e_->device_name(); }
  std::string default_cfg_mode() const { return e_->default_cfg_mode(); }
  bool default_clip_denoised() const { return e_->default_clip_denoised(); }

 private:
  std::unique_ptr<robuq::CudaEngine> e_;
};
#endif

}  // namespace

void bind_cuda(py::module_& m) {
  m.def(
      "cuda_compiled",
      [] {
#ifdef ROBUQ_HAVE_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build contains the CUDA backend (CMake found nvcc).");
  m.def(
      "cuda_available", [] { return unavailable_reason().empty(); },
      "Whether the CUDA backend is compiled in and a device of compute capability 8.0+ is usable.");
  m.def("cuda_unavailable_reason", &unavailable_reason,
        "Why cuda_available() is False ('' when it is True): not compiled in, no driver, no device, too old.");
  m.def(
      "cuda_build_info",
      [] {
        py::dict d;
#ifdef ROBUQ_HAVE_CUDA
        d["compiled"] = true;
        d["archs"] = std::string(ROBUQ_CUDA_ARCHS);
        d["report_dir"] = std::string(ROBUQ_CUDA_REPORT_DIR);
#else
        d["compiled"] = false;
        d["archs"] = std::string();
        d["report_dir"] = std::string();
#endif
        return d;
      },
      "cuda_build_info() -> dict: compiled (bool), archs ('80,90'), report_dir (ptxas resource reports).");

#ifdef ROBUQ_HAVE_CUDA
  py::class_<PyCudaEngine>(m, "CudaEngine",
                           "CudaEngine(path, device=0): the DiT of a .rq file on an NVIDIA GPU (use\n"
                           "robuq.Engine(path, device='cuda'), the documented wrapper).")
      .def(py::init<const std::string&, int>(), py::arg("path"), py::arg("device") = 0)
      .def("forward", &PyCudaEngine::forward, py::arg("x"), py::arg("t"), py::arg("y"))
      .def("linear", &PyCudaEngine::linear, py::arg("name"), py::arg("x"))
      .def("quantize_input", &PyCudaEngine::quantize_input, py::arg("name"), py::arg("x"),
           "quantize_input(name, x float32 [T, in]) -> (codes uint8 [T, in], scale [T], zero [T]): the fused\n"
           "Hadamard + quantize kernel of a quantized layer, alone.")
      .def("sample", &PyCudaEngine::sample, py::arg("classes"), py::arg("steps") = "250", py::arg("cfg_scale") = 4.0,
           py::arg("seed") = 0, py::arg("sampler") = "ddpm", py::arg("eta") = 0.0, py::arg("cfg_mode") = py::none(),
           py::arg("clip_denoised") = py::none(), py::arg("progress") = py::none(), py::arg("seeds") = py::none(),
           py::arg("noise") = py::none())
      .def("time_forward", &PyCudaEngine::time_forward, py::arg("N"), py::arg("iters"),
           "time_forward(N, iters) -> ms per forward (CUDA events; after a forward of batch N)")
      .def("profile_forward", &PyCudaEngine::profile_forward, py::arg("N"),
           "profile_forward(N) -> {part: ms}: one forward without graphs, an event after every launch")
      .def("time_linear", &PyCudaEngine::time_linear, py::arg("name"), py::arg("T"), py::arg("iters"),
           py::arg("gemm_only") = false,
           "time_linear(name, T, iters, gemm_only=False) -> ms per call of one layer on T rows on the device")
      .def("set_graphs", &PyCudaEngine::set_graphs, py::arg("on"), "CUDA graphs for the forward (default on)")
      .def_property_readonly("graph_status", &PyCudaEngine::graph_status)
      .def_property_readonly("device_name", &PyCudaEngine::device_name)
      .def_property_readonly("default_cfg_mode", &PyCudaEngine::default_cfg_mode)
      .def_property_readonly("default_clip_denoised", &PyCudaEngine::default_clip_denoised)
      .def_property_readonly("threads", [](const PyCudaEngine&) { return 1; });
  m.def("cuda_set_gemm_variant", &robuq::cuda_set_gemm_variant, py::arg("variant"),
        "GEMM kernel choice for measurements: 0 automatic, 1 the general kernel only, 2.. fixed fast tiles");
  m.attr("CUDA_GEMM_VARIANTS") = robuq::cuda_gemm_variants();
  m.def("cuda_set_lowrank_fused", &robuq::cuda_set_lowrank_fused, py::arg("on"),
        "fuse the low-rank down-projection into the Hadamard + quantize kernel (same bits; default off)");
#else
  m.attr("CudaEngine") = py::none();
#endif
}
