// Included first by every kernels/avx512/*.cpp and kernels/amx/*.cpp file.
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

// GCC 12's AVX-512 headers fill unused pass-through operands with _mm512_undefined_*(), whose
// self-initialisation -W(maybe-)uninitialized reports once inlined; nothing here reads an undefined value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace robuq {
namespace avx512 {

// A 64-byte aligned buffer that only grows, one per thread and purpose, kept between calls (no page faults per
// call). The members are defined once, out of line, in ternary_gemm_avx512.cpp.
struct ScratchBuffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  ~ScratchBuffer();
  uint8_t* get(size_t bytes);  // at least `bytes` (and 64) bytes; std::bad_alloc when that fails
  void release();              // frees the memory
};

}  // namespace avx512
}  // namespace robuq
