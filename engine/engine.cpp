// robuq::Engine: file -> validated spec -> bound DiT (see engine.h).
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dit.h"
#include "rq_file.h"

namespace robuq {

struct Engine::Impl {
  std::unique_ptr<RqFile> file;  // declared before the model: the model points into the file
  RqSpec spec;
  std::unique_ptr<DiT> model;
  EngineInfo info;
  int threads = 1;
  Budget budget;
  std::mutex forward_mutex;
};

namespace {
int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}
}  // namespace

Engine::Engine(const std::string& path, int threads, double max_memory) : impl_(std::make_unique<Impl>()) {
  if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0: all cores), got " + std::to_string(threads));
  if (!(max_memory >= 0) || !std::isfinite(max_memory))
    throw std::invalid_argument("max_memory must be a finite number of bytes >= 0 (0: the default)");
  Impl& m = *impl_;
  // A team of thousands of threads only fails (libgomp aborts) or multiplies the per-thread scratch.
  m.threads = std::min(threads == 0 ? default_threads() : threads, max_threads());
  m.budget = default_budget();
  if (max_memory > 0) m.budget.max_memory = max_memory;
  m.file = std::make_unique<RqFile>(path);
  m.spec = parse_rq_spec(m.file->metadata());
  check_model_budget(m.spec.model, m.threads, m.budget);  // before any tensor is touched or allocated
  check_rq_tensors(*m.file, m.spec);
  m.model = std::make_unique<DiT>(*m.file, m.spec);

  m.info = make_engine_info(path, *m.file, m.spec, m.threads);
}

EngineInfo make_engine_info(const std::string& path, const RqFile& file, const RqSpec& spec, int threads) {
  EngineInfo i;
  i.path = path;
  i.format_version = spec.format_version;
  i.source = spec.source;
  i.file_size = file.file_size();
  i.mapped = file.mapped();
  i.threads = threads;
  i.model = spec.model;
  i.attention_bits = spec.attention_bits;
  i.linears = dit_linears(spec.model);
  i.layers = spec.layers;
  for (LayerQuantSpec& l : i.layers)
    if (l.hadamard == HadamardForm::Block)
      l.hadamard_block = make_hadamard_plan(l.in, l.hadamard, l.hadamard_block).block;
  i.has_sampling = spec.has_sampling;
  i.clip_denoised = spec.clip_denoised;
  i.cfg_mode = spec.cfg_mode;
  return i;
}

Engine::~Engine() = default;

const EngineInfo& Engine::info() const { return impl_->info; }
int Engine::threads() const { return impl_->threads; }
const Budget& Engine::budget() const { return impl_->budget; }

void Engine::forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out,
                     const CancelFn& cancel) {
  check_call_budget(impl_->spec.model, N, impl_->threads, impl_->budget, "forward");
  std::lock_guard<std::mutex> lock(impl_->forward_mutex);
  struct Release {  // memory comes back after a large call, also when it fails
    DiT& m;
    int threads;
    ~Release() { m.release_if_large(threads); }
  } release{*impl_->model, impl_->threads};
  impl_->model->forward(x, N, t, y, out, impl_->threads, cancel);
}

LinearShape Engine::linear_shape(const std::string& name) const {
  const LinearLayer* l = impl_->model->find_linear(name);
  if (l == nullptr) throw std::invalid_argument("the model has no linear layer named '" + name + "'");
  return {l->name(), l->in(), l->out()};
}

void Engine::linear(const std::string& name, const float* x, int64_t T, float* out) const {
  const LinearLayer* l = impl_->model->find_linear(name);
  if (l == nullptr) throw std::invalid_argument("the model has no linear layer named '" + name + "'");
  if (T < 0) throw std::invalid_argument("T must be >= 0");
  if (T == 0) return;
  l->forward(x, T, out, impl_->threads);
}

std::string default_cfg_mode(const RqSpec& s) { return s.has_sampling ? s.cfg_mode : "dit"; }

bool default_clip_denoised(const RqSpec& s) { return s.has_sampling ? s.clip_denoised : s.model.space == "pixel"; }

std::string Engine::default_cfg_mode() const { return robuq::default_cfg_mode(impl_->spec); }

bool Engine::default_clip_denoised() const { return robuq::default_clip_denoised(impl_->spec); }

SamplePlan plan_sample(const RqSpec& spec, const int64_t* classes, int64_t n, const SampleParams& p) {
  const ModelConfig& c = spec.model;
  if (n < 1) throw std::invalid_argument("give at least one class to sample");
  for (int64_t i = 0; i < n; ++i)
    if (classes[i] < 0 || classes[i] >= c.num_classes)
      throw std::invalid_argument("class id " + std::to_string(classes[i]) + " (classes[" + std::to_string(i) +
                                  "]) is out of range 0.." + std::to_string(c.num_classes - 1));
  if (!std::isfinite(p.cfg_scale)) throw std::invalid_argument("cfg_scale must be finite");
  if (!std::isfinite(p.eta) || p.eta < 0.0) throw std::invalid_argument("eta must be finite and >= 0");
  SamplePlan plan;
  plan.sched = make_schedule(1000, p.steps);  // invalid_argument for a bad spec
  if (p.sampler == Sampler::DDIM) check_ddim_eta(plan.sched, p.eta, p.steps);
  plan.cfg = p.cfg_scale != 1.0;
  if (plan.cfg && c.label_rows() == c.num_classes)
    throw std::invalid_argument(
        "cfg_scale != 1 needs the null-class embedding, which this model does not have (trained without "
        "class dropout); use cfg_scale 1");
  const std::string mode = p.cfg_mode.empty() ? default_cfg_mode(spec) : p.cfg_mode;
  if (mode != "dit" && mode != "all")
    throw std::invalid_argument("unknown cfg_mode '" + mode + "' (expected 'dit' or 'all')");
  if (!p.seeds.empty() && static_cast<int64_t>(p.seeds.size()) != n)
    throw std::invalid_argument("give one seed per sample: " + std::to_string(n) + " classes, " +
                                std::to_string(p.seeds.size()) + " seeds");
  plan.opt.sampler = p.sampler;
  plan.opt.eta = p.eta;
  plan.opt.clip_denoised = p.clip_denoised.has_value() ? *p.clip_denoised : default_clip_denoised(spec);
  plan.opt.learn_sigma = c.learn_sigma;
  plan.opt.seed = p.seed;
  plan.opt.seeds = p.seeds;
  if (p.noise != nullptr) {
    const int64_t total = n * c.in_channels * c.input_size * c.input_size;
    for (int64_t i = 0; i < total; ++i)
      if (!std::isfinite(p.noise[i]))
        throw std::invalid_argument("noise holds a non-finite value at flat index " + std::to_string(i));
    plan.opt.x_T = p.noise;
  }
  plan.guided = mode == "dit" ? std::min<int64_t>(3, c.in_channels) : c.in_channels;
  plan.labels.assign(classes, classes + n);
  if (plan.cfg) plan.labels.resize(static_cast<size_t>(2 * n), c.num_classes);  // the null class
  return plan;
}

void Engine::sample(const int64_t* classes, int64_t n, const SampleParams& p, float* out, const ProgressFn& progress,
                    const CancelFn& cancel) {
  Impl& m = *impl_;
  const ModelConfig& c = m.spec.model;
  const SamplePlan plan = plan_sample(m.spec, classes, n, p);
  const bool cfg = plan.cfg;
  check_call_budget(c, cfg ? 2 * n : n, m.threads, m.budget, cfg ? "sampling with guidance" : "sampling");
  const int64_t C = c.in_channels, HW = c.input_size * c.input_size, per = C * HW;
  const int64_t cout = c.out_channels(), B = cfg ? 2 * n : n;
  const int64_t guided = plan.guided;
  const float scale = static_cast<float>(p.cfg_scale);
  auto sz = [](int64_t v) { return static_cast<size_t>(v); };
  // Buffers of the model calls, allocated once for the whole loop (the DiT's own workspace is kept
  // between calls of the same batch size).
  const std::vector<int64_t>& labels = plan.labels;
  std::vector<int64_t> tb;
  std::vector<float> xb, ob;
  if (cfg) {
    tb.resize(sz(B));
    xb.resize(sz(B * per));
    ob.resize(sz(B * cout * HW));
  }

  const ModelFn model = [&](const float* x, const int64_t* t, float* mo) {
    std::lock_guard<std::mutex> lock(m.forward_mutex);
    if (!cfg) {
      m.model->forward(x, n, t, labels.data(), mo, m.threads, cancel);
      return;
    }
    std::memcpy(xb.data(), x, sizeof(float) * sz(n * per));
    std::memcpy(xb.data() + n * per, x, sizeof(float) * sz(n * per));
    std::copy(t, t + n, tb.begin());
    std::copy(t, t + n, tb.begin() + n);
    m.model->forward(xb.data(), B, tb.data(), labels.data(), ob.data(), m.threads, cancel);
    // forward_with_cfg: guided channels uncond + s * (cond - uncond); the rest: the conditional half
    for (int64_t i = 0; i < n; ++i) {
      const float* cond = ob.data() + i * cout * HW;
      const float* uncond = ob.data() + (n + i) * cout * HW;
      float* dst = mo + i * cout * HW;
      const int64_t g = guided * HW;
      for (int64_t j = 0; j < g; ++j) dst[j] = uncond[j] + scale * (cond[j] - uncond[j]);
      std::memcpy(dst + g, cond + g, sizeof(float) * sz(cout * HW - g));
    }
  };
  struct Release {  // the workspace is kept across the steps, released after a large sampling
    Impl& m;
    ~Release() {
      std::lock_guard<std::mutex> lock(m.forward_mutex);
      m.model->release_if_large(m.threads);
    }
  } release{m};
  sample_loop(plan.sched, model, n, C, HW, plan.opt, out, progress);
}

}  // namespace robuq
