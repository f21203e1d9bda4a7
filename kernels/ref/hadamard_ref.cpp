// Hadamard base matrices, factorisation, plans, dense matrices (tier independent) and the scalar
// reference row transform. Spec: docs/quantization.md, "Hadamard transforms".
#include "robuq/hadamard.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace robuq {

namespace {

bool is_pow2(int64_t v) { return v >= 1 && (v & (v - 1)) == 0; }

bool is_prime(int64_t q) {
  if (q < 2) return false;
  if (q % 2 == 0) return q == 2;
  for (int64_t d = 3; d * d <= q; d += 2)
    if (q % d == 0) return false;
  return true;
}

bool paley1_applies(int64_t K) {
  const int64_t q = K - 1;
  return q >= 3 && q % 4 == 3 && is_prime(q);
}

bool paley2_applies(int64_t K) {
  if (K % 2 != 0) return false;
  const int64_t q = K / 2 - 1;
  return q >= 5 && q % 4 == 1 && is_prime(q);
}

// Quadratic character of GF(q), q an odd prime: chi[a] for a in [0, q).
std::vector<int> quadratic_character(int64_t q) {
  std::vector<int> chi(static_cast<size_t>(q), -1);
  chi[0] = 0;
  for (int64_t x = 1; x < q; ++x) chi[static_cast<size_t>((x * x) % q)] = 1;
  return chi;
}

// Jacobsthal matrix entry Q[i, j] = chi(j - i) (indices mod q).
int jacobsthal(const std::vector<int>& chi, int64_t q, int64_t i, int64_t j) {
  return chi[static_cast<size_t>(((j - i) % q + q) % q)];
}

std::vector<int8_t> sylvester(int64_t K) {
  // H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]]  <=>  H[i, j] = (-1)^popcount(i & j).
  std::vector<int8_t> H(static_cast<size_t>(K * K));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      int parity = 0;
      for (uint64_t v = static_cast<uint64_t>(i & j); v != 0; v &= v - 1) parity ^= 1;
      H[static_cast<size_t>(i * K + j)] = parity ? -1 : 1;
    }
  return H;
}

std::vector<int8_t> paley1(int64_t K) {
  // q = K - 1 prime, q = 3 mod 4. S = [[0, 1^T], [-1, Q]], H = I + S.
  const int64_t q = K - 1;
  const std::vector<int> chi = quadratic_character(q);
  std::vector<int8_t> H(static_cast<size_t>(K * K));
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      int s;
      if (i == 0)
        s = (j == 0) ? 0 : 1;
      else if (j == 0)
        s = -1;
      else
        s = jacobsthal(chi, q, i - 1, j - 1);
      H[static_cast<size_t>(i * K + j)] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  return H;
}

std::vector<int8_t> paley2(int64_t K) {
  // q = K/2 - 1 prime, q = 1 mod 4. C = [[0, 1^T], [1, Q]] (symmetric conference matrix),
  // H = kron(C, A) + kron(I, B), A = [[1, 1], [1, -1]], B = [[1, -1], [-1, -1]].
  static const int A[2][2] = {{1, 1}, {1, -1}};
  static const int B[2][2] = {{1, -1}, {-1, -1}};
  const int64_t q = K / 2 - 1;
  const int64_t c = q + 1;
  const std::vector<int> chi = quadratic_character(q);
  std::vector<int8_t> H(static_cast<size_t>(K * K));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) {
      int cij;
      if (i == 0)
        cij = (j == 0) ? 0 : 1;
      else if (j == 0)
        cij = 1;
      else
        cij = jacobsthal(chi, q, i - 1, j - 1);
      for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t) {
          const int v = cij * A[s][t] + (i == j ? B[s][t] : 0);
          H[static_cast<size_t>((2 * i + s) * K + (2 * j + t))] = static_cast<int8_t>(v);
        }
    }
  return H;
}

// Butterflies over one segment of length M (a power of two): x <- x @ H_M (Sylvester order).
void walsh_hadamard(float* x, int64_t M) {
  for (int64_t h = 1; h < M; h *= 2)
    for (int64_t start = 0; start < M; start += 2 * h)
      for (int64_t i = start; i < start + h; ++i) {
        const float u = x[i];
        const float v = x[i + h];
        x[i] = u + v;
        x[i + h] = u - v;
      }
}

}  // namespace

HadamardForm parse_hadamard_form(const std::string& name) {
  if (name == "none") return HadamardForm::None;
  if (name == "full") return HadamardForm::Full;
  if (name == "block") return HadamardForm::Block;
  throw std::invalid_argument("unknown Hadamard form '" + name + "' (expected 'full', 'block' or 'none')");
}

const char* hadamard_form_name(HadamardForm form) {
  switch (form) {
    case HadamardForm::None: return "none";
    case HadamardForm::Full: return "full";
    case HadamardForm::Block: return "block";
  }
  return "?";
}

bool hadamard_base_exists(int64_t K) {
  if (K < 1) return false;
  return is_pow2(K) || paley1_applies(K) || paley2_applies(K);
}

std::vector<int8_t> hadamard_base(int64_t K) {
  if (K < 1) throw std::invalid_argument("Hadamard base order must be >= 1, got " + std::to_string(K));
  if (K > kMaxHadamardBase)
    throw std::invalid_argument("Hadamard base order " + std::to_string(K) + " exceeds the limit of " +
                                std::to_string(kMaxHadamardBase));
  if (is_pow2(K)) return sylvester(K);
  if (paley1_applies(K)) return paley1(K);
  if (paley2_applies(K)) return paley2(K);
  throw std::invalid_argument("no Hadamard matrix of order " + std::to_string(K) +
                              " is constructible (needs a power of two, Paley I: K-1 a prime = 3 mod 4, "
                              "or Paley II: K/2-1 a prime = 1 mod 4)");
}

int64_t largest_pow2_divisor(int64_t n) {
  if (n < 1) throw std::invalid_argument("width must be >= 1, got " + std::to_string(n));
  return n & (-n);
}

HadamardFactor hadamard_factor(int64_t n) {
  if (n < 1) throw std::invalid_argument("Hadamard width must be >= 1, got " + std::to_string(n));
  const int64_t p = largest_pow2_divisor(n);
  const int64_t odd = n / p;
  if (odd == 1) return {1, n};
  // Candidates K = odd * 2^j, ascending; M = n / K stays a power of two.
  std::string tried;
  for (int64_t K = odd; K <= n; K *= 2) {
    if (hadamard_base_exists(K)) return {K, n / K};
    tried += (tried.empty() ? "" : ", ") + std::to_string(K);
  }
  throw std::invalid_argument("width " + std::to_string(n) + " has no Hadamard matrix: n = K * 2^m needs a " +
                              "constructible H_K, and none exists for K in {" + tried + "}");
}

HadamardPlan make_hadamard_plan(int64_t n, HadamardForm form, int64_t block) {
  if (n < 1) throw std::invalid_argument("Hadamard width must be >= 1, got " + std::to_string(n));
  HadamardPlan p;
  p.form = form;
  p.n = n;
  switch (form) {
    case HadamardForm::None: break;
    case HadamardForm::Full: {
      const HadamardFactor f = hadamard_factor(n);
      p.K = f.K;
      p.M = f.M;
      if (p.K > 1) p.base = hadamard_base(p.K);
      p.norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
      break;
    }
    case HadamardForm::Block: {
      int64_t b = block;
      if (b == 0) b = largest_pow2_divisor(n);
      if (b < 0 || !is_pow2(b))
        throw std::invalid_argument(
            "Hadamard block size must be a power of two (or 0 for the largest one "
            "dividing the width), got " +
            std::to_string(block));
      if (n % b != 0)
        throw std::invalid_argument("Hadamard block size " + std::to_string(b) + " does not divide the width " +
                                    std::to_string(n));
      p.block = b;
      p.M = b;
      p.norm = static_cast<float>(1.0 / std::sqrt(static_cast<double>(b)));
      break;
    }
    default: throw std::invalid_argument("invalid Hadamard form");
  }
  return p;
}

void hadamard_dense(const HadamardPlan& plan, double* out) {
  const int64_t n = plan.n;
  std::memset(out, 0, sizeof(double) * static_cast<size_t>(n * n));
  switch (plan.form) {
    case HadamardForm::None:
      for (int64_t i = 0; i < n; ++i) out[i * n + i] = 1.0;
      return;
    case HadamardForm::Full: {
      // kron(H_K, H_M)[(a, b), (c, d)] = H_K[a, c] * H_M[b, d], with H_M[b, d] = (-1)^popcount(b & d).
      const double inv = 1.0 / std::sqrt(static_cast<double>(n));
      const int64_t K = plan.K, M = plan.M;
      for (int64_t a = 0; a < K; ++a)
        for (int64_t c = 0; c < K; ++c) {
          const int hk = K > 1 ? plan.base[static_cast<size_t>(a * K + c)] : 1;
          for (int64_t b = 0; b < M; ++b)
            for (int64_t d = 0; d < M; ++d) {
              int parity = 0;
              for (uint64_t v = static_cast<uint64_t>(b & d); v != 0; v &= v - 1) parity ^= 1;
              const int s = parity ? -hk : hk;
              out[(a * M + b) * n + (c * M + d)] = s > 0 ? inv : -inv;
            }
        }
      return;
    }
    case HadamardForm::Block: {
      const int64_t b = plan.block;
      const double inv = 1.0 / std::sqrt(static_cast<double>(b));
      for (int64_t blk = 0; blk < n / b; ++blk)
        for (int64_t i = 0; i < b; ++i)
          for (int64_t j = 0; j < b; ++j) {
            int parity = 0;
            for (uint64_t v = static_cast<uint64_t>(i & j); v != 0; v &= v - 1) parity ^= 1;
            out[(blk * b + i) * n + (blk * b + j)] = parity ? -inv : inv;
          }
      return;
    }
  }
}

std::vector<double> hadamard_dense(const HadamardPlan& plan) {
  std::vector<double> out(static_cast<size_t>(plan.n * plan.n));
  hadamard_dense(plan, out.data());
  return out;
}

namespace ref {

void hadamard_transform_row(const HadamardPlan& plan, float* row, float* scratch) {
  const int64_t n = plan.n;
  switch (plan.form) {
    case HadamardForm::None: return;
    case HadamardForm::Block:
      for (int64_t off = 0; off < n; off += plan.block) walsh_hadamard(row + off, plan.block);
      break;
    case HadamardForm::Full: {
      const int64_t K = plan.K, M = plan.M;
      // View the row as X[a, b], a < K, b < M, index a * M + b. Butterflies over b for every a.
      for (int64_t a = 0; a < K; ++a) walsh_hadamard(row + a * M, M);
      if (K > 1) {
        // Y[c, :] = sum_a H_K[a, c] X[a, :], a ascending (the first term starts the sum).
        const int8_t* H = plan.base.data();
        for (int64_t c = 0; c < K; ++c) {
          float* y = scratch + c * M;
          const float* x0 = row;
          if (H[c] > 0)
            for (int64_t b = 0; b < M; ++b) y[b] = x0[b];
          else
            for (int64_t b = 0; b < M; ++b) y[b] = -x0[b];
          for (int64_t a = 1; a < K; ++a) {
            const float* xa = row + a * M;
            if (H[a * K + c] > 0)
              for (int64_t b = 0; b < M; ++b) y[b] = y[b] + xa[b];
            else
              for (int64_t b = 0; b < M; ++b) y[b] = y[b] - xa[b];
          }
        }
        std::memcpy(row, scratch, sizeof(float) * static_cast<size_t>(n));
      }
      break;
    }
  }
  const float norm = plan.norm;
  for (int64_t i = 0; i < n; ++i) row[i] = row[i] * norm;
}

void hadamard_transform(const HadamardPlan& plan, float* x, int64_t T) {
  std::vector<float> scratch(static_cast<size_t>(plan.scratch_size()));
  for (int64_t t = 0; t < T; ++t) hadamard_transform_row(plan, x + t * plan.n, scratch.data());
}

}  // namespace ref
}  // namespace robuq
