// The DiT forward graph over the weights of a validated .rq file. Modules mirror robuq.models and every
// parameter is found by its state-dict name.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffusion.h"
#include "robuq/qlinear.h"
#include "rq_file.h"
#include "rq_spec.h"

namespace robuq {

// One linear layer: quantized (QLinear over the packed weights) or float32 (weights in the file).
class LinearLayer {
 public:
  LinearLayer(RqFile& file, const RqSpec& spec, const LinearShape& shape);
  // x [T, in] -> y [T, out] (y must not alias x).
  // post: applied to every output (PostOp::GeluTanh: the MLP's GELU, fused into the quantized GEMM's epilogue;
  // the same bits as a separate ops::gelu_tanh pass on the active tier).
  void forward(const float* x, int64_t T, float* y, int threads, PostOp post = PostOp::None) const;

  const std::string& name() const { return name_; }
  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  bool quantized() const { return q_ != nullptr; }

 private:
  std::string name_;
  int64_t in_ = 0, out_ = 0;
  const float* weight_ = nullptr;  // [out, in] when float
  const float* bias_ = nullptr;
  std::unique_ptr<QLinear> q_;
};

class DiT {
 public:
  // Binds every tensor of `file` (which must outlive the DiT); `spec` must come from the same file and
  // check_rq_tensors must have passed. Checks the weight codes and sums of quantized layers (FormatError).
  DiT(RqFile& file, const RqSpec& spec);
  ~DiT();

  // x [N, C, S, S], t [N], y [N] (0 <= y < label_rows) -> out [N, out_channels, S, S]. Not re-entrant (the
  // workspace is shared): the caller serialises calls. `cancel` (optional) is asked between blocks; false stops
  // the forward with std::runtime_error("interrupted").
  void forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out, int threads,
               const CancelFn& cancel = nullptr);

  // Bytes held by the activation workspace (kept between calls of the same batch size).
  size_t workspace_bytes() const;
  // Frees the workspace, the kernels' per-thread scratch (on a team of `threads`) and returns freed heap
  // memory to the system, so that memory comes back after a large call.
  void release_workspace(int threads);
  // release_workspace when the workspace holds more than kKeepWorkspaceBytes.
  static constexpr size_t kKeepWorkspaceBytes = size_t(256) << 20;
  void release_if_large(int threads) {
    if (workspace_bytes() > kKeepWorkspaceBytes) release_workspace(threads);
  }

  const ModelConfig& config() const { return cfg_; }
  const LinearLayer* find_linear(const std::string& name) const;
  const std::vector<std::unique_ptr<LinearLayer>>& linears() const { return linears_; }

 private:
  struct Block {
    const LinearLayer *ada, *qkv, *proj, *fc1, *fc2;
  };
  struct Workspace;

  ModelConfig cfg_;
  int attention_bits_ = 0;
  const float* patch_w_ = nullptr;  // [D, C * p * p]
  const float* patch_b_ = nullptr;
  const float* pos_embed_ = nullptr;    // [T, D]
  const float* label_table_ = nullptr;  // [label_rows, D]
  std::vector<std::unique_ptr<LinearLayer>> linears_;
  const LinearLayer *t_fc1_ = nullptr, *t_fc2_ = nullptr, *final_ada_ = nullptr, *final_linear_ = nullptr;
  std::vector<Block> blocks_;
  std::unique_ptr<Workspace> ws_;

  void ensure_workspace(int64_t N, int threads);
};

}  // namespace robuq
