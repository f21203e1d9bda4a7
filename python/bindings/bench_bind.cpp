// robuq._C bindings for the benchmark (robuq-bench): the machine's instruction-throughput ceilings.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "robuq/ceilings.h"
#include "robuq/cpu.h"

namespace py = pybind11;

void bind_bench(py::module_& m) {
  m.def("ceiling_kinds", &robuq::ceiling_kinds, "ceiling_kinds() -> list of the measure_ceiling kinds");
  m.def(
      "measure_ceiling",
      [](const std::string& kind, int threads, double seconds) {
        if (!robuq::tier_available(robuq::Tier::Avx2))
          throw std::invalid_argument("measure_ceiling needs an AVX2 CPU and build");
        py::gil_scoped_release release;
        return robuq::measure_ceiling(kind, threads, seconds);
      },
      py::arg("kind"), py::arg("threads") = 1, py::arg("seconds") = 0.2,
      "measure_ceiling(kind, threads=1, seconds=0.2) -> float: operations per second summed over `threads`\n"
      "threads of a register-resident loop: 'fma_f32' fp32 multiply-adds (vfmadd231ps), 'maddubs' u8 x s8\n"
      "multiply-adds (vpmaddubsw + vpaddw), 'pshufb' 16-entry table lookups (vpshufb + vpaddb, index from\n"
      "L1).");
}
