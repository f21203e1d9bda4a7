// robuq._C bindings of the sampler pieces (respacing, schedule, shared noise, the reverse-process loop
// driven by a Python model callback). Engine.sample uses the same loop with the C++ DiT as the model.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffusion.h"
#include "rng.h"

namespace py = pybind11;

namespace {

robuq::Sampler parse_sampler(const std::string& name) {
  if (name == "ddpm") return robuq::Sampler::DDPM;
  if (name == "ddim") return robuq::Sampler::DDIM;
  throw std::invalid_argument("unknown sampler '" + name + "' (expected 'ddpm' or 'ddim')");
}

py::dict schedule_dict(int64_t num_timesteps, const std::string& spec) {
  const robuq::SpacedSchedule s = robuq::make_schedule(num_timesteps, spec);
  py::dict d;
  d["timestep_map"] = s.timestep_map;
  d["betas"] = s.betas;
  d["alphas_cumprod"] = s.alphas_cumprod;
  d["alphas_cumprod_prev"] = s.alphas_cumprod_prev;
  d["sqrt_recip_alphas_cumprod"] = s.sqrt_recip_alphas_cumprod;
  d["sqrt_recipm1_alphas_cumprod"] = s.sqrt_recipm1_alphas_cumprod;
  d["posterior_log_variance_clipped"] = s.posterior_log_variance_clipped;
  d["posterior_mean_coef1"] = s.posterior_mean_coef1;
  d["posterior_mean_coef2"] = s.posterior_mean_coef2;
  d["log_betas"] = s.log_betas;
  d["fixed_large_log_variance"] = s.fixed_large_log_variance;
  return d;
}

py::array_t<float> py_gaussian(uint64_t seed, uint64_t key, const std::vector<py::ssize_t>& shape) {
  py::array_t<float> out(shape);
  robuq::gaussian_noise(seed, key, out.mutable_data(), out.size());
  return out;
}

// model(x float32 [N, C, H, W], t int64 [N]) -> float32 [N, C_out, H, W]
py::array_t<float> py_sample_loop(const py::function& model, int64_t N, int64_t C, int64_t H, int64_t W,
                                  const std::string& steps, const std::string& sampler, double eta, bool clip_denoised,
                                  bool learn_sigma, uint64_t seed, const std::optional<std::vector<uint64_t>>& seeds,
                                  bool check_finite) {
  if (N < 1 || C < 1 || H < 1 || W < 1) throw std::invalid_argument("N, C, H, W must be positive");
  robuq::SampleOptions opt;
  opt.sampler = parse_sampler(sampler);
  opt.eta = eta;
  opt.clip_denoised = clip_denoised;
  opt.learn_sigma = learn_sigma;
  opt.seed = seed;
  if (seeds) opt.seeds = *seeds;
  opt.check_finite = check_finite;
  const int64_t cout = learn_sigma ? 2 * C : C;
  const robuq::SpacedSchedule sched = robuq::make_schedule(1000, steps);
  robuq::ModelFn fn = [&](const float* x, const int64_t* t, float* out) {
    py::array_t<float> xa({N, C, H, W});
    std::memcpy(xa.mutable_data(), x, sizeof(float) * N * C * H * W);
    py::array_t<int64_t> ta(N);
    std::memcpy(ta.mutable_data(), t, sizeof(int64_t) * N);
    auto res = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(model(xa, ta));
    if (!res || res.size() != N * cout * H * W)
      throw std::invalid_argument("model callback must return float32 [N, " + std::to_string(cout) + ", H, W]");
    std::memcpy(out, res.data(), sizeof(float) * N * cout * H * W);
  };
  py::array_t<float> out({N, C, H, W});
  robuq::sample_loop(sched, fn, N, C, H * W, opt, out.mutable_data());
  return out;
}

}  // namespace

void bind_sampler(py::module_& m) {
  m.def("space_timesteps", &robuq::space_timesteps, py::arg("num_timesteps"), py::arg("spec"),
        "Timesteps kept by respacing (ADM's space_timesteps): spec '250', '10,10,5' or 'ddim25'. -> list[int]");
  m.def("diffusion_schedule", &schedule_dict, py::arg("num_timesteps"), py::arg("spec"),
        "The respaced linear-beta schedule as a dict of float64 lists (for tests).");
  m.def("gaussian_noise", &py_gaussian, py::arg("seed"), py::arg("key"), py::arg("shape"),
        "The shared seeded noise (robuq.rng.gaussian): float32 array of `shape` for stream (seed, key).");
  m.def("sample_loop", &py_sample_loop, py::arg("model"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("steps") = "250", py::arg("sampler") = "ddpm", py::arg("eta") = 0.0, py::arg("clip_denoised") = false,
        py::arg("learn_sigma") = true, py::arg("seed") = 0, py::arg("seeds") = py::none(),
        py::arg("check_finite") = true,
        "The C++ reverse-process loop with a Python model callback model(x f32 [N,C,H,W], t i64 [N]) -> "
        "f32 [N, C_out, H, W]; returns x0 float32 [N, C, H, W]. For testing the sampler arithmetic.\n"
        "check_finite=False lets a diverging stand-in model run on (NonFiniteError otherwise).");
}
