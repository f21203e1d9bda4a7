// The C API (robuq.h) over robuq::Engine. Every entry point catches everything: a C++ exception becomes a
// status code and this thread's last-error message, never an unwinding across the C boundary.
#include "robuq.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.h"
#include "errors.h"

struct robuq_engine {
  robuq::Engine engine;
  robuq_engine(const std::string& path, int threads) : engine(path, threads) {}
};

namespace {

thread_local std::string g_last_error;
thread_local robuq_status g_last_status = ROBUQ_OK;

// Raised by the checks below: the status and message to report.
struct Failure {
  robuq_status status;
  std::string message;
};

[[noreturn]] void fail_argument(const std::string& message) { throw Failure{ROBUQ_ERROR_ARGUMENT, message}; }

// Records "fn: what" as this thread's last error; never throws (without memory for the message, a fixed
// one stands in).
thread_local bool g_error_truncated = false;
int set_error(robuq_status status, const char* fn, const char* what) noexcept {
  g_last_status = status;
  try {
    g_last_error.assign(fn);
    g_last_error.append(": ");
    g_last_error.append(what);
    g_error_truncated = false;
  } catch (...) {
    g_error_truncated = true;
  }
  return status;
}

// Runs f() and maps every exception to a status and message; f's own return value on success.
template <class F>
int guarded(const char* fn, F&& f) noexcept {
  try {
    try {
      return f();
    } catch (const Failure& e) {
      return set_error(e.status, fn, e.message.c_str());
    } catch (const robuq::IoError& e) {
      return set_error(ROBUQ_ERROR_IO, fn, e.what());
    } catch (const robuq::FormatError& e) {
      return set_error(ROBUQ_ERROR_FORMAT, fn, (std::string("invalid .rq file: ") + e.what()).c_str());
    } catch (const std::invalid_argument& e) {
      return set_error(ROBUQ_ERROR_ARGUMENT, fn, e.what());
    } catch (const std::length_error& e) {
      return set_error(ROBUQ_ERROR_MEMORY, fn, (std::string("out of memory (") + e.what() + ")").c_str());
    } catch (const std::bad_alloc&) {
      return set_error(ROBUQ_ERROR_MEMORY, fn, "out of memory");
    } catch (const std::exception& e) {
      return set_error(ROBUQ_ERROR_INTERNAL, fn, e.what());
    } catch (...) {
      return set_error(ROBUQ_ERROR_INTERNAL, fn, "unknown error");
    }
  } catch (...) {  // a handler itself ran out of memory building its message
    return set_error(ROBUQ_ERROR_MEMORY, fn, "out of memory");
  }
}

const robuq::ModelConfig& config(const robuq_engine* e) { return e->engine.info().model; }

void check_engine(const robuq_engine* e) {
  if (e == nullptr) fail_argument("engine is NULL");
}

void check_batch(const void* classes, int n, const void* out) {
  if (n <= 0) fail_argument("n must be >= 1 (the number of samples), got " + std::to_string(n));
  if (classes == nullptr) fail_argument("classes is NULL");
  if (out == nullptr) fail_argument("the output buffer is NULL");
}

// n class ids (checked against the model: the engine checks again) as the engine's int64.
std::vector<int64_t> class_ids(const robuq_engine* e, const int32_t* classes, int n) {
  const int64_t k = config(e).num_classes;
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (classes[i] < 0 || classes[i] >= k)
      fail_argument("class id " + std::to_string(classes[i]) + " (classes[" + std::to_string(i) +
                    "]) is out of range 0.." + std::to_string(k - 1));
    ids[static_cast<size_t>(i)] = classes[i];
  }
  return ids;
}

// Engine::sample with the C options; out: float32 [n, C, S, S].
void run_sample(robuq_engine* e, const int32_t* classes, int n, const robuq_sample_options& o, float* out) {
  const std::vector<int64_t> ids = class_ids(e, classes, n);
  robuq::SampleParams p;
  if (o.steps == nullptr) fail_argument("options->steps is NULL (use \"250\", \"10,10,5\" or \"ddim25\")");
  p.steps = o.steps;
  if (p.steps.empty()) fail_argument("options->steps is empty (use \"250\", \"10,10,5\" or \"ddim25\")");
  if (!std::isfinite(o.cfg_scale)) fail_argument("cfg_scale must be a finite number");
  p.cfg_scale = o.cfg_scale;
  p.seed = o.seed;
  if (o.seeds != nullptr) p.seeds.assign(o.seeds, o.seeds + n);
  if (o.sampler == ROBUQ_SAMPLER_DDPM)
    p.sampler = robuq::Sampler::DDPM;
  else if (o.sampler == ROBUQ_SAMPLER_DDIM)
    p.sampler = robuq::Sampler::DDIM;
  else
    fail_argument("unknown sampler " + std::to_string(o.sampler) + " (use ROBUQ_SAMPLER_DDPM or ROBUQ_SAMPLER_DDIM)");
  if (!std::isfinite(o.eta) || o.eta < 0.0) fail_argument("eta must be a finite number >= 0");
  p.eta = o.eta;
  if (o.cfg_mode == ROBUQ_CFG_MODE_DIT)
    p.cfg_mode = "dit";
  else if (o.cfg_mode == ROBUQ_CFG_MODE_ALL)
    p.cfg_mode = "all";
  else if (o.cfg_mode != ROBUQ_CFG_MODE_FILE)
    fail_argument("unknown cfg_mode " + std::to_string(o.cfg_mode) +
                  " (use ROBUQ_CFG_MODE_FILE, ROBUQ_CFG_MODE_DIT or ROBUQ_CFG_MODE_ALL)");
  if (o.clip_denoised == 0 || o.clip_denoised == 1)
    p.clip_denoised = o.clip_denoised == 1;
  else if (o.clip_denoised != -1)
    fail_argument("clip_denoised must be -1 (the file's), 0 or 1, got " + std::to_string(o.clip_denoised));
  if (p.cfg_scale != 1.0 && config(e).label_rows() == config(e).num_classes)
    fail_argument("cfg_scale " + std::to_string(p.cfg_scale) +
                  ": this model has no null class (trained without class dropout), so it cannot use "
                  "classifier-free guidance; use cfg_scale 1");
  bool stopped = false;
  robuq::ProgressFn progress;
  if (o.progress != nullptr) {
    progress = [&](int64_t done, int64_t total) -> bool {
      if (o.progress(static_cast<int>(done), static_cast<int>(total), o.progress_user) != 0) {
        stopped = true;
        return false;
      }
      return true;
    };
  }
  try {
    e->engine.sample(ids.data(), n, p, out, progress);
  } catch (const std::runtime_error&) {
    if (stopped) throw Failure{ROBUQ_ERROR_INTERRUPTED, "sampling stopped by the progress callback"};
    throw;
  }
}

void to_uint8(const float* x, int64_t n, int64_t c, int64_t h, int64_t w, uint8_t* out) {
  // robuq.engine.to_uint8: clamp to [-1, 1], (x + 1) * 127.5 in float32, round half to even, NCHW -> NHWC.
  const int64_t hw = h * w;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t p = 0; p < hw; ++p) {
        float v = x[(i * c + ch) * hw + p];
        uint8_t u = 0;
        if (!std::isnan(v)) {
          v = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
          const float r = std::nearbyint((v + 1.0f) * 127.5f);
          u = static_cast<uint8_t>(r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r));
        }
        out[(i * hw + p) * c + ch] = u;
      }
}

int sample_images(robuq_engine* e, const int32_t* classes, int n, const robuq_sample_options& o, uint8_t* out) {
  const auto& c = config(e);
  if (c.space == "latent")
    fail_argument("this is a latent model: its samples are latents, not pixels; use robuq_sample_x0");
  const int64_t per = c.in_channels * c.input_size * c.input_size;
  std::vector<float> x0(static_cast<size_t>(n) * static_cast<size_t>(per));
  run_sample(e, classes, n, o, x0.data());
  to_uint8(x0.data(), n, c.in_channels, c.input_size, c.input_size, out);
  return ROBUQ_OK;
}

}  // namespace

extern "C" {

const char* robuq_version(void) {
#define ROBUQ_STR2(x) #x
#define ROBUQ_STR(x) ROBUQ_STR2(x)
  return ROBUQ_STR(ROBUQ_VERSION_MAJOR) "." ROBUQ_STR(ROBUQ_VERSION_MINOR) "." ROBUQ_STR(ROBUQ_VERSION_PATCH);
}

const char* robuq_last_error(void) {
  return g_error_truncated ? "out of memory while recording the error message" : g_last_error.c_str();
}

robuq_status robuq_last_status(void) { return g_last_status; }

robuq_engine* robuq_open(const char* path, int threads) {
  robuq_engine* out = nullptr;
  guarded("robuq_open", [&]() -> int {
    if (path == nullptr) fail_argument("path is NULL");
    if (*path == '\0') fail_argument("path is empty");
    if (threads < 0) fail_argument("threads must be >= 0 (0: all cores), got " + std::to_string(threads));
    out = new robuq_engine(path, threads);
    return ROBUQ_OK;
  });
  return out;
}

void robuq_close(robuq_engine* engine) { delete engine; }

int robuq_model_info_get(const robuq_engine* engine, robuq_model_info* info) {
  return guarded("robuq_model_info_get", [&]() -> int {
    check_engine(engine);
    if (info == nullptr) fail_argument("info is NULL");
    const auto& c = config(engine);
    robuq_model_info r;
    std::memset(&r, 0, sizeof r);
    r.input_size = static_cast<int>(c.input_size);
    r.in_channels = static_cast<int>(c.in_channels);
    r.out_channels = static_cast<int>(c.out_channels());
    r.num_classes = static_cast<int>(c.num_classes);
    r.has_null_class = c.label_rows() > c.num_classes ? 1 : 0;
    r.latent = c.space == "latent" ? 1 : 0;
    r.depth = static_cast<int>(c.depth);
    r.hidden_size = static_cast<int>(c.hidden_size);
    r.patch_size = static_cast<int>(c.patch_size);
    r.num_heads = static_cast<int>(c.num_heads);
    r.threads = engine->engine.threads();
    *info = r;
    return ROBUQ_OK;
  });
}

int robuq_image_shape(const robuq_engine* engine, int* height, int* width, int* channels) {
  return guarded("robuq_image_shape", [&]() -> int {
    check_engine(engine);
    const auto& c = config(engine);
    if (height != nullptr) *height = static_cast<int>(c.input_size);
    if (width != nullptr) *width = static_cast<int>(c.input_size);
    if (channels != nullptr) *channels = static_cast<int>(c.in_channels);
    return ROBUQ_OK;
  });
}

void robuq_sample_options_init(robuq_sample_options* o) {
  if (o == nullptr) return;
  std::memset(o, 0, sizeof *o);
  o->steps = "250";
  o->cfg_scale = 4.0;
  o->seed = 0;
  o->seeds = nullptr;
  o->sampler = ROBUQ_SAMPLER_DDPM;
  o->eta = 0.0;
  o->cfg_mode = ROBUQ_CFG_MODE_FILE;
  o->clip_denoised = -1;
  o->progress = nullptr;
  o->progress_user = nullptr;
}

int robuq_steps_count(const char* steps, int* count) {
  return guarded("robuq_steps_count", [&]() -> int {
    if (steps == nullptr) fail_argument("steps is NULL (use \"250\", \"10,10,5\" or \"ddim25\")");
    const std::string spec = steps;
    // a plain count ("50", "-3"): say "positive" rather than the respacing rule's message
    const size_t digits = spec.empty() || (spec[0] != '-' && spec[0] != '+') ? 0 : 1;
    if (spec.size() > digits && spec.find_first_not_of("0123456789", digits) == std::string::npos &&
        (spec[0] == '-' || spec.find_first_not_of('0', digits) == std::string::npos))
      fail_argument("steps must be a positive number of sampling steps, got " + spec);
    const std::vector<int64_t> kept = robuq::space_timesteps(1000, spec);
    if (count != nullptr) *count = static_cast<int>(kept.size());
    return ROBUQ_OK;
  });
}

int robuq_sample(robuq_engine* engine, const int32_t* classes, int n, int steps, float cfg_scale, uint64_t seed,
                 uint8_t* out_nhwc) {
  return guarded("robuq_sample", [&]() -> int {
    check_engine(engine);
    check_batch(classes, n, out_nhwc);
    if (steps < 1 || steps > 1000)
      fail_argument("steps must be in 1..1000 (the 1000 training steps respaced), got " + std::to_string(steps));
    if (!std::isfinite(cfg_scale)) fail_argument("cfg_scale must be a finite number");
    robuq_sample_options o;
    robuq_sample_options_init(&o);
    const std::string spec = std::to_string(steps);
    o.steps = spec.c_str();
    o.cfg_scale = static_cast<double>(cfg_scale);
    o.seed = seed;
    return sample_images(engine, classes, n, o, out_nhwc);
  });
}

int robuq_sample_images(robuq_engine* engine, const int32_t* classes, int n, const robuq_sample_options* options,
                        uint8_t* out_nhwc) {
  return guarded("robuq_sample_images", [&]() -> int {
    check_engine(engine);
    check_batch(classes, n, out_nhwc);
    robuq_sample_options o;
    robuq_sample_options_init(&o);
    return sample_images(engine, classes, n, options != nullptr ? *options : o, out_nhwc);
  });
}

int robuq_sample_x0(robuq_engine* engine, const int32_t* classes, int n, const robuq_sample_options* options,
                    float* out_nchw) {
  return guarded("robuq_sample_x0", [&]() -> int {
    check_engine(engine);
    check_batch(classes, n, out_nchw);
    robuq_sample_options o;
    robuq_sample_options_init(&o);
    run_sample(engine, classes, n, options != nullptr ? *options : o, out_nchw);
    return ROBUQ_OK;
  });
}

int robuq_to_uint8(const float* x_nchw, int n, int channels, int height, int width, uint8_t* out_nhwc) {
  return guarded("robuq_to_uint8", [&]() -> int {
    if (x_nchw == nullptr) fail_argument("x_nchw is NULL");
    if (out_nhwc == nullptr) fail_argument("out_nhwc is NULL");
    if (n < 0 || channels < 0 || height < 0 || width < 0) fail_argument("n, channels, height and width must be >= 0");
    to_uint8(x_nchw, n, channels, height, width, out_nhwc);
    return ROBUQ_OK;
  });
}

int robuq_forward(robuq_engine* engine, const float* x, int n, const int32_t* t, const int32_t* y, float* out) {
  return guarded("robuq_forward", [&]() -> int {
    check_engine(engine);
    if (n <= 0) fail_argument("n must be >= 1, got " + std::to_string(n));
    if (x == nullptr || t == nullptr || y == nullptr || out == nullptr)
      fail_argument(std::string(x == nullptr ? "x" : t == nullptr ? "t" : y == nullptr ? "y" : "out") + " is NULL");
    const int64_t rows = config(engine).label_rows();
    std::vector<int64_t> tv(t, t + n), yv(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      if (y[i] < 0 || y[i] >= rows)
        fail_argument("label " + std::to_string(y[i]) + " (y[" + std::to_string(i) + "]) is out of range 0.." +
                      std::to_string(rows - 1));
      yv[static_cast<size_t>(i)] = y[i];
    }
    engine->engine.forward(x, n, tv.data(), yv.data(), out);
    return ROBUQ_OK;
  });
}

}  // extern "C"
