// robuq::Engine: a standalone DiT runtime over a .rq file (docs/rq-format.md). No torch at run time.
//
//   robuq::Engine eng("model.rq");            // map, validate, bind weights (FormatError / IoError)
//   eng.forward(x, N, t, y, out);             // x [N, C, S, S] float32 -> out [N, out_channels, S, S]
//   eng.linear("blocks.0.attn.qkv", x, T, y); // one linear by its state-dict module name
//   eng.sample(classes, n, params, x0);        // class-conditional samples (DDPM / DDIM, CFG) -> x0
//
// Parameter and layer names are the PyTorch state-dict names. forward() is serialised internally (the
// activation workspace is shared and allocated once per batch size); linear() may run concurrently.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "budget.h"
#include "diffusion.h"
#include "errors.h"
#include "rq_spec.h"

namespace robuq {

struct EngineInfo {
  std::string path;
  std::string format_version;
  std::string source;
  uint64_t file_size = 0;
  bool mapped = false;  // false: the file was read into memory (mmap failed)
  int threads = 1;
  ModelConfig model;
  int attention_bits = 0;            // 0: float attention
  std::vector<LinearShape> linears;  // every linear, in forward order
  // The quantized layers, as in the file except hadamard_block: for "block" the resolved block size.
  std::vector<LayerQuantSpec> layers;
  bool has_sampling = false;
  bool clip_denoised = false;
  std::string cfg_mode;
};

// Sampler settings of Engine::sample (python/robuq/diffusion.py: sample_classes is the reference).
struct SampleParams {
  std::string steps = "250";    // respacing: "250", "10,10,5" or "ddim25" (docs/training.md)
  double cfg_scale = 4.0;       // != 1: classifier-free guidance (needs the null class)
  uint64_t seed = 0;            // noise streams gaussian_noise(seed, key) (robuq.rng)
  std::vector<uint64_t> seeds;  // non-empty: one seed per sample instead (SampleOptions::seeds)
  // Null, or the starting noise x_T, float32 [n, C, S, S] (SampleOptions::x_T); must stay valid during sample().
  // Non-finite values are refused.
  const float* noise = nullptr;
  Sampler sampler = Sampler::DDPM;
  double eta = 0.0;      // DDIM only; >= 0
  std::string cfg_mode;  // "dit" | "all"; empty: the file's sampling.cfg_mode ("dit" without one)
  // nullopt: the file's sampling.clip_denoised (without one: true for pixel models, false for latent)
  std::optional<bool> clip_denoised;
};

// What every engine's sample() (Engine, CudaEngine) derives from the file and the settings, after the same
// checks in the same order: classes in range, finite cfg_scale and eta >= 0, a null class for guidance, a
// known cfg_mode, one seed per sample (if any), a satisfiable respacing. std::invalid_argument otherwise,
// before any model call.
struct SamplePlan {
  SampleOptions opt;            // the sampler's options, the file's defaults filled in
  SpacedSchedule sched;         // 1000 training steps respaced by params.steps
  bool cfg = false;             // cfg_scale != 1: each model call runs [x; x] with labels [classes; null]
  int64_t guided = 0;           // guided eps channels: min(3, C) for "dit", C for "all"
  std::vector<int64_t> labels;  // [classes; null] with cfg, else classes
};
class RqFile;
// EngineInfo of a validated file (both engines): block Hadamard sizes resolved as the kernels use them.
EngineInfo make_engine_info(const std::string& path, const RqFile& file, const RqSpec& spec, int threads);

SamplePlan plan_sample(const RqSpec& spec, const int64_t* classes, int64_t n, const SampleParams& params);
// The file's sampling defaults (without a "sampling" entry: "dit", and clip for pixel models only).
std::string default_cfg_mode(const RqSpec& spec);
bool default_clip_denoised(const RqSpec& spec);

class Engine {
 public:
  // threads: worker threads for every call (0: all available cores, i.e. omp_get_max_threads()), clamped to
  // max_threads(). max_memory: bytes one call may use for activations (0: default_budget(), budget.h).
  // Throws IoError (cannot open / read), FormatError (invalid file, or a model whose single-sample forward is
  // beyond the budget), std::invalid_argument (threads < 0, max_memory < 0).
  explicit Engine(const std::string& path, int threads = 0, double max_memory = 0);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineInfo& info() const;
  int threads() const;

  // x [N, in_channels, input_size, input_size] float32, t [N] timesteps, y [N] class ids in
  // [0, label_rows) (num_classes is the null class when the model has one) -> out [N, out_channels,
  // input_size, input_size]. Throws std::invalid_argument on a bad label or a batch beyond the budget's
  // max_memory. `cancel` (optional) is asked between blocks; returning false stops the forward
  // (std::runtime_error "interrupted").
  void forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out,
               const CancelFn& cancel = nullptr);

  // One linear layer by module name: x [T, in] -> out [T, out]. Throws std::invalid_argument for an
  // unknown name.
  void linear(const std::string& name, const float* x, int64_t T, float* out) const;
  LinearShape linear_shape(const std::string& name) const;

  // Class-conditional samples: classes [n] (ids 0..num_classes-1) -> out [n, in_channels, input_size,
  // input_size] float32, the final x0 of the reverse process (sample_loop with the DiT as the model).
  // With cfg_scale != 1 each model call runs the batch [x; x] with labels [classes; null] and guides the
  // first min(3, C) ("dit") or all C ("all") eps channels: eps = uncond + s * (cond - uncond) in float32;
  // the other channels keep the conditional values. x_T and the noise are drawn for the n samples only.
  // The activation workspace is allocated once and reused by every step. `progress(done, total)` is
  // called after each step; returning false stops the loop (std::runtime_error "sampling interrupted");
  // `cancel` is asked between the blocks of every forward as well.
  // Throws std::invalid_argument for bad classes or settings or a batch beyond the budget (before any model
  // call), NonFiniteError when the samples stop being finite (naming the step).
  void sample(const int64_t* classes, int64_t n, const SampleParams& params, float* out,
              const ProgressFn& progress = nullptr, const CancelFn& cancel = nullptr);
  const Budget& budget() const;
  // The cfg_mode / clip_denoised that sample() uses for unset params (the file's sampling defaults).
  std::string default_cfg_mode() const;
  bool default_clip_denoised() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace robuq
