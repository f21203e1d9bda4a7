// Launchers of the CUDA kernels (kernels/cuda/*.cu). Every pointer is device memory; every launcher runs
// on `stream` and returns without synchronising. Shapes are validated by the caller (the CUDA engine),
// which builds these structs once per layer at load time. Arithmetic: host_device_math.h; design: docs/cuda.md.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "robuq/format.h"

namespace robuq {
namespace cuda {

// Throws std::runtime_error naming `what` and the CUDA error when err != cudaSuccess.
void check(cudaError_t err, const char* what);

// A block may use 48 KB of shared memory, static and dynamic together, unless the kernel opts in to more.
// Opt in when the kernel's static shared memory plus `dynamic` bytes exceed that (comparing `dynamic` alone
// would miss a dynamic size of exactly 48 KB next to a few static bytes).
// The device's limit is checked first (a clear error instead of a failed launch). Sizes already granted on a
// device are remembered, so the steady state makes no attribute calls (once per kernel, not per launch).
template <class Kernel>
void allow_dynamic_smem(Kernel kernel, size_t dynamic, const char* what) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> granted;  // (device, kernel) -> largest size checked
  int dev = 0;
  check(cudaGetDevice(&dev), what);
  const std::pair<int, const void*> key(dev, reinterpret_cast<const void*>(kernel));
  std::lock_guard<std::mutex> lock(mu);
  auto it = granted.find(key);
  if (it != granted.end() && it->second >= dynamic) return;
  cudaFuncAttributes attr{};
  check(cudaFuncGetAttributes(&attr, kernel), what);
  int optin = 0;
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), what);
  if (attr.sharedSizeBytes + dynamic > static_cast<size_t>(optin))
    throw std::invalid_argument(std::string(what) + ": needs " + std::to_string(attr.sharedSizeBytes + dynamic) +
                                " bytes of shared memory per block, the device allows " + std::to_string(optin));
  if (attr.sharedSizeBytes + dynamic > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic)), what);
  granted[key] = dynamic;
}

// Activation codes of a quantized layer are stored with rows of ld bytes, ld = in rounded up to 64 (the fast
// ternary GEMM's k step; the general GEMM steps by kKTile = 32); columns in .. ld - 1 hold code 0.
constexpr int kKTile = 32;
constexpr int kCodesAlign = 64;
__host__ __device__ inline int64_t codes_ld(int64_t in) { return (in + kCodesAlign - 1) / kCodesAlign * kCodesAlign; }

// --------------------------------------------------------------------- fused Hadamard + quantize
struct HadamardQuantArgs {
  int64_t T = 0, n = 0;
  int form = 0;  // 0 none, 1 full (K * M), 2 block (K = 1, M = block)
  int64_t K = 1, M = 1;
  float norm = 1.0f;
  const int8_t* base = nullptr;  // H_K [K, K] on the device (K > 1)
  int bits = 0;                  // 1..8, or 0: transform only (rotated must be set)
  float clip_k = 0.0f;           // <= 0 minmax, > 0 gauss
  const float* x = nullptr;      // [T, n]
  uint8_t* codes = nullptr;      // [T, codes_ld(n)] (bits > 0)
  float* scale = nullptr;        // [T]
  float* zero = nullptr;         // [T]
  float* rotated = nullptr;      // [T, n] or null
  int interleave = 0;            // 1: code k stored at host_device::interleave16(k) (the fast ternary GEMM's layout)
  int32_t* rowsum = nullptr;     // [T] sum of each row's codes, or null
  // The low-rank down-projection fused in (lr_rank > 0): lr_u[t, j] = sum_k rotated[t, k] lr_down[j, k], k
  // ascending (rowdot_f32's bits), from the rotated row in shared memory.
  int lr_rank = 0;
  const float* lr_down = nullptr;  // [lr_rank, n]
  float* lr_u = nullptr;           // [T, lr_rank]
};
// Largest rank the fused low-rank pass takes.
constexpr int kMaxFusedRank = 64;
// Whether the engine fuses the low-rank down-projection into hadamard_quantize (default off until measured
// on a GPU; docs/cuda.md). Process-wide, read when a forward is launched or captured.
void set_lowrank_fused(bool on);
bool lowrank_fused();
// Largest row width the fused kernel takes (the row and its K-mix scratch live in shared memory).
constexpr int64_t kMaxHadamardWidth = 12288;
void hadamard_quantize(const HadamardQuantArgs& a, cudaStream_t stream);

// ---------------------------------------------------------------------------- quantized linear
// y[t, r] = post(scale[t] s[r] (acc - zero[t] wsum[r]) + lowrank + bias), then either stored or added to a
// residual: y_out[t, r] = resid[t, r] + gate[t / rows_per_gate, r] * y (resid may equal y_out).
struct Epilogue {
  const float* wscale = nullptr;  // [out]
  const int32_t* wsum = nullptr;  // [out]
  const float* bias = nullptr;    // [out] or null
  int64_t rank = 0;
  const float* u = nullptr;     // [T, rank]: rotated x @ down^T (lowrank_down)
  const float* up = nullptr;    // [out, rank]
  int gelu = 0;                 // 1: GELU (tanh) after the bias
  const float* gate = nullptr;  // null: plain store; else gated residual
  int64_t gate_stride = 0;      // floats between gate rows
  int64_t rows_per_gate = 1;    // tokens per sample
  const float* resid = nullptr;
};

// Ternary / int4 / int8 (format 0 / 1 / 2) weights in the file layout [out, pc] x activation codes
// [T, codes_ld(in)] on the int8 tensor cores (mma.sync m16n8k32 u8 x s8 -> s32).
void qgemm(WeightFormat format, const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
           int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y, cudaStream_t stream);

// The ternary fast path (docs/cuda.md): weights ternary, in % 64 == 0, codes written by hadamard_quantize
// with interleave = 1 and their row sums. qgemm_fast_applies says whether qgemm_ternary_fast takes a layer
// (so the engine knows which code layout to ask for).
bool qgemm_fast_applies(WeightFormat format, int64_t in);
void qgemm_ternary_fast(const uint8_t* codes, const int32_t* rowsum, int64_t T, int64_t in, const uint8_t* packed,
                        int64_t pc, int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y,
                        cudaStream_t stream);
// Few rows (T <= kGemvMaxRows, codes in the plain layout): one warp per output, dp4a. qgemv_applies says
// whether the engine uses it for T rows.
constexpr int kGemvMaxRows = 16;
bool qgemv_applies(int64_t T);
void qgemv(WeightFormat format, const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
           int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y, cudaStream_t stream);
// GEMM kernel choice, for measurements (python -m robuq.bench.gpu --gemm-variants): 0 automatic (default),
// 1 the general kernel for every layer (and no GEMV), 2..kGemmVariants a fixed tile shape of the fast kernel
// (see qgemm.cu). Process-wide.
constexpr int kGemmVariants = 16;
void set_gemm_variant(int v);
int gemm_variant();

// Float activations with quantized weights: y = s[r] * sum_k xr[t, k] code[r, k] (k ascending) + epilogue.
void qlinear_float_act(WeightFormat format, const float* xr, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
                       int64_t out, const Epilogue& e, float* y, cudaStream_t stream);

// u[t, j] = sum_k x[t, k] w[j, k] (k ascending, float32): the low-rank down-projection.
void rowdot_f32(const float* x, int64_t T, int64_t in, const float* w, int64_t out, float* u, cudaStream_t stream);

// Dense float32 linear with the same epilogue fields (wscale / wsum / u unused): y = x @ W^T + b.
void linear_f32(const float* x, int64_t T, int64_t in, const float* W, int64_t out, const Epilogue& e, float* y,
                cudaStream_t stream);

// ---------------------------------------------------------------------------------- other ops
void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out, cudaStream_t stream);
void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out, cudaStream_t stream);
// x[r, k] += pos[r % T, k]
void add_pos_embed(float* x, const float* pos, int64_t NT, int64_t T, int64_t D, cudaStream_t stream);
// c[n, k] = temb[n, k] + table[y[n], k]; silu_c = silu(c)
void label_embed_silu(const float* temb, const float* table, const int64_t* y, int64_t N, int64_t D, float* c,
                      float* silu_c, cudaStream_t stream);
// x = silu(x), in place
void silu_inplace(float* x, int64_t n, cudaStream_t stream);
// y = LayerNorm(x) * (1 + scale) + shift per row of x [N * T, D]; shift / scale rows `stride` apart.
void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, cudaStream_t stream);
// Attention core as ops::attention: qkv [N * T, 3D] -> out [N * T, D]; work [N * T, 3D] floats (the
// fake-quantized q, k, v when bits > 0).
void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim, int bits, float* out, float* work,
               cudaStream_t stream);
// Classifier-free guidance: out[i] = guided channels uncond + s (cond - uncond), others cond, for
// ob = [cond (n samples); uncond (n samples)] of per = cout * HW floats each.
void cfg_combine(const float* ob, int64_t n, int64_t per, int64_t guided, float scale, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace robuq
