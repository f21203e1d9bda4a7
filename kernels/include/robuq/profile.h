// Per-part time breakdown of a forward (robuq-bench --json, Engine.profile): the engine and the kernels add
// seconds to a few named parts while profiling is switched on. Off (the default) it costs one relaxed atomic
// load per timed region. The parts:
//   linears            the quantized block and adaLN linears (integer GEMM + epilogue), wall time, less the share
//                      of hadamard_quantize inside them
//   hadamard_quantize  Hadamard transform + per-token quantization (+ low-rank down-projection) of the quantized
//                      linears' inputs: thread-seconds divided by the threads of the linear that ran it (it runs
//                      inside the GEMM's parallel region)
//   attention          attention (q k^T, softmax, p v, with the A8 fake quantization)
//   elementwise        LayerNorm + modulate, gated residuals, GELU when not fused, embeddings' adds
//   float_linears      float32 linears (patch embedding, timestep MLP, final linear)
//   other              the rest of the forward (wall time not in any part above)
#pragma once
#include <chrono>
#include <cstdint>

namespace robuq {
namespace profile {

enum Part { Linears = 0, HadamardQuantize, Attention, Elementwise, FloatLinears, Other, kParts };

const char* part_name(int p);
bool enabled();
void set_enabled(bool on);
void reset();
// Adds seconds to part p (thread-safe).
void add(int p, double seconds);
// Seconds accumulated since reset().
double total(int p);

inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Adds the wall time of its scope to part p while profiling is on.
class Scope {
 public:
  explicit Scope(int p) : p_(p), t0_(enabled() ? now() : -1.0) {}
  ~Scope() {
    if (t0_ >= 0) add(p_, now() - t0_);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  int p_;
  double t0_;
};

}  // namespace profile
}  // namespace robuq
