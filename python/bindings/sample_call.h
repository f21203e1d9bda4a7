// Engine.sample for the bindings of both engines (robuq::Engine, robuq::CudaEngine): Python arguments ->
// SampleParams, the GIL released while sampling, the progress callback and Ctrl-C handled between steps.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "array_util.h"
#include "engine.h"

namespace robuq_bind {

// classes int64 [n] -> x0 float32 [n, C, S, S]. progress: None or callable(done, total), called with the
// GIL after each step; the GIL is released otherwise. Ctrl-C (a pending signal) or an exception raised by
// the callback stops the loop after the current step and is re-raised here.
template <class EngineT>
py::array_t<float> sample_call(EngineT& engine, const py::object& classes_obj, const std::string& steps,
                               double cfg_scale, uint64_t seed, const std::string& sampler, double eta,
                               const std::optional<std::string>& cfg_mode, std::optional<bool> clip_denoised,
                               const py::object& progress, const std::optional<std::vector<uint64_t>>& seeds) {
  CArray<int64_t> classes = input_array<int64_t>(classes_obj, "classes", "int64", 1, "[n]");
  robuq::SampleParams p;
  p.steps = steps;
  p.cfg_scale = cfg_scale;
  p.seed = seed;
  if (seeds) p.seeds = *seeds;
  if (sampler == "ddpm")
    p.sampler = robuq::Sampler::DDPM;
  else if (sampler == "ddim")
    p.sampler = robuq::Sampler::DDIM;
  else
    throw std::invalid_argument("unknown sampler '" + sampler + "' (expected 'ddpm' or 'ddim')");
  p.eta = eta;
  p.cfg_mode = cfg_mode.value_or("");
  p.clip_denoised = clip_denoised;
  const auto& c = engine.info().model;
  const int64_t n = classes.shape(0), S = c.input_size;
  auto out = new_array<float>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(c.in_channels),
                               static_cast<py::ssize_t>(S), static_cast<py::ssize_t>(S)});
  std::exception_ptr raised;  // what the Python side raised in the progress callback
  const robuq::ProgressFn pf = [&](int64_t done, int64_t total) -> bool {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // KeyboardInterrupt
      if (!progress.is_none()) progress(done, total);
      return true;
    } catch (...) {
      raised = std::current_exception();
      return false;
    }
  };
  const int64_t* cs = classes.data();
  float* os = out.mutable_data();
  {
    py::gil_scoped_release release;
    try {
      engine.sample(cs, n, p, os, pf);
    } catch (const std::runtime_error&) {
      if (!raised) throw;  // not the callback's stop: a real error
    }
  }
  if (raised) std::rethrow_exception(raised);
  return out;
}

}  // namespace robuq_bind
