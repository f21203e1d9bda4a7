#include "robuq/profile.h"

#include <atomic>

namespace robuq {
namespace profile {
namespace {
std::atomic<bool> g_on{false};
std::atomic<int64_t> g_ns[kParts];  // nanoseconds per part
}  // namespace

const char* part_name(int p) {
  switch (p) {
    case Linears: return "linears";
    case HadamardQuantize: return "hadamard_quantize";
    case Attention: return "attention";
    case Elementwise: return "elementwise";
    case FloatLinears: return "float_linears";
    case Other: return "other";
  }
  return "?";
}

bool enabled() { return g_on.load(std::memory_order_relaxed); }
void set_enabled(bool on) { g_on.store(on); }

void reset() {
  for (auto& v : g_ns) v.store(0);
}

void add(int p, double seconds) {
  if (p < 0 || p >= kParts) return;
  g_ns[p].fetch_add(static_cast<int64_t>(seconds * 1e9), std::memory_order_relaxed);
}

double total(int p) { return p >= 0 && p < kParts ? static_cast<double>(g_ns[p].load()) * 1e-9 : 0.0; }

}  // namespace profile
}  // namespace robuq
