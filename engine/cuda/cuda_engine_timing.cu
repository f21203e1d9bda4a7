// robuq::CudaEngine's measurement entry points (cuda_engine.h): CUDA-event timings of the forward and of
// one layer, the per-part profile, and the CUDA-graph switch.
#include "cuda_engine_impl.cuh"

namespace robuq {

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
  if (gemm_only && !(L.quant && L.act_bits > 0))
    throw std::invalid_argument("gemm_only needs a layer with quantized activations");
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
