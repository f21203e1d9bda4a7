// robuq::CudaEngine: the DiT of a .rq file on an NVIDIA GPU (docs/cuda.md). Plain C++ interface (no CUDA
// types), so the Python bindings compile without the CUDA headers; the implementation is
// engine/cuda/cuda_engine.cu, built only when CMake finds nvcc (ROBUQ_HAVE_CUDA).
//
// The file is loaded and validated by the CPU engine's loader (RqFile, parse_rq_spec, check_rq_tensors and
// the DiT's code / row-sum checks), then every tensor the forward needs is uploaded once. Inputs and outputs
// are host arrays; everything in between stays on the device. The sampler is the CPU engine's sample_loop
// (float64 schedule, the same noise streams): per step it uploads x, runs the guided model call on the
// device and downloads the model output, so samples match the CPU engine's up to the forward's rounding.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "diffusion.h"
#include "engine.h"

namespace robuq {

// Whether this build has the CUDA backend and a usable device; `reason` says why not (no driver, no device,
// not compiled in) when it returns false.
bool cuda_compiled();
bool cuda_device_available(std::string* reason);
// "name (sm_XY, N MiB)" of a device, for messages and the benchmark.
std::string cuda_device_name(int device);
// The GEMM kernel choice of kernels/cuda (cuda::set_gemm_variant), for measurements.
void cuda_set_gemm_variant(int v);
int cuda_gemm_variants();  // the largest variant number
// The low-rank down-projection fused into the Hadamard + quantize kernel (cuda::set_lowrank_fused).
void cuda_set_lowrank_fused(bool on);

class CudaEngine {
 public:
  // Throws IoError / FormatError like robuq::Engine, std::runtime_error when CUDA is not compiled in, no
  // device is present or an allocation fails.
  explicit CudaEngine(const std::string& path, int device = 0);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const EngineInfo& info() const;
  std::string device_name() const;

  // As Engine::forward / linear / sample (same shapes, same checks), computed on the device.
  void forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out);
  void linear(const std::string& name, const float* x, int64_t T, float* out);
  // Only the fused Hadamard + quantize pass of a quantized layer (act_bits > 0): codes [T, in], scale [T],
  // zero [T] as the GEMM gets them (the GPU tests compare them with the CPU kernels).
  void quantize_input(const std::string& name, const float* x, int64_t T, uint8_t* codes, float* scale, float* zero);
  void sample(const int64_t* classes, int64_t n, const SampleParams& params, float* out,
              const ProgressFn& progress = nullptr);
  std::string default_cfg_mode() const;
  bool default_clip_denoised() const;
  // Waits for the device and returns the milliseconds of `iters` forward calls on a batch already
  // uploaded by a previous forward (the benchmark's timing, CUDA events around the device work only).
  double time_forward(int64_t N, int iters);
  // CUDA graphs for the forward (default on): each batch size's forward is captured once and replayed.
  void set_graphs(bool on);
  // "" when graphs work, else why capture fell back to plain launches.
  std::string graph_status() const;
  // One forward (batch N, inputs from the previous forward) with an event after every launch, without graphs:
  // milliseconds per part (quantize, lowrank, gemm, small_gemm, attention, norm, other).
  std::vector<std::pair<std::string, double>> profile_forward(int64_t N);
  // Milliseconds per call of layer `name` on T random rows already on the device (iters calls after a warm-up):
  // the fused Hadamard + quantize, low-rank and GEMM passes; gemm_only: the GEMM kernel alone.
  double time_linear(const std::string& name, int64_t T, int iters, bool gemm_only);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace robuq
