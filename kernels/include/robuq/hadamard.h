// Hadamard transforms: base matrices (Sylvester, Paley I/II), width factorisation, dense matrices and
// the fast in-place row transform. The arithmetic is specified in docs/quantization.md ("Hadamard
// transforms"); the scalar reference tier lives in namespace robuq::ref.
//
// All transforms act on a row vector: y = x @ H, with H orthonormal.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace robuq {

enum class HadamardForm { None = 0, Full = 1, Block = 2 };

// "none" | "full" | "block"; anything else throws std::invalid_argument.
HadamardForm parse_hadamard_form(const std::string& name);
const char* hadamard_form_name(HadamardForm form);

// Whether a +-1 base matrix H_K (H_K H_K^T = K I) is constructible here: K = 1, K a power of two
// (Sylvester), Paley I (K - 1 a prime = 3 mod 4) or Paley II (K / 2 - 1 a prime = 1 mod 4).
bool hadamard_base_exists(int64_t K);

// Largest K accepted by hadamard_base (the matrix is K * K bytes).
constexpr int64_t kMaxHadamardBase = 8192;

// The +-1 base matrix H_K, row-major K * K. Powers of two (and K = 1) use Sylvester's construction,
// other orders Paley I when it applies, else Paley II. Throws std::invalid_argument when no
// construction applies or K > kMaxHadamardBase.
std::vector<int8_t> hadamard_base(int64_t K);

// n = K * M with M = 2^m and the smallest K >= 1 for which hadamard_base_exists(K).
struct HadamardFactor {
  int64_t K = 1;
  int64_t M = 1;
};
// Throws std::invalid_argument when n < 1 or no such K exists (e.g. n = 18).
HadamardFactor hadamard_factor(int64_t n);

// Largest power of two dividing n (n >= 1).
int64_t largest_pow2_divisor(int64_t n);

// Everything a transform of one row of width n needs, validated once.
//  Full:  K, M from hadamard_factor(n); base = H_K (K * K, row-major); norm = float32(1 / sqrt(n)).
//  Block: K = 1, M = block; the row is n / block independent blocks; norm = float32(1 / sqrt(block)).
//  None:  identity (K = 1, M = 1, norm = 1, nothing is touched).
struct HadamardPlan {
  HadamardForm form = HadamardForm::None;
  int64_t n = 0;
  int64_t K = 1;
  int64_t M = 1;
  int64_t block = 0;  // resolved block size (Block only; 0 otherwise)
  float norm = 1.0f;
  std::vector<int8_t> base;  // H_K, K * K (empty when K == 1)

  // Floats of scratch space a row transform needs (n when K > 1, else 0).
  int64_t scratch_size() const { return K > 1 ? n : 0; }
};

// block: for Block, a power of two dividing n, or 0 for the largest power of two dividing n; ignored
// for Full and None. Throws std::invalid_argument on n < 1, a width with no Hadamard matrix (Full) or
// a bad block size (Block).
HadamardPlan make_hadamard_plan(int64_t n, HadamardForm form, int64_t block = 0);

// The dense orthonormal matrix of a plan, float64, row-major n * n:
//  Full: kron(H_K, H_M) / sqrt(n); Block: I_{n/b} (x) H_b / sqrt(b); None: I.
// Entries are exactly +-(1 / sqrt(n)) (resp. b) in double. Used as the test reference.
void hadamard_dense(const HadamardPlan& plan, double* out);
std::vector<double> hadamard_dense(const HadamardPlan& plan);

namespace ref {

// In place: row <- row @ H for one row of plan.n floats, in the operation order of the spec:
// Walsh-Hadamard butterflies over each length-M segment (stages h = 1, 2, 4, ..., pair (i, i + h) ->
// (u + v, u - v)), then for K > 1 Y[c, :] = sum_a H_K[a, c] X[a, :] (a ascending), then each value
// times plan.norm. scratch must hold plan.scratch_size() floats (may be null when that is 0).
void hadamard_transform_row(const HadamardPlan& plan, float* row, float* scratch);

// In place on T rows of plan.n floats each (row-major, contiguous).
void hadamard_transform(const HadamardPlan& plan, float* x, int64_t T);

}  // namespace ref
}  // namespace robuq
