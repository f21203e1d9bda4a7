// robuq::CudaEngine (see cuda_engine.h): the DiT forward of engine/dit.cpp on the device, layer for layer,
// with the kernels of kernels/cuda/. Simple by design: one stream, one workspace per batch size, every
// tensor uploaded once at load time in the file's own layout (ternary and int4 weights stay packed).
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

bool cuda_compiled() { return true; }

bool cuda_device_available(std::string* reason) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (reason) {
      *reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
      if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice)
        *reason += " (no NVIDIA GPU with a driver for CUDA 13 on this machine)";
    }
    cudaGetLastError();  // reset the runtime's last-error state
    return false;
  }
  if (count == 0) {
    if (reason) *reason = "the CUDA driver reports no devices";
    return false;
  }
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess) {
    if (reason) *reason = "cannot read device 0's compute capability";
    cudaGetLastError();
    return false;
  }
  if (major < 8) {
    if (reason) *reason = "device 0 is compute capability " + std::to_string(major) + ".x; the kernels need sm_80+";
    return false;
  }
  return true;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

void cuda_set_gemm_variant(int v) { cuda::set_gemm_variant(v); }
void cuda_set_lowrank_fused(bool on) { cuda::set_lowrank_fused(on); }
int cuda_gemm_variants() { return cuda::kGemmVariants; }

namespace {

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

}  // namespace

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
      run_linear(*b.fc1, h.get(), NT, mlp.get(), scratch, true);  // GELU fused
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

CudaEngine::CudaEngine(const std::string& path, int device) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  std::string reason;
  if (!cuda_device_available(&reason)) throw std::runtime_error("CUDA device not available: " + reason);
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count)
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                                " present)");
  m.device = device;
  check(cudaSetDevice(device), "cudaSetDevice");
  m.device_name = cuda_device_name(device);
  int major = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  if (major < 8)
    throw std::runtime_error("CUDA device " + std::to_string(device) + " is " + m.device_name +
                             "; the kernels need compute capability 8.0 or newer");
  // A blocking stream: it waits for work on the legacy default stream, where DevBuf::upload's plain
  // cudaMemcpy runs (a pageable host-to-device cudaMemcpy may return before its DMA has landed).
  check(cudaStreamCreate(&m.stream), "cudaStreamCreate");

  m.file = std::make_unique<RqFile>(path);
  m.spec = parse_rq_spec(m.file->metadata());
  check_rq_tensors(*m.file, m.spec);
  { DiT validate(*m.file, m.spec); }  // the CPU model's checks: weight codes, row sums, plans (FormatError)

  const ModelConfig& c = m.spec.model;
  m.info = make_engine_info(path, *m.file, m.spec, 1);

  RqFile& f = *m.file;
  auto entry = [&](const std::string& name) -> const TensorEntry& {
    const TensorEntry* t = f.find(name);
    if (t == nullptr) throw FormatError("missing tensor '" + name + "'");
    return *t;
  };
  auto up_f32 = [&](DevBuf<float>& dst, const std::string& name) {
    const TensorEntry& t = entry(name);
    dst.upload(f.f32(t), static_cast<size_t>(t.numel()));
  };
  up_f32(m.patch_w, "x_embedder.proj.weight");
  up_f32(m.patch_b, "x_embedder.proj.bias");
  up_f32(m.pos, "pos_embed");
  up_f32(m.table, "y_embedder.embedding_table.weight");
  for (const LinearShape& s : m.info.linears) {
    auto L = std::make_unique<DevLinear>();
    L->name = s.name;
    L->in = s.in;
    L->out = s.out;
    up_f32(L->bias, s.name + ".bias");
    const LayerQuantSpec* q = m.spec.layer(s.name);
    if (q == nullptr) {
      up_f32(L->weight, s.name + ".weight");
    } else {
      L->quant = true;
      L->format = q->weight;
      L->act_bits = q->act_bits;
      L->clip_k = q->clip_k;
      const HadamardPlan plan = make_hadamard_plan(s.in, q->hadamard, q->hadamard_block);
      L->form = static_cast<int>(plan.form);
      L->K = plan.K;
      L->M = plan.M;
      L->norm = plan.norm;
      if (plan.form != HadamardForm::None && s.in > cuda::kMaxHadamardWidth)
        throw std::runtime_error("layer '" + s.name + "': width " + std::to_string(s.in) +
                                 " exceeds the CUDA Hadamard kernel's limit of " +
                                 std::to_string(cuda::kMaxHadamardWidth));
      if (plan.K > 1) L->base.upload(plan.base.data(), plan.base.size());
      L->pc = packed_cols(q->weight, s.in);
      const TensorEntry& pk = entry(s.name + ".weight_packed");
      L->packed.upload(f.u8(pk), static_cast<size_t>(pk.numel()));
      up_f32(L->wscale, s.name + ".weight_scale");
      const TensorEntry& ws = entry(s.name + ".weight_sum");
      L->wsum.upload(f.i32(ws), static_cast<size_t>(ws.numel()));
      L->rank = q->rank;
      if (q->rank > 0) {
        up_f32(L->down, s.name + ".lowrank_down.weight");
        up_f32(L->up, s.name + ".lowrank_up.weight");
      }
      m.max_rank = std::max(m.max_rank, q->rank);
    }
    m.max_in = std::max(m.max_in, s.in);
    m.by_name[s.name] = L.get();
    m.linears.push_back(std::move(L));
  }
  m.t_fc1 = m.find("t_embedder.mlp.0");
  m.t_fc2 = m.find("t_embedder.mlp.2");
  m.final_ada = m.find("final_layer.adaLN_modulation.1");
  m.final_linear = m.find("final_layer.linear");
  for (int64_t b = 0; b < c.depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    m.blocks.push_back({m.find(p + "adaLN_modulation.1"), m.find(p + "attn.qkv"), m.find(p + "attn.proj"),
                        m.find(p + "mlp.fc1"), m.find(p + "mlp.fc2")});
  }
}

CudaEngine::~CudaEngine() = default;

const EngineInfo& CudaEngine::info() const { return impl_->info; }
std::string CudaEngine::device_name() const { return impl_->device_name; }

void CudaEngine::forward(const float* x, int64_t N, const int64_t* t, const int64_t* y, float* out) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  if (N < 0) throw std::invalid_argument("batch size must be >= 0");
  m.check_labels(y, N);
  if (N == 0) return;
  check(cudaSetDevice(m.device), "cudaSetDevice");
  m.ensure_workspace(N);
  m.load_inputs(x, cudaMemcpyHostToDevice, N, false, t, y, N);
  m.run_forward(N);
  const ModelConfig& c = m.spec.model;
  m.download(out, m.out.get(), static_cast<size_t>(N * c.out_channels() * c.input_size * c.input_size));
}

void CudaEngine::linear(const std::string& name, const float* x, int64_t T, float* out) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  DevLinear& L = *m.find(name);
  if (T < 0) throw std::invalid_argument("T must be >= 0");
  if (T == 0) return;
  check(cudaSetDevice(m.device), "cudaSetDevice");
  DevBuf<float> xd, yd;
  xd.upload(x, static_cast<size_t>(T * L.in));
  yd.alloc(static_cast<size_t>(T * L.out));
  Scratch s;
  m.run_linear(L, xd.get(), T, yd.get(), s);
  m.download(out, yd.get(), static_cast<size_t>(T * L.out));
}

void CudaEngine::quantize_input(const std::string& name, const float* x, int64_t T, uint8_t* codes, float* scale,
                                float* zero) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  DevLinear& L = *m.find(name);
  if (!L.quant || L.act_bits == 0) throw std::invalid_argument("layer '" + name + "' does not quantize its input");
  if (T <= 0) throw std::invalid_argument("T must be >= 1");
  check(cudaSetDevice(m.device), "cudaSetDevice");
  DevBuf<float> xd;
  xd.upload(x, static_cast<size_t>(T * L.in));
  Scratch s;
  s.ensure(T, m.max_in, m.max_rank);
  const cuda::HadamardQuantArgs a = Impl::hadamard_quant_args(L, xd.get(), T, s);
  cuda::hadamard_quantize(a, m.stream);
  const int64_t ld = cuda::codes_ld(L.in);
  check(cudaMemcpy2DAsync(codes, static_cast<size_t>(L.in), s.codes.get(), static_cast<size_t>(ld),
                          static_cast<size_t>(L.in), static_cast<size_t>(T), cudaMemcpyDeviceToHost, m.stream),
        "download codes");
  check(cudaMemcpyAsync(scale, s.sx.get(), sizeof(float) * T, cudaMemcpyDeviceToHost, m.stream), "download scale");
  check(cudaMemcpyAsync(zero, s.zx.get(), sizeof(float) * T, cudaMemcpyDeviceToHost, m.stream), "download zero");
  check(cudaStreamSynchronize(m.stream), "quantize_input");
}

std::string CudaEngine::default_cfg_mode() const { return robuq::default_cfg_mode(impl_->spec); }

bool CudaEngine::default_clip_denoised() const { return robuq::default_clip_denoised(impl_->spec); }

void CudaEngine::sample(const int64_t* classes, int64_t n, const SampleParams& p, float* out,
                        const ProgressFn& progress) {
  Impl& m = *impl_;
  const ModelConfig& c = m.spec.model;
  const SamplePlan plan = plan_sample(m.spec, classes, n, p);  // the CPU engine's checks and defaults
  const SampleOptions& opt = plan.opt;
  const bool cfg = plan.cfg;
  const int64_t C = c.in_channels, HW = c.input_size * c.input_size, per = C * HW, cout = c.out_channels();
  const int64_t B = cfg ? 2 * n : n;
  const int64_t guided = plan.guided * HW;
  const int64_t K = plan.sched.size();
  std::vector<int64_t> tb(static_cast<size_t>(B));
  // The reverse process of sample_loop (engine/diffusion.cpp) with x, the noise and the model output kept on
  // the device: per step only the timestep embedding and labels go up; x comes down once at the end. The
  // update and the noise run engine/sampler_step.h, the CPU sampler's own source (docs/cuda.md).
  DevBuf<float> x, noise;
  DevBuf<uint64_t> seeds;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    check(cudaSetDevice(m.device), "cudaSetDevice");
    x.alloc(static_cast<size_t>(n * per));
    noise.alloc(static_cast<size_t>(n * per));
    if (!opt.seeds.empty()) seeds.upload(opt.seeds.data(), opt.seeds.size());
    if (opt.x_T != nullptr)
      x.upload(opt.x_T, static_cast<size_t>(n * per));
    else
      cuda::gaussian(opt.seed, seeds.get(), 0, n, per, x.get(), m.stream);
  }
  for (int64_t i = 0; i < K; ++i) {
    const int64_t t = K - 1 - i;
    {
      // Locked per step, as Engine::sample locks per model call: the progress callback runs between steps
      // and may use this engine.
      std::lock_guard<std::mutex> lock(m.mutex);
      check(cudaSetDevice(m.device), "cudaSetDevice");
      m.ensure_workspace(B);  // a forward of another batch size in between may have resized it
      std::fill(tb.begin(), tb.end(), plan.sched.timestep_map[t]);
      m.load_inputs(x.get(), cudaMemcpyDeviceToDevice, n, cfg, tb.data(), plan.labels.data(), B);
      m.run_forward(B);
      const float* res = m.out.get();
      if (cfg) {
        cuda::cfg_combine(m.out.get(), n, cout * HW, guided, static_cast<float>(p.cfg_scale), m.cfg_out.get(),
                          m.stream);
        res = m.cfg_out.get();
      }
      const bool need_noise = t > 0 && (opt.sampler == Sampler::DDPM || opt.eta != 0.0);
      if (need_noise) cuda::gaussian(opt.seed, seeds.get(), static_cast<uint64_t>(1 + i), n, per, noise.get(), m.stream);
      cuda::sampler_step(step_scalars(plan.sched, t, opt), x.get(), res, n, per, cout * HW,
                         need_noise ? noise.get() : nullptr, m.stream);
      check(cudaStreamSynchronize(m.stream), "sampling step");
    }
    if (progress && !progress(i + 1, K)) throw std::runtime_error("sampling interrupted");
  }
  std::lock_guard<std::mutex> lock(m.mutex);
  check(cudaSetDevice(m.device), "cudaSetDevice");
  m.download(out, x.get(), static_cast<size_t>(n * per));
}

double CudaEngine::time_forward(int64_t N, int iters) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  if (m.ws_n != N) throw std::invalid_argument("time_forward: run forward() on a batch of this size first");
  if (iters < 1) throw std::invalid_argument("iters must be >= 1");
  check(cudaSetDevice(m.device), "cudaSetDevice");
  struct Event {  // destroyed on every path, a throwing check included
    cudaEvent_t e = nullptr;
    Event() { check(cudaEventCreate(&e), "cudaEventCreate"); }
    ~Event() { cudaEventDestroy(e); }
  } a, b;
  check(cudaEventRecord(a.e, m.stream), "cudaEventRecord");
  m.run_forward(N);  // capture (when graphs are on) outside the timed region
  check(cudaEventRecord(a.e, m.stream), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) m.run_forward(N);
  check(cudaEventRecord(b.e, m.stream), "cudaEventRecord");
  check(cudaEventSynchronize(b.e), "forward");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, a.e, b.e), "cudaEventElapsedTime");
  return static_cast<double>(ms) / iters;
}

void CudaEngine::set_graphs(bool on) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  m.use_graphs = on;
  if (!on) m.drop_graph();
}

std::string CudaEngine::graph_status() const {
  const Impl& m = *impl_;
  return m.graphs_ok ? std::string() : m.graph_fallback_reason;
}

std::vector<std::pair<std::string, double>> CudaEngine::profile_forward(int64_t N) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  if (m.ws_n != N) throw std::invalid_argument("profile_forward: run forward() on a batch of this size first");
  check(cudaSetDevice(m.device), "cudaSetDevice");
  std::vector<Impl::Mark> marks;
  cudaEvent_t start;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventRecord(start, m.stream), "cudaEventRecord");
  m.marks = &marks;
  try {
    m.device_forward(N);
  } catch (...) {
    m.marks = nullptr;
    for (auto& k : marks) cudaEventDestroy(k.ev);
    cudaEventDestroy(start);
    throw;
  }
  m.marks = nullptr;
  check(cudaStreamSynchronize(m.stream), "profile_forward");
  static const char* names[] = {"quantize", "lowrank", "gemm", "small_gemm", "attention", "norm", "other"};
  double sums[static_cast<int>(Impl::Part::Count)] = {};
  cudaEvent_t prev = start;
  for (const auto& k : marks) {
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, prev, k.ev), "cudaEventElapsedTime");
    sums[static_cast<int>(k.part)] += ms;
    prev = k.ev;
  }
  for (auto& k : marks) cudaEventDestroy(k.ev);
  cudaEventDestroy(start);
  std::vector<std::pair<std::string, double>> res;
  for (int i = 0; i < static_cast<int>(Impl::Part::Count); ++i) res.emplace_back(names[i], sums[i]);
  return res;
}

double CudaEngine::time_linear(const std::string& name, int64_t T, int iters, bool gemm_only) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  DevLinear& L = *m.find(name);
  if (T < 1 || iters < 1) throw std::invalid_argument("time_linear: T and iters must be >= 1");
  check(cudaSetDevice(m.device), "cudaSetDevice");
  std::vector<float> host(static_cast<size_t>(T * L.in));
  uint64_t st = 0x9e3779b97f4a7c15ull;
  for (float& v : host) {  // a fixed pseudo-random input (xorshift), roughly unit scale
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    v = static_cast<float>(static_cast<int64_t>(st >> 40) - (int64_t{1} << 23)) / static_cast<float>(1 << 22);
  }
  DevBuf<float> xd, yd;
  xd.upload(host.data(), host.size());
  yd.alloc(static_cast<size_t>(T * L.out));
  Scratch s;
  m.run_linear(L, xd.get(), T, yd.get(), s);  // warm-up; leaves the codes for gemm_only
  const bool gemv = L.quant && L.act_bits > 0 && cuda::qgemv_applies(T);
  const bool fast = L.quant && L.act_bits > 0 && !gemv && cuda::qgemm_fast_applies(L.format, L.in);
  if (gemm_only && !(L.quant && L.act_bits > 0)) throw std::invalid_argument("gemm_only needs a layer with quantized activations");
  struct Event {
    cudaEvent_t e = nullptr;
    Event() { check(cudaEventCreate(&e), "cudaEventCreate"); }
    ~Event() { cudaEventDestroy(e); }
  } a, b;
  cuda::Epilogue e;
  e.bias = L.bias.get();
  e.wscale = L.wscale.get();
  e.wsum = L.wsum.get();
  check(cudaEventRecord(a.e, m.stream), "cudaEventRecord");
  for (int i = 0; i < iters; ++i) {
    if (!gemm_only)
      m.run_linear(L, xd.get(), T, yd.get(), s);
    else if (gemv)
      cuda::qgemv(L.format, s.codes.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(), s.zx.get(), e, yd.get(),
                  m.stream);
    else if (fast)
      cuda::qgemm_ternary_fast(s.codes.get(), s.rowsum.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(),
                               s.zx.get(), e, yd.get(), m.stream);
    else
      cuda::qgemm(L.format, s.codes.get(), T, L.in, L.packed.get(), L.pc, L.out, s.sx.get(), s.zx.get(), e, yd.get(),
                  m.stream);
  }
  check(cudaEventRecord(b.e, m.stream), "cudaEventRecord");
  check(cudaEventSynchronize(b.e), "time_linear");
  float ms = 0.0f;
  check(cudaEventElapsedTime(&ms, a.e, b.e), "cudaEventElapsedTime");
  return static_cast<double>(ms) / iters;
}

}  // namespace robuq
