// exp256's steps (kernels/avx2/simd_avx2.h) 16 wide, for the kernels/avx512 files only (each includes it after
// avx512_common.h; internal linkage, so no copy compiled with other flags can stand in for it).
#pragma once
#include <immintrin.h>

namespace robuq {
namespace {

// exp256's steps on a clamped argument xc (no special lanes left).
inline __m512 exp512_core(__m512 xc) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  // y * 2^n in one instruction: exp256 multiplies by 2^n where n is in [-126, 127], else by 2^(n >> 1) (exact:
  // no under- or overflow for |n| <= 128) and then by 2^(n - (n >> 1)); either rounds once, as vscalefps does
  // (the two-factor form was checked equal to it for all 2^32 inputs, and the one-factor form to the two-factor
  // one)
  return _mm512_scalef_ps(y, n);
}

inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.72283906f);
  // every lane in [lo, hi] (ordered: no NaN): the clamp below is the identity and no lane is special
  const __mmask16 in = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(x, hi, _CMP_LE_OQ);
  if (in == 0xFFFF) return exp512_core(x);
  const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.75f));
  __m512 y = exp512_core(xc);
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), _mm512_set1_ps(__builtin_inff()));
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

}  // namespace
}  // namespace robuq
