// The DiT's other operations on the GPU, in float32 (statistics in float64 where the CPU engine uses it),
// following engine/ops.cpp and kernels/ref/ops_ref.cpp operation for operation: patchify / unpatchify, embeddings,
// LayerNorm + adaLN modulate (bit-identical to the CPU reference: the same 8 float64 lanes, each summed by one thread),
// attention (every dot product and the softmax sum in the reference's order; exp is host_device_math.h's) and the
// classifier-free-guidance combination of the sampler's model calls.
#include <cmath>
#include <stdexcept>
#include <string>

#include "host_device_math.h"
#include "kernels.cuh"

namespace robuq {
namespace cuda {
namespace {

constexpr int kEw = 256;  // threads of the element-wise kernels

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  if (b > 0x7fffffffLL) throw std::invalid_argument("too many elements for one launch");
  return static_cast<unsigned>(b);
}

__global__ void patchify_kernel(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out) {
  const int64_t g = S / p, F = C * p * p;
  const int64_t total = N * g * g * F;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t f = i % F, tok = i / F;
  const int64_t j = tok % g, ii = (tok / g) % g, n = tok / (g * g);
  const int64_t c = f / (p * p), pr = (f / p) % p, pc = f % p;
  out[i] = x[((n * C + c) * S + ii * p + pr) * S + j * p + pc];
}

__global__ void unpatchify_kernel(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out) {
  const int64_t S = grid * p;
  const int64_t total = N * C * S * S;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= total) return;
  const int64_t col = o % S, row = (o / S) % S, c = (o / (S * S)) % C, n = o / (C * S * S);
  const int64_t i = row / p, pr = row % p, j = col / p, pc = col % p;
  out[o] = feats[((n * grid + i) * grid + j) * (p * p * C) + (pr * p + pc) * C + c];
}

__global__ void add_pos_kernel(float* x, const float* pos, int64_t NT, int64_t T, int64_t D) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= NT * D) return;
  const int64_t r = i / D, k = i % D;
  x[i] = x[i] + pos[(r % T) * D + k];
}

__global__ void label_embed_silu_kernel(const float* temb, const float* table, const int64_t* y, int64_t N, int64_t D,
                                        float* c, float* silu_c) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * D) return;
  const int64_t n = i / D, k = i % D;
  const float v = temb[i] + table[y[n] * D + k];
  c[i] = v;
  silu_c[i] = host_device::silu_hd(v);
}

__global__ void silu_kernel(float* x, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = host_device::silu_hd(x[i]);
}

constexpr int kLnThreads = 128;

__global__ void __launch_bounds__(kLnThreads)
    layernorm_modulate_kernel(const float* x, int64_t T, int64_t D, const float* shift, const float* scale,
                              int64_t stride, float* y) {
  __shared__ double lanes[kStatLanes];
  __shared__ float stats[2];
  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const float* xr = x + r * D;
  if (tid < kStatLanes) lanes[tid] = host_device::lane_partial(xr, D, tid, 0.0, false);
  __syncthreads();
  const double mean = host_device::combine_lanes(lanes) / static_cast<double>(D);
  __syncthreads();
  if (tid < kStatLanes) lanes[tid] = host_device::lane_partial(xr, D, tid, mean, true);
  __syncthreads();
  if (tid == 0) host_device::layernorm_stats(mean, host_device::combine_lanes(lanes), D, &stats[0], &stats[1]);
  __syncthreads();
  const float m = stats[0], rstd = stats[1];
  const int64_t n = r / T;
  const float* sh = shift + n * stride;
  const float* sc = scale + n * stride;
  float* yr = y + r * D;
  for (int64_t k = tid; k < D; k += kLnThreads) yr[k] = host_device::modulate_hd(xr[k], m, rstd, sc[k], sh[k]);
}

// Fake quantization of one (token, head, q|k|v) row of head_dim floats: minmax codes, then (code - zero) * scale.
__global__ void attention_fake_quant_kernel(const float* qkv, int64_t rows, int64_t head_dim_, int bits, float* work) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // over NT * 3H segments
  if (row >= rows) return;
  host_device::fake_quant_row(qkv + row * head_dim_, head_dim_, bits, work + row * head_dim_);
}

constexpr int kAttThreads = 128;

// One block per (sample, head, kAttRows query rows): scores, softmax (max subtraction, sequential sum),
// optional probability grid, output rows. Each key and value row is read once for the block's query rows,
// and each thread carries kAttRows independent sums; every output is still computed by one thread in the
// reference's order (d ascending for scores, j ascending for the softmax sum and the output), so the
// results are those of one row per block. Dynamic shared memory: kAttRows x (T scores + head_dim query values).
constexpr int kAttRows = 4;
__global__ void __launch_bounds__(kAttThreads)
    attention_kernel(const float* qkv, int64_t T, int64_t H, int64_t head_dim_, float score_scale, float levels,
                     float* out) {
  extern __shared__ float sm[];
  __shared__ float red[kAttRows][kAttThreads / 32];
  __shared__ float inv_sum[kAttRows];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kAttRows, h = blockIdx.y, n = blockIdx.z;
  const int rows = static_cast<int>(T - i0 < kAttRows ? T - i0 : kAttRows);
  const int tid = threadIdx.x;
  const int64_t D = H * head_dim_, row3 = 3 * D;
  float* s = sm;                 // [kAttRows][T]
  float* q = sm + kAttRows * T;  // [kAttRows][head_dim]
  for (int r = 0; r < kAttRows; ++r) {
    const int64_t ir = i0 + (r < rows ? r : 0);  // rows past T repeat the first one (never stored)
    const float* qrow = qkv + (n * T + ir) * row3 + h * head_dim_;
    for (int64_t d = tid; d < head_dim_; d += kAttThreads) q[r * head_dim_ + d] = qrow[d];
  }
  __syncthreads();
  float mx[kAttRows];
#pragma unroll
  for (int r = 0; r < kAttRows; ++r) mx[r] = -INFINITY;
  for (int64_t j = tid; j < T; j += kAttThreads) {
    const float* k = qkv + (n * T + j) * row3 + D + h * head_dim_;
    float acc[kAttRows];
#pragma unroll
    for (int r = 0; r < kAttRows; ++r) acc[r] = 0.0f;
    for (int64_t d = 0; d < head_dim_; ++d) {
      const float kd = k[d];
#pragma unroll
      for (int r = 0; r < kAttRows; ++r) acc[r] = acc[r] + q[r * head_dim_ + d] * kd;
    }
#pragma unroll
    for (int r = 0; r < kAttRows; ++r) {
      const float v = acc[r] * score_scale;
      s[r * T + j] = v;
      mx[r] = host_device::fmax_hd(mx[r], v);
    }
  }
#pragma unroll
  for (int r = 0; r < kAttRows; ++r) {
    for (int o = 16; o > 0; o >>= 1) mx[r] = host_device::fmax_hd(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], o));
    if ((tid & 31) == 0) red[r][tid >> 5] = mx[r];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kAttRows; ++r) {
    mx[r] = red[r][0];
    for (int w = 1; w < kAttThreads / 32; ++w) mx[r] = host_device::fmax_hd(mx[r], red[r][w]);
  }
  for (int64_t j = tid; j < T; j += kAttThreads)
#pragma unroll
    for (int r = 0; r < kAttRows; ++r) s[r * T + j] = host_device::exp_hd(s[r * T + j] - mx[r]);
  __syncthreads();
  if (tid < kAttRows) {
    float sum = 0.0f;
    for (int64_t j = 0; j < T; ++j) sum = sum + s[tid * T + j];
    inv_sum[tid] = 1.0f / sum;
  }
  __syncthreads();
  for (int64_t j = tid; j < T; j += kAttThreads)
#pragma unroll
    for (int r = 0; r < kAttRows; ++r) {
      float p = s[r * T + j] * inv_sum[r];
      if (levels > 0.0f) p = host_device::prob_grid(p, levels);
      s[r * T + j] = p;
    }
  __syncthreads();
  for (int64_t d = tid; d < head_dim_; d += kAttThreads) {
    const float* v = qkv + n * T * row3 + 2 * D + h * head_dim_ + d;
    float acc[kAttRows];
#pragma unroll
    for (int r = 0; r < kAttRows; ++r) acc[r] = 0.0f;
    for (int64_t j = 0; j < T; ++j) {
      const float vj = v[j * row3];
#pragma unroll
      for (int r = 0; r < kAttRows; ++r) acc[r] = acc[r] + s[r * T + j] * vj;
    }
    for (int r = 0; r < rows; ++r) out[(n * T + i0 + r) * D + h * head_dim_ + d] = acc[r];
  }
}

// The attention kernel used for head dims up to 2 * kAttThreads: one block per (sample, head, kAttRows2
// query rows); keys and values go through shared memory in chunks of kAttChunk rows (coalesced loads, row
// stride head_dim + 1 so that the threads of a warp, one key each, hit distinct banks). Every output is computed
// by one thread in the reference's order, as in attention_kernel: scores d ascending (one thread per (key,
// 2 query rows)), max over any order, exp, the sum j ascending (one thread per query row), probabilities,
// the output j ascending (one thread per (d, all query rows)). So its results are attention_kernel's bits.
constexpr int kAttRows2 = 8;
constexpr int kAttChunk = 32;
__global__ void __launch_bounds__(kAttThreads) attention_chunked_kernel(const float* qkv, int T, int H, int head_dim_,
                                                                        float score_scale, float levels, float* out) {
  static_assert(kAttThreads == 4 * 32 && kAttRows2 == 8, "4 warps x 2 query rows");
  extern __shared__ float sm[];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kAttRows2, h = blockIdx.y, n = blockIdx.z;
  const int rows = static_cast<int>(T - i0 < kAttRows2 ? T - i0 : kAttRows2);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t D = static_cast<int64_t>(H) * head_dim_, row3 = 3 * D;
  const int ld = head_dim_ + 1;
  float* q = sm;                         // [kAttRows2][head_dim]
  float* s = q + kAttRows2 * head_dim_;  // [kAttRows2][T]
  float* kv = s + kAttRows2 * T;         // [kAttChunk][head_dim + 1]
  const float* base = qkv + n * static_cast<int64_t>(T) * row3 + h * head_dim_;
  for (int idx = tid; idx < kAttRows2 * head_dim_; idx += kAttThreads) {
    const int r = idx / head_dim_, d = idx % head_dim_;
    const int64_t ir = i0 + (r < rows ? r : 0);  // rows past T repeat the first one (never stored)
    q[idx] = base[ir * row3 + d];
  }
  const int r0 = 2 * warp, r1 = 2 * warp + 1;
  for (int c0 = 0; c0 < T; c0 += kAttChunk) {
    const int nk = T - c0 < kAttChunk ? T - c0 : kAttChunk;
    __syncthreads();  // q written / the previous chunk consumed
    for (int idx = tid; idx < nk * head_dim_; idx += kAttThreads) {
      const int jj = idx / head_dim_, d = idx % head_dim_;
      kv[jj * ld + d] = base[static_cast<int64_t>(c0 + jj) * row3 + D + d];
    }
    __syncthreads();
    if (lane < nk) {
      float a0 = 0.0f, a1 = 0.0f;
      const float* kr = kv + lane * ld;
      for (int d = 0; d < head_dim_; ++d) {
        const float kd = kr[d];
        a0 = a0 + q[r0 * head_dim_ + d] * kd;
        a1 = a1 + q[r1 * head_dim_ + d] * kd;
      }
      s[r0 * T + c0 + lane] = a0 * score_scale;
      s[r1 * T + c0 + lane] = a1 * score_scale;
    }
  }
  __syncwarp();
  // softmax of the warp's two rows
  for (int rr = 0; rr < 2; ++rr) {
    float* sr = s + (r0 + rr) * T;
    float mx = -INFINITY;
    for (int j = lane; j < T; j += 32) mx = host_device::fmax_hd(mx, sr[j]);
    for (int o = 16; o > 0; o >>= 1) mx = host_device::fmax_hd(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    for (int j = lane; j < T; j += 32) sr[j] = host_device::exp_hd(sr[j] - mx);
  }
  __syncwarp();
  float inv = 0.0f;
  if (lane < 2) {
    const float* sr = s + (r0 + lane) * T;
    float sum = 0.0f;
    for (int j = 0; j < T; ++j) sum = sum + sr[j];
    inv = 1.0f / sum;
  }
  const float inv0 = __shfl_sync(0xffffffffu, inv, 0), inv1 = __shfl_sync(0xffffffffu, inv, 1);
  for (int rr = 0; rr < 2; ++rr) {
    float* sr = s + (r0 + rr) * T;
    const float iv = rr == 0 ? inv0 : inv1;
    for (int j = lane; j < T; j += 32) {
      float p = sr[j] * iv;
      if (levels > 0.0f) p = host_device::prob_grid(p, levels);
      sr[j] = p;
    }
  }
  // output: thread d (and d + kAttThreads) for every query row
  float acc[2][kAttRows2];
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int r = 0; r < kAttRows2; ++r) acc[e][r] = 0.0f;
  for (int c0 = 0; c0 < T; c0 += kAttChunk) {
    const int nk = T - c0 < kAttChunk ? T - c0 : kAttChunk;
    __syncthreads();  // probabilities written / the previous chunk consumed
    for (int idx = tid; idx < nk * head_dim_; idx += kAttThreads) {
      const int jj = idx / head_dim_, d = idx % head_dim_;
      kv[jj * ld + d] = base[static_cast<int64_t>(c0 + jj) * row3 + 2 * D + d];
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int d = tid + e * kAttThreads;
      if (d >= head_dim_) continue;
      for (int jj = 0; jj < nk; ++jj) {
        const float vj = kv[jj * ld + d];
#pragma unroll
        for (int r = 0; r < kAttRows2; ++r) acc[e][r] = acc[e][r] + s[r * T + c0 + jj] * vj;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int d = tid + e * kAttThreads;
    if (d >= head_dim_) continue;
#pragma unroll
    for (int r = 0; r < kAttRows2; ++r)
      if (r < rows) out[(n * T + i0 + r) * D + h * head_dim_ + d] = acc[e][r];
  }
}

__global__ void cfg_combine_kernel(const float* ob, int64_t n, int64_t per, int64_t guided, float scale, float* out) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= n * per) return;
  const int64_t i = o / per, j = o % per;
  const float cond = ob[i * per + j];
  if (j < guided) {
    const float uncond = ob[(n + i) * per + j];
    out[o] = uncond + scale * (cond - uncond);
  } else {
    out[o] = cond;
  }
}

}  // namespace

void patchify(const float* x, int64_t N, int64_t C, int64_t S, int64_t p, float* out, cudaStream_t stream) {
  const int64_t total = N * C * S * S;
  if (total == 0) return;
  patchify_kernel<<<blocks_for(total, kEw), kEw, 0, stream>>>(x, N, C, S, p, out);
  check(cudaGetLastError(), "patchify launch");
}

void unpatchify(const float* feats, int64_t N, int64_t grid, int64_t p, int64_t C, float* out, cudaStream_t stream) {
  const int64_t total = N * C * grid * p * grid * p;
  if (total == 0) return;
  unpatchify_kernel<<<blocks_for(total, kEw), kEw, 0, stream>>>(feats, N, grid, p, C, out);
  check(cudaGetLastError(), "unpatchify launch");
}

void add_pos_embed(float* x, const float* pos, int64_t NT, int64_t T, int64_t D, cudaStream_t stream) {
  if (NT * D == 0) return;
  add_pos_kernel<<<blocks_for(NT * D, kEw), kEw, 0, stream>>>(x, pos, NT, T, D);
  check(cudaGetLastError(), "add_pos_embed launch");
}

void label_embed_silu(const float* temb, const float* table, const int64_t* y, int64_t N, int64_t D, float* c,
                      float* silu_c, cudaStream_t stream) {
  if (N * D == 0) return;
  label_embed_silu_kernel<<<blocks_for(N * D, kEw), kEw, 0, stream>>>(temb, table, y, N, D, c, silu_c);
  check(cudaGetLastError(), "label_embed_silu launch");
}

void silu_inplace(float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  silu_kernel<<<blocks_for(n, kEw), kEw, 0, stream>>>(x, n);
  check(cudaGetLastError(), "silu launch");
}

void layernorm_modulate(const float* x, int64_t N, int64_t T, int64_t D, const float* shift, const float* scale,
                        int64_t stride, float* y, cudaStream_t stream) {
  if (N * T == 0) return;
  if (N * T > 0x7fffffffLL) throw std::invalid_argument("layernorm_modulate: too many rows");
  layernorm_modulate_kernel<<<static_cast<unsigned>(N * T), kLnThreads, 0, stream>>>(x, T, D, shift, scale, stride, y);
  check(cudaGetLastError(), "layernorm_modulate launch");
}

void attention(const float* qkv, int64_t N, int64_t T, int64_t H, int64_t head_dim_, int bits, float* out, float* work,
               cudaStream_t stream) {
  if (N * T == 0) return;
  if (T > 0x7fffffffLL || H > 65535 || N > 65535) throw std::invalid_argument("attention: shape too large");
  const float* src = qkv;
  if (bits > 0) {
    const int64_t rows = N * T * 3 * H;
    attention_fake_quant_kernel<<<blocks_for(rows, kEw), kEw, 0, stream>>>(qkv, rows, head_dim_, bits, work);
    check(cudaGetLastError(), "attention fake-quant launch");
    src = work;
  }
  const float score_scale = static_cast<float>(std::pow(static_cast<double>(head_dim_), -0.5));
  const float levels = bits > 0 ? static_cast<float>((1 << bits) - 1) : 0.0f;
  if (head_dim_ <= 2 * kAttThreads) {
    const size_t smem2 = sizeof(float) * static_cast<size_t>(kAttRows2 * (head_dim_ + T) + kAttChunk * (head_dim_ + 1));
    allow_dynamic_smem(attention_chunked_kernel, smem2, "attention (shared memory)");
    const dim3 grid2(static_cast<unsigned>((T + kAttRows2 - 1) / kAttRows2), static_cast<unsigned>(H),
                     static_cast<unsigned>(N));
    attention_chunked_kernel<<<grid2, kAttThreads, smem2, stream>>>(
        src, static_cast<int>(T), static_cast<int>(H), static_cast<int>(head_dim_), score_scale, levels, out);
    check(cudaGetLastError(), "attention launch");
    return;
  }
  const size_t smem = sizeof(float) * static_cast<size_t>(kAttRows * (T + head_dim_));
  allow_dynamic_smem(attention_kernel, smem, "attention (shared memory)");
  const dim3 grid(static_cast<unsigned>((T + kAttRows - 1) / kAttRows), static_cast<unsigned>(H),
                  static_cast<unsigned>(N));
  attention_kernel<<<grid, kAttThreads, smem, stream>>>(src, T, H, head_dim_, score_scale, levels, out);
  check(cudaGetLastError(), "attention launch");
}

void cfg_combine(const float* ob, int64_t n, int64_t per, int64_t guided, float scale, float* out,
                 cudaStream_t stream) {
  if (n * per == 0) return;
  cfg_combine_kernel<<<blocks_for(n * per, kEw), kEw, 0, stream>>>(ob, n, per, guided, scale, out);
  check(cudaGetLastError(), "cfg_combine launch");
}

}  // namespace cuda
}  // namespace robuq
