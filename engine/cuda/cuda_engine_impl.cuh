// The private state of robuq::CudaEngine (cuda_engine.h): device buffers, the uploaded layers, the
// per-batch workspace and the forward itself. Shared by cuda_engine.cu (loading, forward, sampling) and
// cuda_engine_timing.cu (the measurement entry points); nothing else includes it.
#pragma once
#include "cuda_engine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "dit.h"
#include "errors.h"
#include "kernels.cuh"
#include "ops.h"
#include "rq_file.h"
#include "rq_spec.h"
#include "sampler.cuh"

namespace robuq {

using cuda::check;

namespace cuda_engine_detail {

// Device memory owned by one object.
template <class T>
class DevBuf {
 public:
  DevBuf() = default;
  ~DevBuf() { reset(); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  void alloc(size_t n) {
    reset();
    if (n == 0) return;
    check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
    n_ = n;
  }
  void upload(const T* src, size_t n) {
    alloc(n);
    if (n) check(cudaMemcpy(p_, src, n * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  void reset() {
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

struct DevLinear {
  std::string name;
  int64_t in = 0, out = 0;
  bool quant = false;
  WeightFormat format = WeightFormat::Ternary;
  int act_bits = 0;
  float clip_k = 0.0f;
  int form = 0;
  int64_t K = 1, M = 1;
  float norm = 1.0f;
  int64_t pc = 0, rank = 0;
  DevBuf<int8_t> base;
  DevBuf<uint8_t> packed;
  DevBuf<float> wscale, bias, weight, down, up;
  DevBuf<int32_t> wsum;
};

// Per-call scratch of the quantized linears: activation codes, token scales / zeros, rotated rows, low-rank u.
struct Scratch {
  int64_t rows = 0;
  DevBuf<uint8_t> codes;
  DevBuf<float> sx, zx, rot, u;
  DevBuf<int32_t> rowsum;
  void ensure(int64_t r, int64_t max_in, int64_t max_rank) {
    if (r <= rows) return;
    codes.alloc(static_cast<size_t>(r * cuda::codes_ld(max_in)));
    rowsum.alloc(static_cast<size_t>(r));
    sx.alloc(static_cast<size_t>(r));
    zx.alloc(static_cast<size_t>(r));
    rot.alloc(static_cast<size_t>(r * max_in));
    u.alloc(static_cast<size_t>(r * std::max<int64_t>(max_rank, 1)));
    rows = r;
  }
};

}  // namespace cuda_engine_detail

using namespace cuda_engine_detail;

struct CudaEngine::Impl {
  std::unique_ptr<RqFile> file;
  RqSpec spec;
  EngineInfo info;
  int device = 0;
  std::string device_name;
  cudaStream_t stream = nullptr;
  std::mutex mutex;

  std::vector<std::unique_ptr<DevLinear>> linears;
  std::map<std::string, DevLinear*> by_name;
  int64_t max_in = 1, max_rank = 0;
  DevBuf<float> patch_w, patch_b, pos, table;
  struct Block {
    DevLinear *ada, *qkv, *proj, *fc1, *fc2;
  };
  std::vector<Block> blocks;
  DevLinear *t_fc1 = nullptr, *t_fc2 = nullptr, *final_ada = nullptr, *final_linear = nullptr;

  // workspace of forward(), for batch size ws_n
  int64_t ws_n = -1;
  DevBuf<float> xin, patches, x, h, qkv, attwork, att, mlp, feats, out, cfg_out;
  DevBuf<float> tfreq, temb_h, temb, c, silu_c, mod;
  DevBuf<int64_t> labels;
  Scratch scratch;
  std::vector<float> host_tfreq;

  ~Impl() {
    drop_graph();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  DevLinear* find(const std::string& name) const {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw std::invalid_argument("the model has no linear layer named '" + name + "'");
    return it->second;
  }

  void ensure_workspace(int64_t N) {
    if (ws_n == N) return;
    drop_graph();
    const ModelConfig& m = spec.model;
    const int64_t T = m.num_patches(), D = m.hidden_size, NT = N * T;
    auto z = [](int64_t v) { return static_cast<size_t>(v); };
    xin.alloc(z(N * m.in_channels * m.input_size * m.input_size));
    patches.alloc(z(NT * m.patch_features()));
    x.alloc(z(NT * D));
    h.alloc(z(NT * D));
    qkv.alloc(z(NT * 3 * D));
    attwork.alloc(spec.attention_bits > 0 ? z(NT * 3 * D) : 0);
    att.alloc(z(NT * D));
    mlp.alloc(z(NT * m.mlp_hidden()));
    feats.alloc(z(NT * m.patch_size * m.patch_size * m.out_channels()));
    out.alloc(z(N * m.out_channels() * m.input_size * m.input_size));
    cfg_out.alloc(z(N * m.out_channels() * m.input_size * m.input_size));
    tfreq.alloc(z(N * ops::kFreqDim));
    temb_h.alloc(z(N * D));
    temb.alloc(z(N * D));
    c.alloc(z(N * D));
    silu_c.alloc(z(N * D));
    mod.alloc(z(N * 6 * D));
    labels.alloc(z(N));
    scratch.ensure(std::max<int64_t>(NT, N), max_in, max_rank);
    host_tfreq.resize(z(N * ops::kFreqDim));
    ws_n = N;
  }

  // The fused Hadamard + quantize pass of layer L over x [T, L.in] into the scratch's codes / scales / zeros
  // (no rotated output; the caller sets a.rotated when it needs one).
  static cuda::HadamardQuantArgs hadamard_quant_args(const DevLinear& L, const float* x, int64_t T, Scratch& s) {
    cuda::HadamardQuantArgs a;
    a.T = T;
    a.n = L.in;
    a.form = L.form;
    a.K = L.K;
    a.M = L.M;
    a.norm = L.norm;
    a.base = L.base.get();
    a.bits = L.act_bits;
    a.clip_k = L.clip_k;
    a.x = x;
    a.codes = s.codes.get();
    a.scale = s.sx.get();
    a.zero = s.zx.get();
    return a;
  }

  // y = L(x) [+ GELU] or x_resid += gate * L(x) (gate non-null: y is the residual stream, updated in place).
  void run_linear(const DevLinear& L, const float* xd, int64_t T, float* y, Scratch& s, bool gelu = false,
                  const float* gate = nullptr, int64_t gate_stride = 0, int64_t rows_per_gate = 1) {
    cuda::Epilogue e;
    e.bias = L.bias.get();
    e.gelu = gelu ? 1 : 0;
    e.gate = gate;
    e.gate_stride = gate_stride;
    e.rows_per_gate = rows_per_gate;
    e.resid = gate != nullptr ? y : nullptr;
    if (!L.quant) {
      cuda::linear_f32(xd, T, L.in, L.weight.get(), L.out, e, y, stream);
      return;
    }
    s.ensure(T, max_in, max_rank);
    e.wscale = L.wscale.get();
    e.wsum = L.wsum.get();
    e.rank = L.rank;
    e.up = L.up.get();
    const float* rot = xd;  // the rotated input (x itself without a Hadamard)
    cuda::HadamardQuantArgs a = hadamard_quant_args(L, xd, T, s);
    // the low-rank down-projection inside the quantize kernel (cuda::set_lowrank_fused; same bits)
    const bool lr_fused = L.rank > 0 && L.act_bits > 0 && L.rank <= cuda::kMaxFusedRank && cuda::lowrank_fused();
    if (L.form != 0 && ((L.rank > 0 && !lr_fused) || L.act_bits == 0)) {
      a.rotated = s.rot.get();
      rot = s.rot.get();
    }
    if (lr_fused) {
      a.lr_rank = static_cast<int>(L.rank);
      a.lr_down = L.down.get();
      a.lr_u = s.u.get();
    }
    const bool gemv = L.act_bits > 0 && cuda::qgemv_applies(T);
    const bool fast = L.act_bits > 0 && !gemv && cuda::qgemm_fast_applies(L.format, L.in);
    if (fast) {
      a.interleave = 1;
      a.rowsum = s.rowsum.get();
    }
    if (L.act_bits > 0 || a.rotated != nullptr) cuda::hadamard_quantize(a, stream);
    mark(Part::Quantize);
    if (L.rank > 0) {
      if (!lr_fused) cuda::rowdot_f32(rot, T, L.in, L.down.get(), L.rank, s.u.get(), stream);
      e.u = s.u.get();
      mark(Part::LowRank);
    }
    if (gemv)
      cuda::qgemv(L.format, s.codes.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(), s.zx.get(), e, y, stream);
    else if (fast)
      cuda::qgemm_ternary_fast(s.codes.get(), s.rowsum.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(),
                               s.zx.get(), e, y, stream);
    else if (L.act_bits > 0)
      cuda::qgemm(L.format, s.codes.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(), s.zx.get(), e, y, stream);
    else
      cuda::qlinear_float_act(L.format, rot, T, L.in, L.packed.get(), L.pc, L.out, e, y, stream);
    mark(T > 64 ? Part::Gemm : Part::SmallGemm);
  }

  // ---- per-part timing (CudaEngine::profile_forward): an event after each launch, when enabled
  enum class Part { Quantize, LowRank, Gemm, SmallGemm, Attention, Norm, Other, Count };
  struct Mark {
    cudaEvent_t ev;
    Part part;
  };
  std::vector<Mark>* marks = nullptr;
  void mark(Part p) {
    if (marks == nullptr) return;
    cudaEvent_t ev;
    check(cudaEventCreate(&ev), "cudaEventCreate");
    check(cudaEventRecord(ev, stream), "cudaEventRecord");
    marks->push_back({ev, p});
  }

  // The forward of engine/dit.cpp on the workspace: xin, tfreq, labels -> out (batch N).
  void device_forward(int64_t N) {
    const ModelConfig& m = spec.model;
    const int64_t T = m.num_patches(), D = m.hidden_size, NT = N * T, p = m.patch_size;
    cuda::patchify(xin.get(), N, m.in_channels, m.input_size, p, patches.get(), stream);
    cuda::Epilogue pe;
    pe.bias = patch_b.get();
    cuda::linear_f32(patches.get(), NT, m.patch_features(), patch_w.get(), D, pe, x.get(), stream);
    cuda::add_pos_embed(x.get(), pos.get(), NT, T, D, stream);
    mark(Part::Other);
    run_linear(*t_fc1, tfreq.get(), N, temb_h.get(), scratch);
    cuda::silu_inplace(temb_h.get(), N * D, stream);
    mark(Part::Other);
    run_linear(*t_fc2, temb_h.get(), N, temb.get(), scratch);
    cuda::label_embed_silu(temb.get(), table.get(), labels.get(), N, D, c.get(), silu_c.get(), stream);
    mark(Part::Other);

    const int64_t st = 6 * D;
    for (const Block& b : blocks) {
      run_linear(*b.ada, silu_c.get(), N, mod.get(), scratch);
      const float* md = mod.get();
      cuda::layernorm_modulate(x.get(), N, T, D, md + 0 * D, md + 1 * D, st, h.get(), stream);
      mark(Part::Norm);
      run_linear(*b.qkv, h.get(), NT, qkv.get(), scratch);
      cuda::attention(qkv.get(), N, T, m.num_heads, m.head_dim(), spec.attention_bits, att.get(), attwork.get(),
                      stream);
      mark(Part::Attention);
      run_linear(*b.proj, att.get(), NT, x.get(), scratch, false, md + 2 * D, st, T);  // x += gate_msa * proj
      cuda::layernorm_modulate(x.get(), N, T, D, md + 3 * D, md + 4 * D, st, h.get(), stream);
      mark(Part::Norm);
      run_linear(*b.fc1, h.get(), NT, mlp.get(), scratch, true);                      // GELU fused
      run_linear(*b.fc2, mlp.get(), NT, x.get(), scratch, false, md + 5 * D, st, T);  // x += gate_mlp * fc2
    }
    run_linear(*final_ada, silu_c.get(), N, mod.get(), scratch);
    cuda::layernorm_modulate(x.get(), N, T, D, mod.get(), mod.get() + D, 2 * D, h.get(), stream);
    run_linear(*final_linear, h.get(), NT, feats.get(), scratch);
    cuda::unpatchify(feats.get(), N, m.grid_size(), p, m.out_channels(), out.get(), stream);
    mark(Part::Other);
  }

  // ---- CUDA graph of device_forward(N) (docs/cuda.md): captured once per workspace, replayed per call; the
  // kernels read the workspace's fixed buffers, inputs are copied in before the launch. Capture problems
  // (an old driver, say) fall back to plain launches for good.
  cudaGraphExec_t graph_exec = nullptr;
  int64_t graph_n = -1;
  bool graphs_ok = true;
  void drop_graph() {
    if (graph_exec != nullptr) cudaGraphExecDestroy(graph_exec);
    graph_exec = nullptr;
    graph_n = -1;
  }
  void run_forward(int64_t N) {
    if (use_graphs && graphs_ok && graph_n != N) {
      drop_graph();
      cudaGraph_t g = nullptr;
      cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed);
      if (err == cudaSuccess) {
        try {
          device_forward(N);
        } catch (...) {
          cudaStreamEndCapture(stream, &g);
          if (g != nullptr) cudaGraphDestroy(g);
          cudaGetLastError();
          throw;
        }
        err = cudaStreamEndCapture(stream, &g);
      }
      if (err == cudaSuccess) err = cudaGraphInstantiate(&graph_exec, g, 0);
      if (g != nullptr) cudaGraphDestroy(g);
      if (err == cudaSuccess) {
        graph_n = N;
      } else {
        cudaGetLastError();
        graph_exec = nullptr;
        graphs_ok = false;
        graph_fallback_reason = cudaGetErrorString(err);
      }
    }
    if (graphs_ok && graph_exec != nullptr && use_graphs) {
      check(cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch");
    } else {
      device_forward(N);
    }
  }
  bool use_graphs = true;
  std::string graph_fallback_reason;

  void check_labels(const int64_t* y, int64_t N) const {
    for (int64_t n = 0; n < N; ++n)
      if (y[n] < 0 || y[n] >= spec.model.label_rows())
        throw std::invalid_argument("class label y[" + std::to_string(n) + "] = " + std::to_string(y[n]) +
                                    " is out of range [0, " + std::to_string(spec.model.label_rows() - 1) + "]");
  }

  // Inputs of one forward into the workspace: x (N samples; when dup, also copied to samples N..2N-1), t, y.
  // x is a host array (kind cudaMemcpyHostToDevice) or, in the sampler's loop, a device one
  // (cudaMemcpyDeviceToDevice).
  void load_inputs(const float* x, cudaMemcpyKind kind, int64_t nx, bool dup, const int64_t* t, const int64_t* y,
                   int64_t N) {
    const ModelConfig& m = spec.model;
    const size_t per = static_cast<size_t>(m.in_channels * m.input_size * m.input_size);
    check(cudaMemcpyAsync(xin.get(), x, sizeof(float) * per * nx, kind, stream), "load x");
    if (dup) check(cudaMemcpyAsync(xin.get() + per * nx, x, sizeof(float) * per * nx, kind, stream), "load x");
    ops::timestep_embedding(t, N, host_tfreq.data());
    check(cudaMemcpyAsync(tfreq.get(), host_tfreq.data(), sizeof(float) * host_tfreq.size(), cudaMemcpyHostToDevice,
                          stream),
          "upload t");
    check(cudaMemcpyAsync(labels.get(), y, sizeof(int64_t) * N, cudaMemcpyHostToDevice, stream), "upload y");
  }

  void download(float* dst, const float* src, size_t n) {
    check(cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToHost, stream), "download");
    check(cudaStreamSynchronize(stream), "forward");
  }
};

}  // namespace robuq
