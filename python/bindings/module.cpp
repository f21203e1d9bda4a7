// robuq._C: the pybind11 face of the torch-free kernels and engine.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "robuq/cpu.h"

namespace py = pybind11;

void bind_kernels(py::module_& m);  // kernels_bind.cpp
void bind_engine(py::module_& m);   // engine_bind.cpp
void bind_sampler(py::module_& m);  // sampler_bind.cpp
void bind_bench(py::module_& m);    // bench_bind.cpp
void bind_cuda(py::module_& m);     // cuda_bind.cpp
#ifndef ROBUQ_NO_TEST_HOOKS
void bind_cuda_host(py::module_& m);  // cuda_host_bind.cpp (test-only)
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "RobuQ C++ kernels and engine (torch-free)";
  m.def(
      "cpu_features",
      [] {
        const auto& f = robuq::cpu_features();
        py::dict d;
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512vbmi"] = f.avx512vbmi;
        d["avx512vnni"] = f.avx512vnni;
        d["avx512_bf16"] = f.avx512bf16;
        d["amx_int8"] = f.amx_int8;
        return d;
      },
      "CPU features the run-time dispatch sees: dict of bool (avx2, fma, f16c, avx512f, avx512bw, avx512vl,\n"
      "avx512vbmi, avx512vnni, avx512_bf16, amx_int8: AMX tiles usable by this process).");
  m.def(
      "active_tier", [] { return std::string(robuq::tier_name(robuq::active_tier())); },
      "Name of the kernel tier in use: 'reference', 'generic', 'avx2', 'avx512' or 'amx'.");
  m.def(
      "set_tier", [](const std::string& name) { robuq::set_tier(robuq::parse_tier(name)); }, py::arg("name"),
      "Force a kernel tier for this process ('reference', 'generic', 'avx2', 'avx512', 'amx').");
  m.def(
      "tier_available", [](const std::string& name) { return robuq::tier_available(robuq::parse_tier(name)); },
      py::arg("name"), "Whether this CPU and build can run the named tier.");
  bind_kernels(m);
  bind_engine(m);
  bind_sampler(m);
  bind_bench(m);
  bind_cuda(m);
#ifndef ROBUQ_NO_TEST_HOOKS
  bind_cuda_host(m);
#endif
}
