// robuq::Engine: file -> validated spec -> bound DiT (see engine.h).
#include "engine.h"

#include <algorithm>
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

Engine::Engine(const std::string& path, int threads) : impl_(std::make_unique<Impl>()) {
  if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0: all cores), got " + std::to_string(threads));
  Impl& m = *impl_;
  m.threads = threads == 0 ? default_threads() : threads;
  m.file = std::make_unique<RqFile>(path);
  m.spec = parse_rq_spec(m.file->metadata());
  check_rq_tensors(*m.file, m.spec);
  m.model = std::make_unique<DiT>(*m.file, m.spec);

  EngineInfo& i = m.info;
  i.path = path;
  i.format_version = m.spec.format_version;
  i.source = m.spec.source;
  i.file_size = m.file->file_size();
  i.mapped = m.file->mapped();
  i.threads = m.threads;
  i.model = m.spec.model;
  i.attention_bits = m.spec.attention_bits;
  i.linears = dit_linears(m.spec.model);
  i.layers = m.spec.layers;
  for (LayerQuantSpec& l : i.layers)
    if (l.hadamard == HadamardForm::Block)
      l.hadamard_block = make_hadamard_plan(l.in, l.hadamard, l.hadamard_block).block;
  i.has_sampling = m.spec.has_sampling;
  i.clip_denoised = m.spec.clip_denoised;
  i.cfg_mode = m.spec.cfg_mode;
}

Engine::~Engine() = default;

const EngineInfo& Engine::info() const { return impl_->info; }
int Engine::threads() const { return impl_->threads; }

void Engine::forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out) {
  std::lock_guard<std::mutex> lock(impl_->forward_mutex);
  impl_->model->forward(x, N, t, y, out, impl_->threads);
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

}  // namespace robuq
