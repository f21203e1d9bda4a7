// Included first by every kernels/avx512/*.cpp file.
#pragma once
#include <immintrin.h>

// GCC 12's AVX-512 headers fill unused pass-through operands with _mm512_undefined_*(), whose
// self-initialisation -W(maybe-)uninitialized reports once inlined; nothing here reads an undefined value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
