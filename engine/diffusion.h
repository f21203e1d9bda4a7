// Gaussian diffusion for sampling, as in ADM / improved DDPM / DiT (docs/training.md has the Python
// reference, python/robuq/diffusion.py, whose formula order this follows):
//   1000 training steps, linear betas 1e-4 .. 0.02 (float64, numpy.linspace's arithmetic),
//   respacing to K steps by ADM's space_timesteps rule, betas recomputed from alphas_cumprod at the
//   kept steps, the model called with the ORIGINAL timestep values;
//   DDPM with learned-range variance, DDIM (eta) ignoring it; schedule values are float64 arrays cast
//   to float32 per use, the per-element arithmetic is float32, as torch does it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sampler_step.h"

namespace robuq {

// The timesteps kept by ADM's space_timesteps(num_timesteps, spec), ascending.
// spec: "250" (one section), "10,10,5" (sections), or "ddimN" (an even stride giving N steps).
// Throws std::invalid_argument on a spec that cannot be satisfied.
std::vector<int64_t> space_timesteps(int64_t num_timesteps, const std::string& spec);

struct SpacedSchedule {
  std::vector<int64_t> timestep_map;  // spaced index -> original timestep
  std::vector<double> betas, alphas_cumprod, alphas_cumprod_prev;
  std::vector<double> sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod;
  std::vector<double> posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2;
  std::vector<double> log_betas, fixed_large_log_variance;
  int64_t size() const { return static_cast<int64_t>(betas.size()); }
};

// Linear-beta schedule of `num_timesteps` steps respaced by `spec`.
SpacedSchedule make_schedule(int64_t num_timesteps, const std::string& spec);

enum class Sampler { DDPM, DDIM };

struct SampleOptions {
  Sampler sampler = Sampler::DDPM;
  double eta = 0.0;            // DDIM only
  bool clip_denoised = false;  // clamp the predicted x0 to [-1, 1]
  bool learn_sigma = true;     // model output has 2C channels (eps, variance) instead of C
  uint64_t seed = 0;
  // Empty: one noise stream for the whole batch, gaussian_noise(seed, key) of size N * C * H * W. Otherwise
  // N seeds, one stream per sample: sample n draws gaussian_noise(seeds[n], key) of size C * H * W, so its
  // result does not depend on the batch it comes in (equal to sampling it alone with seed = seeds[n]).
  std::vector<uint64_t> seeds;
  // Null: x_T is drawn from noise stream 0 (as above). Otherwise the starting noise itself, N * C * H * W
  // floats (NCHW; DiT's sample.py `z`), used as given; the steps' noise still comes from the streams.
  const float* x_T = nullptr;
  // Refuse non-finite values after every step (NonFiniteError). Off only for tests of the loop's arithmetic
  // with stand-in models that diverge.
  bool check_finite = true;
};

// The per-element scalars of spaced step t (engine/sampler_step.h applies them), as sample_loop uses them.
step::Scalars step_scalars(const SpacedSchedule& sched, int64_t t, const SampleOptions& opt);

// DDIM's step variance sigma^2 = eta^2 (1 - a_prev) / (1 - a) (1 - a / a_prev) must leave 1 - a_prev - sigma^2
// >= 0 (the direction term's square root is real): always for eta in [0, 1], and for a schedule-dependent
// margin above 1. Throws std::invalid_argument naming the first step where it fails and the largest eta the
// schedule allows.
void check_ddim_eta(const SpacedSchedule& sched, double eta, const std::string& steps);

// model(x [N, C, H, W], t [N] original timesteps, out [N, C_out, H, W]) -> the guided model output.
using ModelFn = std::function<void(const float* x, const int64_t* t, float* out)>;
// Called after each step with (steps done, total steps); return false to stop (raises).
using ProgressFn = std::function<bool(int64_t, int64_t)>;
// Asked between the blocks of a forward; return false to stop (raises std::runtime_error "interrupted").
using CancelFn = std::function<bool()>;

// Runs the reverse process from noise gaussian_noise(seed, 0) of shape [N, C, H, W] (size per_sample
// * N), adding gaussian_noise(seed, 1 + i) at step i (i = 0 at the largest t); with opt.seeds, each sample
// from its own stream instead; opt.x_T, when set, replaces the starting noise. Writes x0 to out. Throws
// std::invalid_argument if opt.seeds is neither empty nor N long, NonFiniteError (errors.h) as soon as a step leaves a
// non-finite value in x (naming the step; nothing is written to out).
void sample_loop(const SpacedSchedule& sched, const ModelFn& model, int64_t N, int64_t C, int64_t HW,
                 const SampleOptions& opt, float* out, const ProgressFn& progress = nullptr);

}  // namespace robuq
