// The engine's resource budget (docs/reliability.md, "Budget"): what one forward of a model costs, computed
// from the model config and the batch size before anything is allocated, and the limits a model or a call
// must fit. A small .rq file can describe a model whose first forward needs gigabytes or hours (a large
// input_size, tiny patches, a huge mlp_ratio); the engine refuses those with the numbers and the override
// instead of dying in std::bad_alloc or running for days.
//
//   max_memory  bytes of activations, scratch and sampler buffers of one call (forward or sample), default
//               16 GiB or half the machine's memory, whichever is less (DiT-XL/2 at 512x512 with batch 64 and
//               guidance, i.e. 128 per forward, needs 9.0 GiB by this estimate); Engine(path, threads, max_memory) or
//               ROBUQ_MAX_MEMORY.
//   max_macs    multiply-adds of one sample's forward, default 2^42 = 4.4e12 (DiT-XL/2 at 512x512: 5.3e11, at
//               1024x1024: 2.9e12); ROBUQ_MAX_MACS.
//   max_tokens  tokens (patches) per sample, default 16384 (DiT-XL/2 at 1024x1024: 4096): attention grows with
//               the square of it; ROBUQ_MAX_TOKENS.
// Threads are clamped to 4 x the cores the process may use (a thread team of thousands only fails).
#pragma once
#include <cstdint>
#include <string>

#include "rq_spec.h"

namespace robuq {

struct Budget {
  double max_memory = 16.0 * (1ull << 30);
  double max_macs = 4398046511104.0;  // 2^42
  int64_t max_tokens = 16384;
};

// The defaults above, each replaced by its environment variable when set (a positive number; the memory may
// end in K, M, G or T, powers of 1024). std::invalid_argument for an unreadable value.
Budget default_budget();
// Parses a byte count such as "8G", "512M", "1073741824" (std::invalid_argument otherwise; `what` names it).
double parse_bytes(const std::string& text, const std::string& what);

struct ForwardCost {
  double activation_bytes = 0;  // workspace, per-thread scratch, the call's input / output / sampler buffers
  double macs_per_sample = 0;   // multiply-adds of one sample's forward
};
// The cost of a forward of N samples with `threads` worker threads (double: never overflows).
ForwardCost forward_cost(const ModelConfig& c, int64_t N, int threads);

// Refuse a model whose single-sample forward is beyond the budget: FormatError naming the numbers and the
// override (the file is valid, but this engine will not run it as configured).
void check_model_budget(const ModelConfig& c, int threads, const Budget& b);
// Refuse a call of N samples per forward beyond max_memory (std::invalid_argument naming the numbers).
void check_call_budget(const ModelConfig& c, int64_t N, int threads, const Budget& b, const char* what);

// The most threads an engine uses: 4 x the processors available (at least 1).
int max_threads();
// "6.61 GiB" / "512.0 MiB" / "123 bytes".
std::string format_bytes(double bytes);

}  // namespace robuq
