// QLinear: descriptor validation, weight-code checks and the run-time dispatch over kernel tiers.
#include "robuq/qlinear.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "qlinear_tiers.h"
#include "robuq/avx2.h"
#ifdef ROBUQ_HAVE_AVX512
#include "robuq/avx512.h"
#endif
#include "robuq/cpu.h"
#include "robuq/quant.h"

namespace robuq {

int64_t packed_cols(WeightFormat format, int64_t in) {
  if (!valid_weight_format(format)) throw std::invalid_argument("invalid weight format");
  return packed_row_bytes(format, in);
}

WeightFormat parse_weight_format(const std::string& name) {
  std::string known;
  for (const WeightFormatTraits& t : kWeightFormats) {
    if (name == t.name) return t.format;
    known += (known.empty() ? "" : ", ") + std::string(t.name);
  }
  throw std::invalid_argument("unknown weight format '" + name + "' (expected " + known + ")");
}

const char* weight_format_name(WeightFormat format) { return valid_weight_format(format) ? traits(format).name : "?"; }

int weight_code_max(WeightFormat format) {
  if (!valid_weight_format(format)) throw std::invalid_argument("invalid weight format");
  return traits(format).code_max;
}

namespace {

// Per packed byte of a ternary (4 codes) or int4 (2 codes) row: the sum of its codes and whether all of
// them are valid; used for int4 rows and for the bytes of a ternary row past its whole 8-byte words.
struct ByteTable {
  int8_t sum[256];
  bool ok[256];
};

ByteTable make_table(WeightFormat format) {
  ByteTable t{};
  const int per = traits(format).codes_per_byte;
  const int cmax = weight_code_max(format);
  for (int b = 0; b < 256; ++b) {
    const uint8_t byte = static_cast<uint8_t>(b);
    int s = 0;
    bool ok = true;
    for (int i = 0; i < per; ++i) {
      const int c = detail::weight_code(format, &byte, i);
      s += c;
      ok = ok && c >= -cmax && c <= cmax;
    }
    t.sum[b] = static_cast<int8_t>(s);
    t.ok[b] = ok;
  }
  return t;
}

// Ternary bytes row[0 .. 8 n): the sum of their 2-bit fields (code + 1 each) and, in *bad, a bit set where a
// field is 3 (invalid). Eight bytes per step as one 64-bit word: fields summed in 4-bit, then 8-bit lanes
// (at most 12 per byte even with invalid fields, so no lane overflows), the eight bytes by one multiply.
int64_t ternary_field_sum(const uint8_t* row, int64_t n, uint64_t* bad) {
  constexpr uint64_t k01 = 0x5555555555555555ull, k0011 = 0x3333333333333333ull, k0f = 0x0F0F0F0F0F0F0F0Full;
  uint64_t b = 0;
  int64_t s = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint64_t v;
    std::memcpy(&v, row + 8 * j, 8);
    b |= v & (v >> 1) & k01;
    uint64_t x = (v & k0011) + ((v >> 2) & k0011);
    x = (x + (x >> 4)) & k0f;
    s += static_cast<int64_t>((x * 0x0101010101010101ull) >> 56);
  }
  *bad = b;
  return s;
}

// Sum of one row's codes; *bad = first invalid column, or -1.
int64_t scan_row(WeightFormat format, const uint8_t* row, int64_t in, int64_t* bad) {
  *bad = -1;
  const int cmax = weight_code_max(format);
  int64_t s = 0, k0 = 0;
  const int64_t per = traits(format).codes_per_byte;
  if (per > 1) {  // several codes per byte: a table of all 256 bytes
    static const ByteTable tern = make_table(WeightFormat::Ternary);
    static const ByteTable int4 = make_table(WeightFormat::Int4);
    const ByteTable& t = format == WeightFormat::Ternary ? tern : int4;
    const int64_t full = in / per;
    bool ok = true;
    int64_t j = 0;
    if (format == WeightFormat::Ternary) {  // whole 8-byte words first (4 codes of field - 1 per byte)
      uint64_t b;
      const int64_t words = full / 8;
      s = ternary_field_sum(row, words, &b) - 4 * 8 * words;
      ok = b == 0;
      j = 8 * words;
    }
    for (; j < full; ++j) {
      s += t.sum[row[j]];
      ok &= t.ok[row[j]];
    }
    k0 = full * per;
    if (!ok) k0 = 0, s = 0;  // find the column below
  }
  for (int64_t k = k0; k < in; ++k) {
    const int c = detail::weight_code(format, row, k);
    if (c < -cmax || c > cmax) {
      *bad = k;
      return s;
    }
    s += c;
  }
  return s;
}

}  // namespace

void check_weight_codes(WeightFormat format, const uint8_t* packed, int64_t out, int64_t in, int32_t* sums) {
  const int64_t pc = packed_cols(format, in);
  for (int64_t r = 0; r < out; ++r) {
    int64_t bad;
    const int64_t sum = scan_row(format, packed + r * pc, in, &bad);
    if (sums != nullptr) sums[r] = static_cast<int32_t>(sum);
    if (bad >= 0) {
      const int c = detail::weight_code(format, packed + r * pc, bad);
      const int cmax = weight_code_max(format);
      std::string what;
      if (format == WeightFormat::Ternary)
        what = "invalid ternary code 3";
      else
        what = std::string("invalid ") + weight_format_name(format) + " code " + std::to_string(c);
      throw std::invalid_argument(what + " at row " + std::to_string(r) + ", column " + std::to_string(bad) +
                                  " (codes must be in [-" + std::to_string(cmax) + ", " + std::to_string(cmax) + "])");
    }
  }
}

namespace detail {
void decode_row(WeightFormat format, const uint8_t* row, int64_t in, int8_t* dst) {
  for (int64_t k = 0; k < in; ++k) dst[k] = static_cast<int8_t>(weight_code(format, row, k));
}
}  // namespace detail

namespace {

void validate(const QLinearDesc& d) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("QLinear: " + m); };
  if (d.in < 1 || d.out < 1)
    fail("in and out must be >= 1, got in = " + std::to_string(d.in) + ", out = " + std::to_string(d.out));
  const int cmax = weight_code_max(d.format);  // also rejects an invalid enum value
  if (d.packed == nullptr || d.scale == nullptr || d.wsum == nullptr) fail("packed, scale and wsum are required");
  if (d.act_bits != 0) check_act_bits(d.act_bits);
  check_clip_k(d.clip_k);
  if (d.plan.n != d.in)
    fail("Hadamard plan width " + std::to_string(d.plan.n) + " != in_features " + std::to_string(d.in));
  if (d.plan.K > 1 && static_cast<int64_t>(d.plan.base.size()) != d.plan.K * d.plan.K)
    fail("Hadamard plan has no K x K base matrix");
  if (d.plan.K * d.plan.M != d.in && d.plan.form == HadamardForm::Full) fail("Hadamard plan K * M != in");
  if (d.plan.form == HadamardForm::Block && (d.plan.block < 1 || d.in % d.plan.block != 0))
    fail("Hadamard plan block size does not divide in");
  if (d.rank < 0 || d.rank > std::min(d.in, d.out))
    fail("rank " + std::to_string(d.rank) + " is not in 0..min(in, out) = " + std::to_string(std::min(d.in, d.out)));
  if (d.rank > 0 && (d.down == nullptr || d.up == nullptr)) fail("rank > 0 needs the down and up factors");
  // The integer dot product sum_k q * code must fit int32: q <= 255, |code| <= cmax.
  if (d.in > std::numeric_limits<int32_t>::max() / (255 * static_cast<int64_t>(cmax)))
    fail("in_features " + std::to_string(d.in) + " is too large for int32 accumulation of " +
         weight_format_name(d.format) + " weights");
  std::vector<int32_t> sums(static_cast<size_t>(d.out));
  check_weight_codes(d.format, d.packed, d.out, d.in, sums.data());
  for (int64_t r = 0; r < d.out; ++r)
    if (sums[static_cast<size_t>(r)] != d.wsum[r])
      fail("wsum[" + std::to_string(r) + "] = " + std::to_string(d.wsum[r]) + " but the row's codes sum to " +
           std::to_string(sums[static_cast<size_t>(r)]));
}

}  // namespace

// Weight layouts are prepared lazily, once per tier that actually runs the layer (normally only the
// active tier at load time), so an engine does not hold the generic tier's int8 copy when it runs avx2
// (which reads ternary and int4 weights from the file layout and holds nothing).
struct QLinear::Impl {
  std::mutex mu;
  std::unique_ptr<generic::Prepared> generic, avx2;

  const generic::Prepared& get(const QLinearDesc& d, bool direct) {
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = direct ? avx2 : generic;
    if (!slot) slot = generic::prepare(d, direct);
    return *slot;
  }
};

QLinear::QLinear(const QLinearDesc& desc) : desc_(desc) {
  validate(desc_);
  impl_ = std::make_unique<Impl>();
  const Tier t = active_tier();
  if (t != Tier::Reference) impl_->get(desc_, tier_uses_avx2_kernels(t) && generic::avx2_direct(desc_));
}

QLinear::~QLinear() = default;

float gelu_tanh_scalar(float v) {
  const float beta = static_cast<float>(0.7978845608028654);  // sqrt(2 / pi)
  const float kappa = 0.044715f;
  const float inner = beta * (v + kappa * (v * v * v));
  return 0.5f * v * (1.0f + std::tanh(inner));
}

namespace {
// post applied in place to y [n] by the reference / generic tiers (elementwise: any split is the same).
void apply_post(PostOp post, float* y, int64_t n, int threads) {
  if (post != PostOp::GeluTanh) return;
  [[maybe_unused]] const int nt = detail::useful_threads(threads, n, int64_t(1) << 15);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_tanh_scalar(y[i]);
}
}  // namespace

void QLinear::forward(const float* x, int64_t T, float* y, int threads, PostOp post) const {
  if (T < 0) throw std::invalid_argument("QLinear::forward: T must be >= 0, got " + std::to_string(T));
  if (threads < 1) throw std::invalid_argument("QLinear::forward: threads must be >= 1");
  if (post != PostOp::None && post != PostOp::GeluTanh) throw std::invalid_argument("QLinear::forward: bad post op");
  if (T == 0) return;
  const Tier tier = active_tier();
  switch (tier) {
    case Tier::Reference:
      ref::qlinear_forward(desc_, x, T, y);
      apply_post(post, y, T * desc_.out, 1);
      return;
    case Tier::Generic:
      generic::qlinear_forward(desc_, impl_->get(desc_, false), x, T, y, threads);
      apply_post(post, y, T * desc_.out, threads);
      return;
    case Tier::Avx2:
    case Tier::Avx512:
    case Tier::Amx:
#ifdef ROBUQ_HAVE_AVX2
      // ternary (table lookups) and int4 weights with quantized activations from the file layout; the
      // rest on the generic kernels. The avx512 and amx tiers differ only in the ternary GEMM's integer core
      // and in vector widths (the same bits).
      avx2::qlinear_forward(desc_, impl_->get(desc_, generic::avx2_direct(desc_)), x, T, y, threads, post, tier);
#else
      generic::qlinear_forward(desc_, impl_->get(desc_, false), x, T, y, threads);
      apply_post(post, y, T * desc_.out, threads);
#endif
      return;
  }
}

void linear_f32(const float* x, int64_t T, int64_t in, const float* W, const float* b, int64_t out, float* y,
                int threads) {
  if (T < 0 || in < 1 || out < 1)
    throw std::invalid_argument("linear_f32: need T >= 0, in >= 1, out >= 1, got T = " + std::to_string(T) +
                                ", in = " + std::to_string(in) + ", out = " + std::to_string(out));
  if (threads < 1) throw std::invalid_argument("linear_f32: threads must be >= 1");
  if (T == 0) return;
  switch (active_tier()) {
    case Tier::Reference: ref::linear_f32(x, T, in, W, b, out, y); return;
    case Tier::Generic: generic::linear_f32(x, T, in, W, b, out, y, threads); return;
    case Tier::Avx2:
    case Tier::Avx512:
    case Tier::Amx:
#ifdef ROBUQ_HAVE_AVX2
      avx2::linear_f32(x, T, in, W, b, out, y, threads);
#else
      generic::linear_f32(x, T, in, W, b, out, y, threads);
#endif
      return;
  }
}

void release_thread_scratch() {
  generic::release_qlinear_scratch();
#ifdef ROBUQ_HAVE_AVX2
  avx2::release_qlinear_scratch();
  avx2::release_gemm_scratch();
#endif
#ifdef ROBUQ_HAVE_AVX512
  avx512::release_gemm_scratch();
#endif
#ifdef ROBUQ_HAVE_AMX
  amx::release_gemm_scratch();
#endif
}

void release_scratch(int threads) {
  release_thread_scratch();
#ifdef _OPENMP
  // The workers of a team of `threads` (libgomp keeps them between regions, each with its own scratch).
#pragma omp parallel num_threads(threads > 1 ? threads : 1)
  release_thread_scratch();
#else
  (void)threads;
#endif
}

}  // namespace robuq
