// The signs of the K x K Hadamard factors, evaluated by the compiler, for the kernels that unroll the K x K step
// with compile-time signs (kernels/avx2/hadamard_quant_avx2.cpp, kernels/avx512/hadamard_avx512.cpp). Internal
// linkage: each kernel file built with its own flags gets its own copy.
#pragma once
#include <cmath>

namespace robuq {
namespace {

// Signs of H_K[a, c] (the construction of kernels/ref/hadamard_ref.cpp: Sylvester, Paley I, Paley II); a kernel
// checks them once against the plan's sign table before use (fixed_signs_match).
constexpr bool c_is_prime(int q) {
  if (q < 2) return false;
  for (int d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}
constexpr int c_chi(int q, int v) {  // quadratic character of GF(q)
  v = ((v % q) + q) % q;
  if (v == 0) return 0;
  for (int x = 1; x < q; ++x)
    if ((x * x) % q == v) return 1;
  return -1;
}
constexpr int c_hadamard(int K, int i, int j) {
  if ((K & (K - 1)) == 0) {
    int parity = 0;
    for (int v = i & j; v != 0; v &= v - 1) parity ^= 1;
    return parity ? -1 : 1;
  }
  if ((K - 1) % 4 == 3 && c_is_prime(K - 1)) {  // Paley I
    const int q = K - 1;
    const int s = i == 0 ? (j == 0 ? 0 : 1) : j == 0 ? -1 : c_chi(q, (j - 1) - (i - 1));
    return s + (i == j ? 1 : 0);
  }
  // Paley II
  const int q = K / 2 - 1, ci = i / 2, cj = j / 2, s = i % 2, t = j % 2;
  const int cij = ci == 0 ? (cj == 0 ? 0 : 1) : cj == 0 ? 1 : c_chi(q, (cj - 1) - (ci - 1));
  const int A = (s == 1 && t == 1) ? -1 : 1;
  const int B = (s == 0 && t == 0) ? 1 : -1;
  return cij * A + (ci == cj ? B : 0);
}

// sgn (RowTransform's table: sgn[a * K + c] = -0.0f where H_K[a, c] < 0) agrees with c_hadamard. Every plan of
// one K has the same table (hadamard_base is deterministic), so one check per K and process suffices.
template <int K>
bool fixed_signs_match(const float* sgn) {
  for (int a = 0; a < K; ++a)
    for (int c = 0; c < K; ++c)
      if (std::signbit(sgn[a * K + c]) != (c_hadamard(K, a, c) < 0)) return false;
  return true;
}

}  // namespace
}  // namespace robuq
