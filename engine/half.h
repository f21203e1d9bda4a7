// IEEE 754 binary16 -> binary32, exact for every input (normals, subnormals, zeros, infinities, NaNs:
// the NaN payload is kept and the quiet bit set as hardware conversions do). Portable; F16C may be used
// only in the AVX2 files.
#pragma once
#include <cstdint>
#include <cstring>

namespace robuq {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {  // inf / NaN
    bits = sign | 0x7F800000u | (mant << 13) | (mant != 0 ? 0x00400000u : 0u);
  } else if (exp != 0) {  // normal: rebias 15 -> 127
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: value = mant * 2^-24; normalise it
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    // mant now has its leading one at bit 10: value = 1.f * 2^(-14 - 1 - e) .. i.e. exponent -15 - e
    bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// n halves (little-endian bytes, any alignment) -> n floats.
inline void half_to_float(const uint8_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = static_cast<uint16_t>(src[2 * i] | (src[2 * i + 1] << 8));
    dst[i] = half_to_float(h);
  }
}

}  // namespace robuq
