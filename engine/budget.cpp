// The engine's resource budget (see budget.h).
#include "budget.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "errors.h"
#include "ops.h"

namespace robuq {

double parse_bytes(const std::string& text, const std::string& what) {
  std::string s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  double mult = 1.0;
  if (!s.empty()) {
    const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
    const char* units = "KMGT";
    for (int i = 0; i < 4; ++i)
      if (u == units[i]) {
        mult = std::pow(1024.0, i + 1);
        s.pop_back();
      }
  }
  char* end = nullptr;
  const double v = s.empty() ? -1.0 : std::strtod(s.c_str(), &end);
  if (s.empty() || end == nullptr || *end != '\0' || !std::isfinite(v) || !(v > 0))
    throw std::invalid_argument(what + " must be a positive number of bytes (e.g. 8G, 512M), got '" + text + "'");
  return v * mult;
}

namespace {
double env_number(const char* name, double fallback, bool bytes) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  if (bytes) return parse_bytes(v, name);
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  if (end == v || *end != '\0' || !std::isfinite(d) || !(d > 0))
    throw std::invalid_argument(std::string(name) + " must be a positive number, got '" + v + "'");
  return d;
}

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}
}  // namespace

Budget default_budget() {
  Budget b;
  // 16 GiB, or half the machine's memory when that is less: a call the machine cannot hold is refused with
  // the numbers instead of ending in std::bad_alloc (or the OOM killer) part-way through a run.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) b.max_memory = std::min(b.max_memory, 0.5 * static_cast<double>(pages) * page);
  b.max_memory = env_number("ROBUQ_MAX_MEMORY", b.max_memory, true);
  b.max_macs = env_number("ROBUQ_MAX_MACS", b.max_macs, false);
  b.max_tokens =
      static_cast<int64_t>(std::min(env_number("ROBUQ_MAX_TOKENS", static_cast<double>(b.max_tokens), false), 1e12));
  return b;
}

std::string format_bytes(double bytes) {
  char buf[48];
  if (bytes >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  else if (bytes >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.0f bytes", bytes);
  return buf;
}

int max_threads() {
  int procs = 1;
#ifdef _OPENMP
  procs = omp_get_num_procs();
#else
  procs = static_cast<int>(std::thread::hardware_concurrency());
#endif
  return std::max(1, procs) * 4;
}

ForwardCost forward_cost(const ModelConfig& c, int64_t N_, int threads) {
  const double N = static_cast<double>(N_), T = static_cast<double>(c.num_patches());
  const double D = static_cast<double>(c.hidden_size), M = static_cast<double>(c.mlp_hidden());
  const double pf = static_cast<double>(c.patch_features()), head_dim = static_cast<double>(c.head_dim());
  const double p2out = static_cast<double>(c.patch_size * c.patch_size * c.out_channels());
  const double depth = static_cast<double>(c.depth);
  const double px = static_cast<double>(c.in_channels) * static_cast<double>(c.input_size) * c.input_size;
  ForwardCost r;
  // DiT::Workspace (floats): token-major patches, x, h, qkv, att, branch, mlp, feats; per-sample tfreq, temb_h,
  // temb, c, silu_c, mod; the attention scratch of every thread (the larger of the tiers' layouts).
  const double tokens = N * T;
  double floats = tokens * (pf + 7 * D + M + p2out) + N * (ops::kFreqDim + 10 * D);
  const double qb = std::min(T, 64.0);
  const double att = std::max(3 * T * head_dim + qb * T + qb * head_dim + head_dim,
                              2 * T * head_dim + (T + 16) * head_dim + (head_dim + 16) * T + 6 * T + head_dim);
  floats += static_cast<double>(threads) * att;
  // A quantized linear's scratch: per-token codes (bytes), scales and zero points, rotated rows per thread,
  // and the GEMM's lookup tables (about two bytes per token and input).
  const double widest = std::max(D, M);
  double bytes = 4 * floats + tokens * (3 * widest + 8) + 4.0 * threads * 2 * widest;
  // The call's input and output and the sampler's state (x, noise, model output, the guided copies).
  bytes +=
      4 * N * static_cast<double>(px) * 3 + 4 * N * (px / static_cast<double>(c.in_channels)) * c.out_channels() * 2;
  // 25 % for what the allocator and the kernels' per-thread buffers add (measured: the digits model at
  // N = 1024 peaks 397 MB over its base, the estimate is 0.46 GB).
  r.activation_bytes = 1.25 * bytes;
  // Multiply-adds per sample: patch embedding, timestep MLP, per block adaLN (per sample), qkv / proj / MLP
  // (per token) and attention (QK^T and PV: 2 T^2 D), final adaLN and linear.
  double macs = T * pf * D + ops::kFreqDim * D + D * D;
  macs += depth * (6 * D * D + T * (4 * D * D + 2 * D * M) + 2 * T * T * D);
  macs += 2 * D * D + T * D * p2out;
  r.macs_per_sample = macs;
  return r;
}

void check_model_budget(const ModelConfig& c, int threads, const Budget& b) {
  const std::string shape = " (input_size " + std::to_string(c.input_size) + ", patch_size " +
                            std::to_string(c.patch_size) + ": " + std::to_string(c.num_patches()) +
                            " tokens of width " + std::to_string(c.hidden_size) + ", MLP width " +
                            std::to_string(c.mlp_hidden()) + ", depth " + std::to_string(c.depth) + ")";
  if (c.num_patches() > b.max_tokens)
    throw FormatError("model_config: " + std::to_string(c.num_patches()) + " tokens per sample" + shape +
                      " is over the engine's limit of " + std::to_string(b.max_tokens) +
                      " (attention grows with its square); set ROBUQ_MAX_TOKENS to run it anyway");
  const ForwardCost f = forward_cost(c, 1, threads);
  if (f.macs_per_sample > b.max_macs)
    throw FormatError(
        "model_config: one sample's forward needs " + sci(f.macs_per_sample) + " multiply-adds" + shape +
        ", over the engine's limit of " + sci(b.max_macs) +
        " (DiT-XL/2 at 512x512 needs 5.3e+11, at 1024x1024 2.9e+12); set ROBUQ_MAX_MACS to run it anyway");
  if (f.activation_bytes > b.max_memory)
    throw FormatError("model_config: one sample's forward needs " + format_bytes(f.activation_bytes) +
                      " of activations" + shape + ", over the engine's max_memory of " + format_bytes(b.max_memory) +
                      "; raise it with max_memory= or ROBUQ_MAX_MEMORY to run it anyway");
}

void check_call_budget(const ModelConfig& c, int64_t N, int threads, const Budget& b, const char* what) {
  const ForwardCost f = forward_cost(c, N, threads);
  if (f.activation_bytes > b.max_memory) {
    const ForwardCost one = forward_cost(c, 1, threads);
    const double each =
        N > 1 ? (f.activation_bytes - one.activation_bytes) / static_cast<double>(N - 1) : f.activation_bytes;
    const double fixed = one.activation_bytes - each;
    const int64_t fit = each > 0 ? static_cast<int64_t>(std::floor((b.max_memory - fixed) / each)) : 0;
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(N) + " samples per forward need " +
                                format_bytes(f.activation_bytes) + " of activations, over the engine's max_memory of " +
                                format_bytes(b.max_memory) + "; use batches of at most " +
                                std::to_string(std::max<int64_t>(fit, 1)) +
                                " or raise max_memory (Engine(..., max_memory=...) or ROBUQ_MAX_MEMORY)");
  }
}

}  // namespace robuq
