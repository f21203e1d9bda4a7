// Portable kernels of the quantized and the dense linear: plain C++ written so the compiler vectorises
// the inner loops, OpenMP over output tiles.
//
// Determinism: the output is cut into fixed tiles (kTokBlock tokens x kRowBlock rows) independent of
// the thread count; threads only share out whole tiles, so each output is computed by one thread. The
// integer dot products are exact. Float dot products are summed in one fixed order for every output
// (kLanes interleaved partial sums, k ascending in each, then a fixed pairwise reduction), whatever the
// tile shape or position, so the result of a token does not depend on T or on the threads either.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../qlinear_tiers.h"
#include "robuq/quant.h"

namespace robuq {
namespace generic {
namespace {

constexpr int kLanes = 8;                // float partial sums per dot product
constexpr int64_t kTokBlock = 64;        // tokens per tile
constexpr int64_t kRowBlock = 32;        // output rows per tile (a multiple of the micro-tiles below)
constexpr int kF32Tok = 4, kF32Row = 4;  // float micro-tile
constexpr int kI8Tok = 2, kI8Row = 2;    // integer micro-tile
constexpr int64_t kCodeAlign = 32;       // code rows are zero padded to a multiple of this

// ---- float micro-kernel: out[i][j] = x_i . w_j over K, in the fixed lane order
template <int MT, int MR>
void dot_tile_f32(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float out[][kF32Row]) {
  float acc[MT][MR][kLanes] = {};
  const int64_t K8 = K - K % kLanes;
  for (int64_t k = 0; k < K8; k += kLanes)
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < MR; ++j)
        for (int l = 0; l < kLanes; ++l) acc[i][j][l] += x[i * ldx + k + l] * w[j * ldw + k + l];
  for (int64_t k = K8; k < K; ++k)
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < MR; ++j) acc[i][j][k - K8] += x[i * ldx + k] * w[j * ldw + k];
  static_assert(kLanes == 8, "the reduction below sums 8 lanes");
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < MR; ++j) {
      const float* a = acc[i][j];
      out[i][j] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
}

using F32Tile = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float[][kF32Row]);

template <int MT>
constexpr F32Tile f32_tile_for(int mr) {
  return mr == 1   ? &dot_tile_f32<MT, 1>
         : mr == 2 ? &dot_tile_f32<MT, 2>
         : mr == 3 ? &dot_tile_f32<MT, 3>
                   : &dot_tile_f32<MT, 4>;
}
F32Tile f32_tile(int mt, int mr) {
  static_assert(kF32Tok == 4 && kF32Row == 4, "dispatch below covers 4 x 4");
  switch (mt) {
    case 1: return f32_tile_for<1>(mr);
    case 2: return f32_tile_for<2>(mr);
    case 3: return f32_tile_for<3>(mr);
    default: return f32_tile_for<4>(mr);
  }
}

// ---- integer micro-kernel: out[i][j] = sum_k q_i[k] * w_j[k] (exact), K a multiple of kCodeAlign
template <int MT, int MR>
void dot_tile_i8(const uint8_t* q, int64_t ldq, const int8_t* w, int64_t ldw, int64_t K, int32_t out[][kI8Row]) {
  int32_t acc[MT][MR] = {};
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < MR; ++j)
        acc[i][j] += static_cast<int32_t>(q[i * ldq + k]) * static_cast<int32_t>(w[j * ldw + k]);
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < MR; ++j) out[i][j] = acc[i][j];
}

using I8Tile = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t[][kI8Row]);

I8Tile i8_tile(int mt, int mr) {
  static_assert(kI8Tok == 2 && kI8Row == 2, "dispatch below covers 2 x 2");
  if (mt == 1) return mr == 1 ? &dot_tile_i8<1, 1> : &dot_tile_i8<1, 2>;
  return mr == 1 ? &dot_tile_i8<2, 1> : &dot_tile_i8<2, 2>;
}

constexpr int64_t kMinMacsPerThread = int64_t(1) << 18;     // below this a GEMM stays on one thread
constexpr int64_t kMinRowWorkPerThread = int64_t(1) << 15;  // floats per thread for row-wise passes

// Runs body(t0, t1, r0, r1) over the fixed tiles of a [T, R] output (K deep), sharing whole tiles among
// threads.
template <class Body>
void for_each_tile(int64_t T, int64_t R, int64_t K, int threads, const Body& body) {
  const int64_t tb = (T + kTokBlock - 1) / kTokBlock;
  const int64_t rb = (R + kRowBlock - 1) / kRowBlock;
  const int64_t tiles = tb * rb;
  threads = detail::useful_threads(threads, T * R * K, kMinMacsPerThread);
  auto run = [&](int64_t tile) {
    // Consecutive tiles share a row block, so a thread's contiguous share re-reads the same weights.
    const int64_t r0 = (tile / tb) * kRowBlock, t0 = (tile % tb) * kTokBlock;
    body(t0, std::min(T, t0 + kTokBlock), r0, std::min(R, r0 + kRowBlock));
  };
  if (threads <= 1 || tiles <= 1) {
    for (int64_t i = 0; i < tiles; ++i) run(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < tiles; ++i) run(i);
}

// Float GEMM y = x W^T over fixed tiles; store(t, r, dot) writes each output.
template <class Store>
void gemm_f32(const float* x, int64_t ldx, int64_t T, const float* w, int64_t ldw, int64_t R, int64_t K, int threads,
              const Store& store) {
  for_each_tile(T, R, K, threads, [&](int64_t t0, int64_t t1, int64_t r0, int64_t r1) {
    float out[kF32Tok][kF32Row];
    for (int64_t t = t0; t < t1; t += kF32Tok) {
      const int mt = static_cast<int>(std::min<int64_t>(kF32Tok, t1 - t));
      for (int64_t r = r0; r < r1; r += kF32Row) {
        const int mr = static_cast<int>(std::min<int64_t>(kF32Row, r1 - r));
        f32_tile(mt, mr)(x + t * ldx, ldx, w + r * ldw, ldw, K, out);
        for (int i = 0; i < mt; ++i)
          for (int j = 0; j < mr; ++j) store(t + i, r + j, out[i][j]);
      }
    }
  });
}

template <class Store>
void gemm_i8(const uint8_t* q, int64_t ldq, int64_t T, const int8_t* w, int64_t ldw, int64_t R, int64_t K, int threads,
             const Store& store) {
  for_each_tile(T, R, K, threads, [&](int64_t t0, int64_t t1, int64_t r0, int64_t r1) {
    int32_t out[kI8Tok][kI8Row];
    for (int64_t t = t0; t < t1; t += kI8Tok) {
      const int mt = static_cast<int>(std::min<int64_t>(kI8Tok, t1 - t));
      for (int64_t r = r0; r < r1; r += kI8Row) {
        const int mr = static_cast<int>(std::min<int64_t>(kI8Row, r1 - r));
        i8_tile(mt, mr)(q + t * ldq, ldq, w + r * ldw, ldw, K, out);
        for (int i = 0; i < mt; ++i)
          for (int j = 0; j < mr; ++j) store(t + i, r + j, out[i][j]);
      }
    }
  });
}

// Per-call buffers of the calling thread (QLinear::forward is const and may run on several threads).
struct Scratch {
  std::vector<uint8_t> codes;
  std::vector<float> rot, scale, zero, lowrank;
};
thread_local Scratch tl_scratch;

// Row scratch of an OpenMP worker (or the caller): the row being transformed and the transform's own.
thread_local std::vector<float> tl_row;

// Rotate (and quantize) token rows t0..t1: rot[t] = x[t] @ H when rot is non-null; codes[t] (zero padded
// to ld), scale[t], zero[t] when bits > 0. Bit-identical to ref::hadamard_quantize row by row.
void rotate_quantize_rows(const QLinearDesc& d, const float* x, int64_t t0, int64_t t1, int64_t ld, uint8_t* codes,
                          float* scale, float* zero, float* rot) {
  const int64_t n = d.in;
  float* buf = detail::thread_scratch(tl_row, static_cast<size_t>(n + d.plan.scratch_size()));
  float* hs = buf + n;
  for (int64_t t = t0; t < t1; ++t) {
    std::memcpy(buf, x + t * n, sizeof(float) * static_cast<size_t>(n));
    ref::hadamard_transform_row(d.plan, buf, hs);
    if (d.act_bits > 0) {
      uint8_t* c = codes + t * ld;
      ref::quantize_row(buf, n, d.act_bits, d.clip_k, c, scale + t, zero + t);
      std::memset(c + n, 0, static_cast<size_t>(ld - n));
    }
    if (rot != nullptr) std::memcpy(rot + t * n, buf, sizeof(float) * static_cast<size_t>(n));
  }
}

}  // namespace

bool avx2_direct(const QLinearDesc& d) {
  return (d.format == WeightFormat::Ternary || d.format == WeightFormat::Int4) && d.act_bits > 0;
}

std::unique_ptr<Prepared> prepare(const QLinearDesc& d, bool direct) {
  auto p = std::make_unique<Prepared>();
  const int64_t pc = packed_cols(d.format, d.in);
  if (direct && avx2_direct(d)) {
    p->direct = true;
    p->ld = d.in;
  } else if (d.act_bits > 0) {
    p->ld = (d.in + kCodeAlign - 1) / kCodeAlign * kCodeAlign;
    p->w8.assign(static_cast<size_t>(d.out * p->ld), 0);
    for (int64_t r = 0; r < d.out; ++r) detail::decode_row(d.format, d.packed + r * pc, d.in, p->w8.data() + r * p->ld);
  } else {
    p->ld = d.in;
    p->wf.resize(static_cast<size_t>(d.out * d.in));
    std::vector<int8_t> row(static_cast<size_t>(d.in));
    for (int64_t r = 0; r < d.out; ++r) {
      detail::decode_row(d.format, d.packed + r * pc, d.in, row.data());
      float* dst = p->wf.data() + r * d.in;
      for (int64_t k = 0; k < d.in; ++k) dst[k] = static_cast<float>(row[static_cast<size_t>(k)]);
    }
  }
  return p;
}

void qlinear_forward(const QLinearDesc& d, const Prepared& p, const float* x, int64_t T, float* y, int threads) {
  const int64_t n = d.in, out = d.out, ld = p.ld;
  Scratch& s = tl_scratch;
  const bool need_rot = d.act_bits == 0 || d.rank > 0;
  uint8_t* codes = d.act_bits > 0 ? detail::thread_scratch(s.codes, static_cast<size_t>(T * ld)) : nullptr;
  float* scale = detail::thread_scratch(s.scale, static_cast<size_t>(T));
  float* zero = detail::thread_scratch(s.zero, static_cast<size_t>(T));
  float* rot = need_rot ? detail::thread_scratch(s.rot, static_cast<size_t>(T * n)) : nullptr;

  // 1. Hadamard + quantize, one token per iteration (independent rows: any split gives the same codes).
  const int qthreads = detail::useful_threads(threads, T * n, kMinRowWorkPerThread);
  if (qthreads <= 1) {
    rotate_quantize_rows(d, x, 0, T, ld, codes, scale, zero, rot);
  } else {
#pragma omp parallel for schedule(static) num_threads(qthreads)
    for (int64_t t = 0; t < T; ++t) rotate_quantize_rows(d, x, t, t + 1, ld, codes, scale, zero, rot);
  }

  // 2. The main term.
  if (d.act_bits > 0) {
    gemm_i8(codes, ld, T, p.w8.data(), ld, out, ld, threads, [&](int64_t t, int64_t r, int32_t acc) {
      y[t * out + r] = detail::qlinear_epilogue(acc, scale[t], zero[t], d.scale[r], d.wsum[r]);
    });
  } else {
    gemm_f32(rot, n, T, p.wf.data(), n, out, n, threads,
             [&](int64_t t, int64_t r, float acc) { y[t * out + r] = d.scale[r] * acc; });
  }

  // 3. Low-rank branch on the rotated, unquantized activations, then the bias.
  if (d.rank > 0) {
    const int64_t R = d.rank;
    float* u = detail::thread_scratch(s.lowrank, static_cast<size_t>(T * R));
    gemm_f32(rot, n, T, d.down, n, R, n, threads, [&](int64_t t, int64_t j, float v) { u[t * R + j] = v; });
    gemm_f32(u, R, T, d.up, R, out, R, threads, [&](int64_t t, int64_t r, float v) { y[t * out + r] += v; });
  }
  if (d.bias != nullptr) {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < out; ++r) y[t * out + r] += d.bias[r];
  }
}

void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads) {
  if (b != nullptr)
    gemm_f32(x, in, T, W, in, out, in, threads, [&](int64_t t, int64_t r, float v) { y[t * out + r] = v + b[r]; });
  else
    gemm_f32(x, in, T, W, in, out, in, threads, [&](int64_t t, int64_t r, float v) { y[t * out + r] = v; });
}

void release_qlinear_scratch() {
  tl_scratch = Scratch();
  std::vector<float>().swap(tl_row);
}

}  // namespace generic
}  // namespace robuq
