// robuq::CudaEngine (see cuda_engine.h): the DiT forward of engine/dit.cpp on the device, layer for layer,
// with the kernels of kernels/cuda/. Simple by design: one stream, one workspace per batch size, every
// tensor uploaded once at load time in the file's own layout (ternary and int4 weights stay packed).
#include "cuda_engine_impl.cuh"

namespace robuq {

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
      if (need_noise)
        cuda::gaussian(opt.seed, seeds.get(), static_cast<uint64_t>(1 + i), n, per, noise.get(), m.stream);
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

}  // namespace robuq
