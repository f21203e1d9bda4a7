// Built and run by scripts/emulate_avx512.sh: the avx512 tier's Hadamard transform, per-token quantizer and
// LayerNorm + modulate (kernels/avx512/hadamard_avx512.cpp, compiled against SIMDe's portable AVX-512) against
// the avx2 tier, which the test suite holds bit-identical to the reference. Exit status 0 only when every
// result is bit-identical (NaN compared as NaN).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "robuq/avx2.h"
#include "robuq/avx512.h"
#include "robuq/hadamard.h"

namespace {

bool same(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

int first_difference(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!same(a[i], b[i])) return static_cast<int>(i);
  return -1;
}

}  // namespace

int main() {
  using namespace robuq;
  std::mt19937 g(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int cases = 0, bad = 0, declined = 0;
  // DiT's widths (K = 12 and 36 times M = 32 .. 256), K = 12 / 36 with other M (192, 576), powers of two, other
  // K (640 = 20 x 32) and rows too short for the avx512 transform
  const int64_t widths[] = {16,  32,   48,   80,   96,   192,  384,  576,  640,
                            768, 1024, 1152, 1536, 2304, 2560, 3072, 4608, 9216};
  for (int64_t n : widths)
    for (HadamardForm form : {HadamardForm::Full, HadamardForm::Block}) {
      const HadamardPlan plan = make_hadamard_plan(n, form);
      const avx2::RowTransform transform(plan);
      for (int special = 0; special < 4; ++special) {
        std::vector<float> x(n), a(n), b(n), s1(plan.scratch_size() + 1), s2(plan.scratch_size() + 1);
        for (float& v : x) v = normal(g) * 3.0f;
        if (special == 1) x[n / 3] = INFINITY;
        if (special == 2) x[n / 2] = NAN;
        if (special == 3) {
          x[0] = -0.0f;
          x[n - 1] = 3e38f;
        }
        transform(x.data(), a.data(), s1.data());
        if (!avx512::hadamard_row(plan, transform.signs(), x.data(), b.data(), s2.data())) {
          ++declined;  // the avx2 transform runs these on the avx512 tier too
        } else {
          ++cases;
          const int i = first_difference(a.data(), b.data(), n);
          if (i >= 0) {
            std::printf("transform n=%ld form=%d case=%d: element %d %a vs %a\n", static_cast<long>(n),
                        static_cast<int>(form), special, i, a[i], b[i]);
            ++bad;
          }
        }
        for (int bits = 1; bits <= 8; ++bits)
          for (float clip_k : {0.0f, 2.5f}) {
            std::vector<uint8_t> c1(n), c2(n);
            float sc1, z1, sc2, z2;
            avx2::quantize_row(a.data(), n, bits, clip_k, c1.data(), &sc1, &z1);
            avx512::quantize_row(a.data(), n, bits, clip_k, c2.data(), &sc2, &z2);
            ++cases;
            if (c1 != c2 || !same(sc1, sc2) || !same(z1, z2)) {
              std::printf("quantize n=%ld bits=%d clip_k=%g case=%d differs\n", static_cast<long>(n), bits, clip_k,
                          special);
              ++bad;
            }
            // two rows at once (interleaved statistics): the transformed row and x itself, each as alone
            std::vector<uint8_t> d0(n), d1(n), e1(n);
            float sc[2], z[2], sx, zx;
            avx512::quantize_rows2(a.data(), x.data(), n, bits, clip_k, d0.data(), d1.data(), sc, z);
            avx2::quantize_row(x.data(), n, bits, clip_k, e1.data(), &sx, &zx);
            ++cases;
            if (d0 != c1 || d1 != e1 || !same(sc[0], sc1) || !same(z[0], z1) || !same(sc[1], sx) || !same(z[1], zx)) {
              std::printf("quantize_rows2 n=%ld bits=%d clip_k=%g case=%d differs\n", static_cast<long>(n), bits,
                          clip_k, special);
              ++bad;
            }
          }
      }
    }
  for (int64_t D : {16, 72, 384, 1152}) {  // LayerNorm + modulate, 1..4 rows at once
    std::vector<float> x(4 * D), shift(4 * D), scale(4 * D), y1(4 * D), y2(4 * D);
    for (float& v : x) v = normal(g) * 2.0f + 0.5f;
    for (float& v : shift) v = normal(g);
    for (float& v : scale) v = normal(g);
    for (int count = 1; count <= 4; ++count) {
      const float *xs[4], *sh[4], *sc[4];
      float *o1[4], *o2[4];
      for (int r = 0; r < 4; ++r) {
        xs[r] = x.data() + r * D;
        sh[r] = shift.data() + r * D;
        sc[r] = scale.data() + r * D;
        o1[r] = y1.data() + r * D;
        o2[r] = y2.data() + r * D;
      }
      avx2::layernorm_modulate_rows(count, xs, D, sh, sc, o1);
      avx512::layernorm_modulate_rows(count, xs, D, sh, sc, o2);
      ++cases;
      const int i = first_difference(y1.data(), y2.data(), count * D);
      if (i >= 0) {
        std::printf("layernorm_modulate D=%ld rows=%d: element %d differs\n", static_cast<long>(D), count, i);
        ++bad;
      }
    }
  }
  std::printf("avx512 (emulated) vs avx2: %d cases, %d differ (%d transforms the avx512 tier leaves to avx2)\n", cases,
              bad, declined);
  return bad == 0 ? 0 : 1;
}
