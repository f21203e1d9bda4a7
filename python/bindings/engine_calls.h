// Engine.forward / linear / sample for the bindings of both engines (robuq::Engine, robuq::CudaEngine): strict
// numpy inputs checked against the model, fresh outputs, the GIL released while the engine computes; for
// sample the progress callback and Ctrl-C handled between steps.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "array_util.h"
#include "engine.h"

namespace robuq_bind {

// Asked between the blocks of a forward (robuq::Engine only): takes the GIL and checks for a pending signal, so
// Ctrl-C stops a long forward after the current block. The KeyboardInterrupt is kept in `raised`.
inline robuq::CancelFn signal_check(std::exception_ptr& raised) {
  return [&raised]() -> bool {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() == 0) return true;
    try {
      throw py::error_already_set();
    } catch (...) {
      raised = std::current_exception();
    }
    return false;
  };
}

// x float32 [N, C, S, S], t int64 [N], y int64 [N] -> float32 [N, out_channels, S, S].
template <class EngineT>
py::array_t<float> forward_call(EngineT& engine, const py::object& x_obj, const py::object& t_obj,
                                const py::object& y_obj) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 4, "[N, C, H, W]");
  CArray<int64_t> t = input_array<int64_t>(t_obj, "t", "int64", 1, "[N]");
  CArray<int64_t> y = input_array<int64_t>(y_obj, "y", "int64", 1, "[N]");
  const auto& c = engine.info().model;
  const int64_t N = x.shape(0), S = c.input_size;
  if (x.shape(1) != c.in_channels || x.shape(2) != S || x.shape(3) != S)
    throw std::invalid_argument("x must be [N, " + std::to_string(c.in_channels) + ", " + std::to_string(S) + ", " +
                                std::to_string(S) + "], got [" + std::to_string(x.shape(0)) + ", " +
                                std::to_string(x.shape(1)) + ", " + std::to_string(x.shape(2)) + ", " +
                                std::to_string(x.shape(3)) + "]");
  if (t.shape(0) != N || y.shape(0) != N)
    throw std::invalid_argument("t and y must have N = " + std::to_string(N) + " entries");
  auto out = new_array<float>({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(c.out_channels()),
                               static_cast<py::ssize_t>(S), static_cast<py::ssize_t>(S)});
  const float* xs = x.data();
  const int64_t* ts = t.data();
  const int64_t* ys = y.data();
  float* os = out.mutable_data();
  std::exception_ptr raised;  // KeyboardInterrupt seen between blocks
  {
    py::gil_scoped_release release;
    if constexpr (std::is_same_v<EngineT, robuq::Engine>) {
      try {
        engine.forward(xs, N, ts, ys, os, signal_check(raised));
      } catch (const std::runtime_error&) {
        if (!raised) throw;
      }
    } else {
      engine.forward(xs, N, ts, ys, os);
    }
  }
  if (raised) std::rethrow_exception(raised);
  return out;
}

// One linear layer `name` of shape s: x float32 [tokens, s.in] -> float32 [tokens, s.out].
template <class EngineT>
py::array_t<float> linear_call(EngineT& engine, const robuq::LinearShape& s, const std::string& name,
                               const py::object& x_obj) {
  CArray<float> x = input_array<float>(x_obj, "x", "float32", 2, "[tokens, in_features]");
  if (x.shape(1) != s.in)
    throw std::invalid_argument("x has " + std::to_string(x.shape(1)) + " columns; layer '" + name + "' takes " +
                                std::to_string(s.in));
  const int64_t T = x.shape(0);
  auto out = new_array<float>({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(s.out)});
  const float* xs = x.data();
  float* os = out.mutable_data();
  {
    py::gil_scoped_release release;
    engine.linear(name, xs, T, os);
  }
  return out;
}

// classes int64 [n] -> x0 float32 [n, C, S, S]. progress: None or callable(done, total), called with the
// GIL after each step; the GIL is released otherwise. Ctrl-C (a pending signal) or an exception raised by
// the callback stops the loop after the current step and is re-raised here.
template <class EngineT>
py::array_t<float> sample_call(EngineT& engine, const py::object& classes_obj, const std::string& steps,
                               double cfg_scale, uint64_t seed, const std::string& sampler, double eta,
                               const std::optional<std::string>& cfg_mode, std::optional<bool> clip_denoised,
                               const py::object& progress, const std::optional<std::vector<uint64_t>>& seeds,
                               const py::object& noise_obj) {
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
  std::optional<CArray<float>> noise;  // the starting noise x_T, [n, C, S, S], kept alive through the call
  if (!noise_obj.is_none()) {
    noise.emplace(input_array<float>(noise_obj, "noise", "float32", 4, "[n, C, S, S]"));
    const std::vector<int64_t> want = {n, c.in_channels, S, S};
    for (int d = 0; d < 4; ++d)
      if (noise->shape(d) != want[static_cast<size_t>(d)])
        throw std::invalid_argument("noise must be float32 [n, C, S, S] = [" + std::to_string(n) + ", " +
                                    std::to_string(c.in_channels) + ", " + std::to_string(S) + ", " +
                                    std::to_string(S) + "], got [" + std::to_string(noise->shape(0)) + ", " +
                                    std::to_string(noise->shape(1)) + ", " + std::to_string(noise->shape(2)) + ", " +
                                    std::to_string(noise->shape(3)) + "]");
    p.noise = noise->data();
  }
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
      if constexpr (std::is_same_v<EngineT, robuq::Engine>)
        engine.sample(cs, n, p, os, pf, signal_check(raised));
      else
        engine.sample(cs, n, p, os, pf);
    } catch (const std::runtime_error&) {
      if (!raised) throw;  // not the callback's stop: a real error
    }
  }
  if (raised) std::rethrow_exception(raised);
  return out;
}

}  // namespace robuq_bind
