// Fused online Hadamard transform + per-token quantization: one thread block per token row, the row in
// shared memory, one read of x and one write of the codes (and, for the low-rank branch, of the rotated
// row). The arithmetic is host_device_math.h's, in the reference's operation order, so the codes, scales and zero
// points equal robuq::ref::hadamard_quantize bit for bit (docs/cuda.md).
#include <stdexcept>
#include <string>

#include "host_device_math.h"
#include "kernels.cuh"

namespace robuq {
namespace cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) v = host_device::fmin_hd(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = host_device::fmax_hd(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

constexpr int kLrChunk = 256;  // columns per chunk of the fused low-rank pass

// Dynamic shared memory: row[n] | mix[n] and H_K (K > 1) | low-rank products [rank][kLrChunk + 1].
__host__ __device__ inline size_t lowrank_offset(const HadamardQuantArgs& a) {
  const size_t base = a.K > 1 ? sizeof(float) * static_cast<size_t>(2 * a.n) + static_cast<size_t>(a.K * a.K)
                              : sizeof(float) * static_cast<size_t>(a.n);
  return (base + 15) / 16 * 16;
}

// Shared memory: row[n] | mix[n] (K > 1) ; small statics for the reductions.
__global__ void __launch_bounds__(kThreads) hadamard_quantize_kernel(HadamardQuantArgs a) {
  extern __shared__ float smem[];
  __shared__ float red_min[kThreads / 32], red_max[kThreads / 32];
  __shared__ int red_sum[kThreads / 32];
  __shared__ double lanes[kStatLanes];
  __shared__ host_device::QuantParams qp;

  const int n = static_cast<int>(a.n);
  const int tid = threadIdx.x;
  const int64_t t = blockIdx.x;
  float* row = smem;
  const float* src = a.x + t * a.n;
  for (int i = tid; i < n; i += kThreads) row[i] = src[i];
  if (a.form != 0 && a.K > 1) {
    int8_t* H = reinterpret_cast<int8_t*>(smem + 2 * n);
    for (int i = tid; i < a.K * a.K; i += kThreads) H[i] = a.base[i];
  }
  __syncthreads();

  if (a.form != 0) {
    // Walsh-Hadamard stages over every length-M segment: stage h pairs (i, i + h) with bit h of i clear.
    const int M = static_cast<int>(a.M);
    const int half = n / 2;
    for (int h = 1; h < M; h *= 2) {
      for (int p = tid; p < half; p += kThreads) {
        const int i = (p / h) * 2 * h + (p % h);  // the p-th index with bit h clear (segments are aligned)
        host_device::butterfly(row[i], row[i + h]);
      }
      __syncthreads();
    }
    if (a.K > 1) {
      float* mix = smem + n;
      const int K = static_cast<int>(a.K);
      // host_device::kmix_value for four outputs at a time (four independent chains, each in kmix_value's order),
      // with H_K in shared memory (loaded at the start, after row and mix)
      const int8_t* H = reinterpret_cast<const int8_t*>(smem + 2 * n);
      for (int i0 = 0; i0 < n; i0 += 4 * kThreads) {
        float y[4];
        int cc[4], bb[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = i0 + tid + e * kThreads;
          cc[e] = i < n ? i / M : 0;
          bb[e] = i < n ? i % M : 0;
          y[e] = H[cc[e]] > 0 ? row[bb[e]] : -row[bb[e]];
        }
        for (int aa = 1; aa < K; ++aa) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float v = row[aa * M + bb[e]];
            y[e] = H[aa * K + cc[e]] > 0 ? y[e] + v : y[e] - v;
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (i0 + tid + e * kThreads < n) mix[i0 + tid + e * kThreads] = y[e];
      }
      __syncthreads();
      for (int i = tid; i < n; i += kThreads) row[i] = mix[i] * a.norm;
    } else {
      for (int i = tid; i < n; i += kThreads) row[i] = row[i] * a.norm;
    }
    __syncthreads();
  }
  if (a.rotated != nullptr) {
    float* dst = a.rotated + t * a.n;
    for (int i = tid; i < n; i += kThreads) dst[i] = row[i];
  }
  if (a.lr_rank > 0) {
    // Products of a chunk of columns for every output by all threads (row[k] * down[j, k], rounded as in
    // the serial loop), then thread j adds its chunk in k order: the serial chain reads shared memory only.
    float* prod = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + lowrank_offset(a));
    const int R = a.lr_rank;
    float acc = 0.0f;
    for (int k0 = 0; k0 < n; k0 += kLrChunk) {
      const int kc = n - k0 < kLrChunk ? n - k0 : kLrChunk;
      __syncthreads();  // the row is final / the previous chunk is consumed
      for (int idx = tid; idx < R * kLrChunk; idx += kThreads) {
        const int j = idx / kLrChunk, c = idx % kLrChunk;
        if (c < kc) prod[j * (kLrChunk + 1) + c] = row[k0 + c] * a.lr_down[static_cast<int64_t>(j) * n + k0 + c];
      }
      __syncthreads();
      if (tid < R) {
        const float* pj = prod + tid * (kLrChunk + 1);
        for (int c = 0; c < kc; ++c) acc = acc + pj[c];
      }
    }
    if (tid < R) a.lr_u[t * R + tid] = acc;
  }
  if (a.bits == 0) return;

  // min / max: exact in any order
  float mn = row[0], mx = row[0];
  for (int i = tid; i < n; i += kThreads) {
    mn = host_device::fmin_hd(mn, row[i]);
    mx = host_device::fmax_hd(mx, row[i]);
  }
  mn = warp_min(mn);
  mx = warp_max(mx);
  if ((tid & 31) == 0) {
    red_min[tid >> 5] = mn;
    red_max[tid >> 5] = mx;
  }
  __syncthreads();
  if (a.clip_k > 0.0f) {
    // gauss: each of the 8 float64 lanes summed by one thread in the reference order
    if (tid < kStatLanes) lanes[tid] = host_device::lane_partial(row, n, tid, 0.0, false);
    __syncthreads();
    const double mean = host_device::combine_lanes(lanes) / static_cast<double>(n);
    __syncthreads();
    if (tid < kStatLanes) lanes[tid] = host_device::lane_partial(row, n, tid, mean, true);
    __syncthreads();
    if (tid == 0) {
      for (int w = 1; w < kThreads / 32; ++w) {
        mn = host_device::fmin_hd(mn, red_min[w]);
        mx = host_device::fmax_hd(mx, red_max[w]);
      }
      mn = host_device::fmin_hd(mn, red_min[0]);
      mx = host_device::fmax_hd(mx, red_max[0]);
      qp = host_device::quant_params(
          host_device::clip_gauss(mn, mx, mean, host_device::combine_lanes(lanes), n, a.clip_k), a.bits);
    }
  } else if (tid == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      mn = host_device::fmin_hd(mn, red_min[w]);
      mx = host_device::fmax_hd(mx, red_max[w]);
    }
    qp = host_device::quant_params(host_device::clip_minmax(mn, mx), a.bits);
  }
  __syncthreads();
  const host_device::QuantParams p = qp;
  const int ld = static_cast<int>(codes_ld(a.n));
  uint8_t* codes = a.codes + t * ld;
  int sum = 0;
  for (int i = tid; i < ld; i += kThreads) {
    const int c = i < n ? host_device::quant_code(row[i], p) : 0;
    sum += c;
    codes[a.interleave ? host_device::interleave16(i) : i] = static_cast<uint8_t>(c);
  }
  if (a.rowsum != nullptr) {  // exact integer sum, any order
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((tid & 31) == 0) red_sum[tid >> 5] = sum;
    __syncthreads();
    if (tid == 0) {
      int total = 0;
      for (int w = 0; w < kThreads / 32; ++w) total += red_sum[w];
      a.rowsum[t] = total;
    }
  }
  if (tid == 0) {
    a.scale[t] = p.scale;
    a.zero[t] = p.zero;
  }
}

}  // namespace

namespace {
bool g_lowrank_fused = false;
}  // namespace
void set_lowrank_fused(bool on) { g_lowrank_fused = on; }
bool lowrank_fused() { return g_lowrank_fused; }

void hadamard_quantize(const HadamardQuantArgs& a, cudaStream_t stream) {
  if (a.T == 0) return;
  if (a.n < 1 || a.n > kMaxHadamardWidth)
    throw std::invalid_argument("hadamard_quantize: width " + std::to_string(a.n) + " outside 1.." +
                                std::to_string(kMaxHadamardWidth));
  if (a.bits == 0 && a.rotated == nullptr && a.lr_rank == 0)
    throw std::invalid_argument("hadamard_quantize: nothing to write");
  if (a.form != 0 && (a.n % a.M != 0 || (a.form == 1 && a.K * a.M != a.n)))
    throw std::invalid_argument("hadamard_quantize: plan does not match the width");
  if (a.lr_rank < 0 || a.lr_rank > kMaxFusedRank || (a.lr_rank > 0 && (a.lr_down == nullptr || a.lr_u == nullptr)))
    throw std::invalid_argument("hadamard_quantize: fused low-rank rank must be 0.." + std::to_string(kMaxFusedRank));
  const size_t smem = a.lr_rank > 0
                          ? lowrank_offset(a) + sizeof(float) * static_cast<size_t>(a.lr_rank) * (kLrChunk + 1)
                          : (a.K > 1 ? sizeof(float) * static_cast<size_t>(2 * a.n) + static_cast<size_t>(a.K * a.K)
                                     : sizeof(float) * static_cast<size_t>(a.n));
  allow_dynamic_smem(hadamard_quantize_kernel, smem, "hadamard_quantize (shared memory)");
  hadamard_quantize_kernel<<<static_cast<unsigned>(a.T), kThreads, smem, stream>>>(a);
  check(cudaGetLastError(), "hadamard_quantize launch");
}

}  // namespace cuda
}  // namespace robuq
