// Used only by scripts/emulate_avx512.sh: stands in for <immintrin.h> when kernels/avx512/hadamard_avx512.cpp
// is compiled for a CPU without AVX-512. It includes the real header, then SIMDe's portable AVX-512
// (Debian package libsimde-dev) under the native names, plus the few intrinsics SIMDe 0.7.4 does not alias,
// each written to do what the instruction does (rounding, truncation, masked lanes left unread / unwritten,
// GCC's reduction order). Never part of a build of the engine.
#include_next <immintrin.h>
#ifndef ROBUQ_SIMDE_SHIM
#define ROBUQ_SIMDE_SHIM
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <string.h>
#define _mm512_shuffle_f32x4(a, b, imm) simde_mm512_shuffle_f32x4(a, b, imm)
static inline simde__m512 robuq_emu_permute_ps(simde__m512 a, int imm) {
  float s[16], r[16];
  memcpy(s, &a, 64);
  for (int i = 0; i < 16; ++i) r[i] = s[(i & ~3) + ((imm >> (2 * (i & 3))) & 3)];
  simde__m512 out;
  memcpy(&out, r, 64);
  return out;
}
#define _mm512_permute_ps(a, imm) robuq_emu_permute_ps(a, imm)
// GCC's order (avx512fintrin.h __MM512_REDUCE_OP): upper 256 op lower 256, upper 128 op lower 128, then two
// in-register shuffles; the same operand order matters for NaN and signed zeros.
#define ROBUQ_EMU_REDUCE(name, op256, op128)                                     \
  static inline float name(simde__m512 a) {                                      \
    __m256 t1, t2;                                                               \
    memcpy(&t2, &a, 32);                                                         \
    memcpy(&t1, (const char*)&a + 32, 32);                                       \
    __m256 t3 = op256(t1, t2);                                                   \
    __m128 t6 = op128(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3)); \
    __m128 t7 = _mm_shuffle_ps(t6, t6, _MM_SHUFFLE(1, 0, 3, 2));                 \
    __m128 t8 = op128(t6, t7);                                                   \
    __m128 t9 = _mm_shuffle_ps(t8, t8, _MM_SHUFFLE(0, 1, 0, 1));                 \
    return _mm_cvtss_f32(op128(t8, t9));                                         \
  }
ROBUQ_EMU_REDUCE(robuq_emu_reduce_min_ps, _mm256_min_ps, _mm_min_ps)
ROBUQ_EMU_REDUCE(robuq_emu_reduce_max_ps, _mm256_max_ps, _mm_max_ps)
#define _mm512_reduce_min_ps(a) robuq_emu_reduce_min_ps(a)
#define _mm512_reduce_max_ps(a) robuq_emu_reduce_max_ps(a)
static inline simde__m512i robuq_emu_cvtps_epi32(
    simde__m512 a) {  // two vcvtps2dq halves: same rounding, same 0x80000000
  __m256 lo, hi;
  memcpy(&lo, &a, 32);
  memcpy(&hi, (const char*)&a + 32, 32);
  __m256i r[2] = {_mm256_cvtps_epi32(lo), _mm256_cvtps_epi32(hi)};
  simde__m512i out;
  memcpy(&out, r, 64);
  return out;
}
static inline __m128i robuq_emu_cvtepi32_epi8(simde__m512i a) {  // vpmovdb: truncation
  int v[16];
  signed char b[16];
  memcpy(v, &a, 64);
  for (int i = 0; i < 16; ++i) b[i] = (signed char)(unsigned char)(v[i] & 0xFF);
  __m128i out;
  memcpy(&out, b, 16);
  return out;
}
static inline void robuq_emu_mask_storeu_epi8(void* p, unsigned short m, __m128i v) {
  unsigned char b[16];
  memcpy(b, &v, 16);
  for (int i = 0; i < 16; ++i)
    if (m >> i & 1) ((unsigned char*)p)[i] = b[i];
}
#define _mm512_cvtps_epi32(a) robuq_emu_cvtps_epi32(a)
#define _mm512_cvtepi32_epi8(a) robuq_emu_cvtepi32_epi8(a)
#define _mm_mask_storeu_epi8(p, m, v) robuq_emu_mask_storeu_epi8(p, m, v)
static inline simde__m512d robuq_emu_cvtps_pd(__m256 a) {  // exact widening
  float f[8];
  double d[8];
  memcpy(f, &a, 32);
  for (int i = 0; i < 8; ++i) d[i] = (double)f[i];
  simde__m512d out;
  memcpy(&out, d, 64);
  return out;
}
#define _mm512_cvtps_pd(a) robuq_emu_cvtps_pd(a)
static inline simde__m512 robuq_emu_maskz_loadu_ps(unsigned short m, const void* p) {  // masked-off lanes unread
  float r[16];
  for (int i = 0; i < 16; ++i) r[i] = (m >> i & 1) ? ((const float*)p)[i] : 0.0f;
  simde__m512 out;
  memcpy(&out, r, 64);
  return out;
}
static inline void robuq_emu_mask_storeu_ps(void* p, unsigned short m, simde__m512 v) {
  float r[16];
  memcpy(r, &v, 64);
  for (int i = 0; i < 16; ++i)
    if (m >> i & 1) ((float*)p)[i] = r[i];
}
#define _mm512_maskz_loadu_ps(m, p) robuq_emu_maskz_loadu_ps(m, p)
#define _mm512_mask_storeu_ps(p, m, v) robuq_emu_mask_storeu_ps(p, m, v)
#endif
