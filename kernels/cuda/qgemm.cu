// Quantized linear on the GPU: the ternary / int4 / int8-weight x low-bit-activation GEMM on the int8 tensor
// cores (mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32, inline PTX, sm_80 and sm_90), the weights read
// in the file's packed layout and unpacked in registers, with the fused epilogue; plus the float32 kernels
// of the layers that stay in float (dense linears, float-activation layers, the low-rank down-projection).
//
// Tiling (docs/cuda.md): a block of 4 warps computes 64 tokens x 64 outputs; each warp 32 x 32, i.e. 2 x 4
// mma tiles of 16 x 8, k in steps of 32. A fragments are loaded straight from the activation codes (rows of
// codes_ld(in) bytes, 4-byte aligned words), B fragments from the packed weight rows (one byte per register
// for ternary: exactly the four codes a lane needs). The float32 kernels compute each output with one
// thread summing k ascending, the reference's order, so they equal the CPU reference bit for bit.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "host_device_math.h"
#include "kernels.cuh"

namespace robuq {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockM = 64, kBlockN = 64;  // tokens x outputs per block
constexpr int kWarpM = 32, kWarpN = 32;

__device__ __forceinline__ void mma_u8s8(int32_t* c, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)c;
  (void)a;
  (void)b;
  __trap();  // built for sm_80 / sm_90 only
#endif
}

// Everything after the integer / float dot product, for output (t, r): low-rank term, bias, GELU, then a
// plain store or the gated residual. The additions are in the CPU reference's order.
__device__ __forceinline__ void finish(const Epilogue& e, int64_t t, int64_t r, int64_t out, float v, float* y) {
  v = host_device::epilogue_finish(v, e.u + t * e.rank, e.up + r * e.rank, e.rank,
                                   e.bias != nullptr ? e.bias + r : nullptr, e.gelu);
  if (e.gate != nullptr)
    v = host_device::gated_residual_hd(e.resid[t * out + r], e.gate[(t / e.rows_per_gate) * e.gate_stride + r], v);
  y[t * out + r] = v;
}

template <WeightFormat FMT>
__global__ void __launch_bounds__(kWarps * 32)
    qgemm_kernel(const uint8_t* __restrict__ codes, int T, int in, int ld, const uint8_t* __restrict__ packed, int pc,
                 int out, const float* __restrict__ scale_x, const float* __restrict__ zero_x, Epilogue e, float* y) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.y * kBlockM + (warp / 2) * kWarpM;
  const int col0 = blockIdx.x * kBlockN + (warp % 2) * kWarpN;

  int32_t acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0;

  // per-lane row pointers (null past the end: those fragments read as zeros)
  const uint8_t* arow[2][2];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + mi * 16 + host_device::frag_a_row(lane, h);
      arow[mi][h] = r < T ? codes + static_cast<int64_t>(r) * ld : nullptr;
    }
  const uint8_t* brow[4];
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const int c = col0 + ni * 8 + host_device::frag_b_col(lane);
    brow[ni] = c < out ? packed + static_cast<int64_t>(c) * pc : nullptr;
  }

  for (int k0 = 0; k0 < ld; k0 += kKTile) {
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint8_t* p = arow[mi][i & 1];
        a[mi][i] = p != nullptr ? *reinterpret_cast<const uint32_t*>(p + k0 + host_device::frag_a_k(lane, i)) : 0u;
      }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 2; ++i)
        b[ni][i] = brow[ni] != nullptr ? host_device::load_b_reg(FMT, brow[ni], in, k0, lane, i) : 0u;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) mma_u8s8(acc[mi][ni], a[mi], b[ni]);
  }

#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int t = row0 + mi * 16 + host_device::frag_c_row(lane, i);
        const int r = col0 + ni * 8 + host_device::frag_c_col(lane, i);
        if (t < T && r < out) {
          const float v = host_device::epilogue_quant(acc[mi][ni][i], scale_x[t], zero_x[t], e.wscale[r], e.wsum[r]);
          finish(e, t, r, out, v, y);
        }
      }
}

// The ternary fast path (host_device_math.h, "the ternary fast path"; docs/cuda.md): k in steps of 64; per step a lane
// makes one 16-byte load per activation row and one 4-byte load per weight row, both from the rows it owns
// (rows past T and outputs past `out` are clamped to the last one and never stored), and the next step's
// loads are issued before this step's mma. Warps tile WARPS_M x WARPS_N, each WM x WN mma tiles of 16 x 8.
template <int WM, int WN, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
    qgemm_fast_kernel(const uint8_t* __restrict__ codes, const int32_t* __restrict__ rowsum, int T, int ld,
                      const uint8_t* __restrict__ packed, int pc, int out, const float* __restrict__ scale_x,
                      const float* __restrict__ zero_x, Epilogue e, float* y) {
  constexpr int BM = WARPS_M * WM * 16, BN = WARPS_N * WN * 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int row0 = blockIdx.y * BM + (warp / WARPS_N) * WM * 16;
  const int col0 = blockIdx.x * BN + (warp % WARPS_N) * WN * 8;

  const uint4* ap[WM][2];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = min(row0 + mi * 16 + g + 8 * h, T - 1);
      ap[mi][h] = reinterpret_cast<const uint4*>(codes + static_cast<int64_t>(r) * ld) + q;
    }
  const uint32_t* bp[WN];
#pragma unroll
  for (int ni = 0; ni < WN; ++ni) {
    const int c = min(col0 + ni * 8 + g, out - 1);
    bp[ni] = reinterpret_cast<const uint32_t*>(packed + static_cast<int64_t>(c) * pc) + q;
  }

  int32_t acc[WM][WN][4];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int ni = 0; ni < WN; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0;

  uint4 a_cur[WM][2], a_nxt[WM][2];
  uint32_t b_cur[WN], b_nxt[WN];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) a_cur[mi][h] = __ldg(ap[mi][h]);
#pragma unroll
  for (int ni = 0; ni < WN; ++ni) b_cur[ni] = __ldg(bp[ni]);

  const int steps = ld / 64;
  for (int st = 0; st < steps; ++st) {
    const int nx = st + 1 < steps ? st + 1 : st;  // the last step reloads itself (in bounds, unused)
#pragma unroll
    for (int mi = 0; mi < WM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) a_nxt[mi][h] = __ldg(ap[mi][h] + 4 * nx);
#pragma unroll
    for (int ni = 0; ni < WN; ++ni) b_nxt[ni] = __ldg(bp[ni] + 4 * nx);
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      uint32_t a[WM][4], b[WN][2];
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {
        const uint32_t lo[4] = {a_cur[mi][0].x, a_cur[mi][0].y, a_cur[mi][0].z, a_cur[mi][0].w};
        const uint32_t hi[4] = {a_cur[mi][1].x, a_cur[mi][1].y, a_cur[mi][1].z, a_cur[mi][1].w};
        host_device::fast_a_frag(lo, hi, m, a[mi]);
      }
#pragma unroll
      for (int ni = 0; ni < WN; ++ni) host_device::fast_b_frag(b_cur[ni], m, b[ni]);
#pragma unroll
      for (int mi = 0; mi < WM; ++mi)
#pragma unroll
        for (int ni = 0; ni < WN; ++ni) mma_u8s8(acc[mi][ni], a[mi], b[ni]);
    }
#pragma unroll
    for (int mi = 0; mi < WM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) a_cur[mi][h] = a_nxt[mi][h];
#pragma unroll
    for (int ni = 0; ni < WN; ++ni) b_cur[ni] = b_nxt[ni];
  }

#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int ni = 0; ni < WN; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int t = row0 + mi * 16 + host_device::frag_c_row(lane, i);
        const int r = col0 + ni * 8 + host_device::frag_c_col(lane, i);
        if (t < T && r < out) {
          const float v =
              host_device::epilogue_quant(acc[mi][ni][i] - rowsum[t], scale_x[t], zero_x[t], e.wscale[r], e.wsum[r]);
          finish(e, t, r, out, v, y);
        }
      }
}

// The ternary fast path with a shared-memory pipeline: the same fragments and k order as qgemm_fast_kernel,
// but each block copies its A (BM code rows x 64 bytes) and B (BN weight rows x 16 bytes) tiles of a 64-code
// step into shared memory with cp.async, kStages steps ahead, so every code byte is read from L2 once per
// block and the loads run ahead of the mma. Lanes read fragments from shared memory: 16 bytes of a 64-byte
// code row (rows g and g + 8) and 4 bytes of a 16-byte weight row, both conflict-free per quarter warp.
constexpr int kStages = 4;
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#else
  (void)smem;
  (void)gmem;
  __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

template <int WM, int WN, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
    qgemm_pipe_kernel(const uint8_t* __restrict__ codes, const int32_t* __restrict__ rowsum, int T, int ld,
                      const uint8_t* __restrict__ packed, int pc, int out, const float* __restrict__ scale_x,
                      const float* __restrict__ zero_x, Epilogue e, float* y) {
  constexpr int BM = WARPS_M * WM * 16, BN = WARPS_N * WN * 8, NT = WARPS_M * WARPS_N * 32;
  constexpr int A_CHUNKS = BM * 4, B_CHUNKS = BN;  // 16-byte pieces per stage
  __shared__ __align__(16) uint8_t As[kStages][BM * 64];
  __shared__ __align__(16) uint8_t Bs[kStages][BN * 16];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int bm0 = blockIdx.y * BM, bn0 = blockIdx.x * BN;
  const int wm0 = (warp / WARPS_N) * WM * 16, wn0 = (warp % WARPS_N) * WN * 8;
  const int steps = ld / 64;

  auto load_stage = [&](int st, int slot) {
    const int k0 = st * 64;
    for (int c = tid; c < A_CHUNKS + B_CHUNKS; c += NT) {
      if (c < A_CHUNKS) {
        const int r = c >> 2, part = c & 3;
        const int gr = min(bm0 + r, T - 1);  // rows past T: the last row (never stored)
        cp_async16(&As[slot][r * 64 + part * 16], codes + static_cast<int64_t>(gr) * ld + k0 + part * 16);
      } else {
        const int r = c - A_CHUNKS;
        const int gc = min(bn0 + r, out - 1);
        cp_async16(&Bs[slot][r * 16], packed + static_cast<int64_t>(gc) * pc + k0 / 4);
      }
    }
  };

  int32_t acc[WM][WN][4];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int ni = 0; ni < WN; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0;

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < steps) load_stage(st, st);
    cp_async_commit();
  }
  for (int st = 0; st < steps; ++st) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage st has landed for every thread; slot (st - 1) % kStages is free
    const int nx = st + kStages - 1;
    if (nx < steps) load_stage(nx, nx % kStages);
    cp_async_commit();
    const uint8_t* A = As[st % kStages];
    const uint8_t* B = Bs[st % kStages];
    uint4 av[WM][2];
    uint32_t bw[WN];
#pragma unroll
    for (int mi = 0; mi < WM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        av[mi][h] = *reinterpret_cast<const uint4*>(A + (wm0 + mi * 16 + g + 8 * h) * 64 + 16 * q);
#pragma unroll
    for (int ni = 0; ni < WN; ++ni) bw[ni] = *reinterpret_cast<const uint32_t*>(B + (wn0 + ni * 8 + g) * 16 + 4 * q);
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      uint32_t a[WM][4], b[WN][2];
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {
        const uint32_t lo[4] = {av[mi][0].x, av[mi][0].y, av[mi][0].z, av[mi][0].w};
        const uint32_t hi[4] = {av[mi][1].x, av[mi][1].y, av[mi][1].z, av[mi][1].w};
        host_device::fast_a_frag(lo, hi, m, a[mi]);
      }
#pragma unroll
      for (int ni = 0; ni < WN; ++ni) host_device::fast_b_frag(bw[ni], m, b[ni]);
#pragma unroll
      for (int mi = 0; mi < WM; ++mi)
#pragma unroll
        for (int ni = 0; ni < WN; ++ni) mma_u8s8(acc[mi][ni], a[mi], b[ni]);
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int mi = 0; mi < WM; ++mi)
#pragma unroll
    for (int ni = 0; ni < WN; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int t = bm0 + wm0 + mi * 16 + host_device::frag_c_row(lane, i);
        const int r = bn0 + wn0 + ni * 8 + host_device::frag_c_col(lane, i);
        if (t < T && r < out) {
          const float v =
              host_device::epilogue_quant(acc[mi][ni][i] - rowsum[t], scale_x[t], zero_x[t], e.wscale[r], e.wsum[r]);
          finish(e, t, r, out, v, y);
        }
      }
}

// Few rows (T <= kGemvMaxRows: the adaLN and timestep layers run at one row per sample): one warp per
// output, lanes over k in steps of 4 codes (the weight row read once, coalesced), the exact integer sums
// by dp4a (u8 codes x s8 weights) and a warp reduction (any order: integers), then the epilogue.
__device__ __forceinline__ int dp4a_us(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

constexpr int kGemvWarps = 4;
template <WeightFormat FMT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    qgemv_kernel(const uint8_t* __restrict__ codes, int T, int in, int ld, const uint8_t* __restrict__ packed, int pc,
                 int out, const float* __restrict__ scale_x, const float* __restrict__ zero_x, Epilogue e, float* y) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (r >= out) return;
  const uint8_t* row = packed + static_cast<int64_t>(r) * pc;
  int acc[kGemvMaxRows];
#pragma unroll
  for (int t = 0; t < kGemvMaxRows; ++t) acc[t] = 0;
  for (int k0 = 4 * lane; k0 < in; k0 += 128) {
    const uint32_t w = host_device::load_b_reg(FMT, row, in, k0, 0, 0);  // codes k0 .. k0 + 3 (zero past in)
#pragma unroll
    for (int t = 0; t < kGemvMaxRows; ++t)
      if (t < T)
        acc[t] = dp4a_us(*reinterpret_cast<const uint32_t*>(codes + static_cast<int64_t>(t) * ld + k0), w, acc[t]);
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxRows; ++t) {
    if (t >= T) break;
    int v = acc[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == t)
      finish(e, t, r, out, host_device::epilogue_quant(v, scale_x[t], zero_x[t], e.wscale[r], e.wsum[r]), y);
  }
}

// One thread per output: x row t (broadcast across the block's threads), weight row r.
constexpr int kRowThreads = 128;

template <WeightFormat FMT>
__global__ void __launch_bounds__(kRowThreads)
    qlinear_float_act_kernel(const float* __restrict__ xr, int T, int in, const uint8_t* __restrict__ packed, int pc,
                             int out, Epilogue e, float* y) {
  const int r = blockIdx.y * kRowThreads + threadIdx.x;
  const int t = blockIdx.x;
  if (r >= out || t >= T) return;
  const float* x = xr + static_cast<int64_t>(t) * in;
  const uint8_t* row = packed + static_cast<int64_t>(r) * pc;
  float acc = 0.0f;
  for (int k0 = 0; k0 < in; k0 += 4) {
    const uint32_t w = host_device::load_b_reg(FMT, row, in, k0, 0, 0);  // lane 0, register 0: codes k0 .. k0 + 3
    const int kn = in - k0 < 4 ? in - k0 : 4;
    for (int q = 0; q < kn; ++q) acc = acc + x[k0 + q] * static_cast<float>(host_device::s8_lane(w, q));
  }
  finish(e, t, r, out, e.wscale[r] * acc, y);
}

__global__ void __launch_bounds__(kRowThreads)
    linear_f32_kernel(const float* __restrict__ x, int T, int in, const float* __restrict__ W, int out, Epilogue e,
                      float* y) {
  const int r = blockIdx.y * kRowThreads + threadIdx.x;
  const int t = blockIdx.x;
  if (r >= out || t >= T) return;
  const float* xt = x + static_cast<int64_t>(t) * in;
  const float* wr = W + static_cast<int64_t>(r) * in;
  float acc = 0.0f;
  for (int k = 0; k < in; ++k) acc = acc + xt[k] * wr[k];
  finish(e, t, r, out, acc, y);
}

// blockIdx.x: the row t; blockIdx.y: a group of kRowThreads outputs.
dim3 row_grid(int64_t T, int64_t out) {
  const int64_t groups = (out + kRowThreads - 1) / kRowThreads;
  if (groups > 65535) throw std::invalid_argument("float kernels take at most 65535 * 128 outputs");
  return dim3(static_cast<unsigned>(T), static_cast<unsigned>(groups));
}

void check_int_range(int64_t v, const char* what) {
  if (v < 0 || v > 0x7fffffffLL) throw std::invalid_argument(std::string(what) + " exceeds the int32 range");
}

}  // namespace

void qgemm(WeightFormat format, const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
           int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y, cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  const int64_t ld = codes_ld(in);
  check_int_range(T * ld, "T * ld");
  check_int_range(out * pc, "out * packed_cols");
  if ((T + kBlockM - 1) / kBlockM > 65535)
    throw std::invalid_argument("qgemm: T = " + std::to_string(T) + " exceeds the grid limit (65535 * 64 rows)");
  const dim3 grid(static_cast<unsigned>((out + kBlockN - 1) / kBlockN),
                  static_cast<unsigned>((T + kBlockM - 1) / kBlockM));
  const int Ti = static_cast<int>(T), ini = static_cast<int>(in), ldi = static_cast<int>(ld),
            pci = static_cast<int>(pc), oi = static_cast<int>(out);
  switch (format) {
    case WeightFormat::Ternary:
      qgemm_kernel<WeightFormat::Ternary>
          <<<grid, kWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    case WeightFormat::Int4:
      qgemm_kernel<WeightFormat::Int4>
          <<<grid, kWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    case WeightFormat::Int8:
      qgemm_kernel<WeightFormat::Int8>
          <<<grid, kWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    default: throw std::invalid_argument("qgemm: unknown weight format " + std::to_string(static_cast<int>(format)));
  }
  check(cudaGetLastError(), "qgemm launch");
}

namespace {
int g_gemm_variant = 0;

template <int WM, int WN, int WARPS_M, int WARPS_N>
void launch_pipe(const uint8_t* codes, const int32_t* rowsum, int64_t T, int64_t ld, const uint8_t* packed, int64_t pc,
                 int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y,
                 cudaStream_t stream) {
  constexpr int BM = WARPS_M * WM * 16, BN = WARPS_N * WN * 8;
  const int64_t gy = (T + BM - 1) / BM;
  if (gy > 65535) throw std::invalid_argument("qgemm: T = " + std::to_string(T) + " exceeds the grid limit");
  const dim3 grid(static_cast<unsigned>((out + BN - 1) / BN), static_cast<unsigned>(gy));
  qgemm_pipe_kernel<WM, WN, WARPS_M, WARPS_N>
      <<<grid, WARPS_M * WARPS_N * 32, 0, stream>>>(codes, rowsum, static_cast<int>(T), static_cast<int>(ld), packed,
                                                    static_cast<int>(pc), static_cast<int>(out), scale_x, zero_x, e, y);
}

template <int WM, int WN, int WARPS_M, int WARPS_N>
void launch_fast(const uint8_t* codes, const int32_t* rowsum, int64_t T, int64_t ld, const uint8_t* packed, int64_t pc,
                 int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y,
                 cudaStream_t stream) {
  constexpr int BM = WARPS_M * WM * 16, BN = WARPS_N * WN * 8;
  const int64_t gy = (T + BM - 1) / BM;
  if (gy > 65535) throw std::invalid_argument("qgemm: T = " + std::to_string(T) + " exceeds the grid limit");
  const dim3 grid(static_cast<unsigned>((out + BN - 1) / BN), static_cast<unsigned>(gy));
  qgemm_fast_kernel<WM, WN, WARPS_M, WARPS_N>
      <<<grid, WARPS_M * WARPS_N * 32, 0, stream>>>(codes, rowsum, static_cast<int>(T), static_cast<int>(ld), packed,
                                                    static_cast<int>(pc), static_cast<int>(out), scale_x, zero_x, e, y);
}
}  // namespace

void set_gemm_variant(int v) {
  if (v < 0 || v > kGemmVariants)
    throw std::invalid_argument("GEMM variant must be 0.." + std::to_string(kGemmVariants));
  g_gemm_variant = v;
}
int gemm_variant() { return g_gemm_variant; }

bool qgemm_fast_applies(WeightFormat format, int64_t in) {
  return format == WeightFormat::Ternary && in % 64 == 0 && g_gemm_variant != 1;
}

void qgemm_ternary_fast(const uint8_t* codes, const int32_t* rowsum, int64_t T, int64_t in, const uint8_t* packed,
                        int64_t pc, int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y,
                        cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  if (in % 64 != 0 || pc * 4 != in) throw std::invalid_argument("qgemm_ternary_fast: in must be a multiple of 64");
  const int64_t ld = codes_ld(in);
  check_int_range(T * ld, "T * ld");
  check_int_range(out * pc, "out * packed_cols");
  switch (g_gemm_variant) {
    case 0:  // automatic: the tile measured best on an H200 (docs/cuda.md)
    case 5: launch_fast<2, 2, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 2: launch_fast<2, 4, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 3: launch_fast<2, 4, 4, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 4: launch_fast<2, 4, 1, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 6: launch_fast<4, 4, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 7: launch_fast<1, 4, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 8: launch_fast<2, 4, 2, 8>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 9: launch_fast<2, 4, 4, 4>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 10: launch_fast<2, 2, 4, 4>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 11: launch_fast<2, 2, 2, 8>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 12: launch_pipe<2, 8, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 13: launch_pipe<4, 4, 2, 4>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 14: launch_pipe<2, 4, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 15: launch_pipe<2, 4, 4, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    case 16: launch_pipe<2, 2, 2, 2>(codes, rowsum, T, ld, packed, pc, out, scale_x, zero_x, e, y, stream); break;
    default: throw std::invalid_argument("qgemm_ternary_fast: variant " + std::to_string(g_gemm_variant));
  }
  check(cudaGetLastError(), "qgemm_ternary_fast launch");
}

void qgemv(WeightFormat format, const uint8_t* codes, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
           int64_t out, const float* scale_x, const float* zero_x, const Epilogue& e, float* y, cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  if (T > kGemvMaxRows) throw std::invalid_argument("qgemv: at most " + std::to_string(kGemvMaxRows) + " rows");
  const int64_t ld = codes_ld(in);
  check_int_range(T * ld, "T * ld");
  check_int_range(out * pc, "out * packed_cols");
  const unsigned blocks = static_cast<unsigned>((out + kGemvWarps - 1) / kGemvWarps);
  const int Ti = static_cast<int>(T), ini = static_cast<int>(in), ldi = static_cast<int>(ld),
            pci = static_cast<int>(pc), oi = static_cast<int>(out);
  switch (format) {
    case WeightFormat::Ternary:
      qgemv_kernel<WeightFormat::Ternary>
          <<<blocks, kGemvWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    case WeightFormat::Int4:
      qgemv_kernel<WeightFormat::Int4>
          <<<blocks, kGemvWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    case WeightFormat::Int8:
      qgemv_kernel<WeightFormat::Int8>
          <<<blocks, kGemvWarps * 32, 0, stream>>>(codes, Ti, ini, ldi, packed, pci, oi, scale_x, zero_x, e, y);
      break;
    default: throw std::invalid_argument("qgemv: unknown weight format " + std::to_string(static_cast<int>(format)));
  }
  check(cudaGetLastError(), "qgemv launch");
}

bool qgemv_applies(int64_t T) { return T <= kGemvMaxRows && g_gemm_variant != 1; }

void qlinear_float_act(WeightFormat format, const float* xr, int64_t T, int64_t in, const uint8_t* packed, int64_t pc,
                       int64_t out, const Epilogue& e, float* y, cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  check_int_range(T * in, "T * in");
  check_int_range(out * pc, "out * packed_cols");
  const dim3 grid = row_grid(T, out);
  const int Ti = static_cast<int>(T), ini = static_cast<int>(in), pci = static_cast<int>(pc),
            oi = static_cast<int>(out);
  switch (format) {
    case WeightFormat::Ternary:
      qlinear_float_act_kernel<WeightFormat::Ternary>
          <<<grid, kRowThreads, 0, stream>>>(xr, Ti, ini, packed, pci, oi, e, y);
      break;
    case WeightFormat::Int4:
      qlinear_float_act_kernel<WeightFormat::Int4>
          <<<grid, kRowThreads, 0, stream>>>(xr, Ti, ini, packed, pci, oi, e, y);
      break;
    case WeightFormat::Int8:
      qlinear_float_act_kernel<WeightFormat::Int8>
          <<<grid, kRowThreads, 0, stream>>>(xr, Ti, ini, packed, pci, oi, e, y);
      break;
    default:
      throw std::invalid_argument("qlinear_float_act: unknown weight format " +
                                  std::to_string(static_cast<int>(format)));
  }
  check(cudaGetLastError(), "qlinear_float_act launch");
}

void linear_f32(const float* x, int64_t T, int64_t in, const float* W, int64_t out, const Epilogue& e, float* y,
                cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  check_int_range(T * in, "T * in");
  check_int_range(out * in, "out * in");
  linear_f32_kernel<<<row_grid(T, out), kRowThreads, 0, stream>>>(x, static_cast<int>(T), static_cast<int>(in), W,
                                                                  static_cast<int>(out), e, y);
  check(cudaGetLastError(), "linear_f32 launch");
}

namespace {
// u[t, j] = sum_k x[t, k] w[j, k], k ascending (the reference's order, so the bits are linear_f32's): one
// thread per (t, j), flattened over small blocks so that the few rows of a low-rank branch (rank 1..32)
// spread over many multiprocessors. The chain of additions is inherently serial; loads run 8 ahead of it
// (products do not depend on the sum). Measured on an H200 (docs/cuda.md): latency-bound all the same
// (~75 us per call at T = 512); a version staging 128-column chunks in shared memory was slower (~120 us).
constexpr int kRowdotThreads = 32;
__global__ void __launch_bounds__(kRowdotThreads)
    rowdot_kernel(const float* __restrict__ x, int T, int in, const float* __restrict__ w, int out, float* u) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowdotThreads + threadIdx.x;
  if (o >= static_cast<int64_t>(T) * out) return;
  const int64_t t = o / out, j = o % out;
  const float* xt = x + t * in;
  const float* wj = w + j * in;
  float acc = 0.0f;
  int k = 0;
  for (; k + 8 <= in; k += 8) {
    float p[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) p[q] = __ldg(xt + k + q) * __ldg(wj + k + q);
#pragma unroll
    for (int q = 0; q < 8; ++q) acc = acc + p[q];
  }
  for (; k < in; ++k) acc = acc + xt[k] * wj[k];
  u[o] = acc;
}
}  // namespace

void rowdot_f32(const float* x, int64_t T, int64_t in, const float* w, int64_t out, float* u, cudaStream_t stream) {
  if (T == 0 || out == 0) return;
  check_int_range(T * in, "T * in");
  check_int_range(out * in, "out * in");
  check_int_range(T * out, "T * out");
  const int64_t blocks = (T * out + kRowdotThreads - 1) / kRowdotThreads;
  rowdot_kernel<<<static_cast<unsigned>(blocks), kRowdotThreads, 0, stream>>>(
      x, static_cast<int>(T), static_cast<int>(in), w, static_cast<int>(out), u);
  check(cudaGetLastError(), "rowdot_f32 launch");
}

}  // namespace cuda
}  // namespace robuq
