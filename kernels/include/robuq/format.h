// The weight formats a .rq file stores (docs/rq-format.md), defined once for the C++ side: the loader, the
// kernels of every tier, the engine and the CUDA backend read this table. Its Python twin is
// python/robuq/quant/formats.py (QAT configs and the exporter's packing); tests/test_quant.py checks that
// the two agree entry by entry (robuq._C.weight_formats()).
#pragma once
#include <cstdint>

namespace robuq {

// Stored in QLinearDesc and the CUDA layers; the values are the table's indices.
enum class WeightFormat : int { Ternary = 0, Int4 = 1, Int8 = 2 };

struct WeightFormatTraits {
  WeightFormat format;
  const char* name;  // as the .rq metadata spells it
  int code_min;      // the valid codes: code_min..code_max (symmetric: w ~ scale[row] * code)
  int code_max;
  int codes_per_byte;  // packed row bytes = ceil(in / codes_per_byte)
};

inline constexpr WeightFormatTraits kWeightFormats[] = {
    {WeightFormat::Ternary, "ternary", -1, 1, 4},  // 2 bits per weight, code w + 1
    {WeightFormat::Int4, "int4", -7, 7, 2},        // two's complement nibbles, low nibble first
    {WeightFormat::Int8, "int8", -127, 127, 1},    // int8 bytes
};
inline constexpr int kNumWeightFormats = static_cast<int>(sizeof(kWeightFormats) / sizeof(kWeightFormats[0]));

// Whether `format` is one of the table's values (an enum read from elsewhere may not be).
constexpr bool valid_weight_format(WeightFormat format) {
  return static_cast<int>(format) >= 0 && static_cast<int>(format) < kNumWeightFormats;
}

// The table's entry of a valid format.
constexpr const WeightFormatTraits& traits(WeightFormat format) { return kWeightFormats[static_cast<int>(format)]; }

// Bytes of one packed row of `in` codes.
constexpr int64_t packed_row_bytes(WeightFormat format, int64_t in) {
  return (in + traits(format).codes_per_byte - 1) / traits(format).codes_per_byte;
}

// Code k of one packed row (the file layout). Invalid bit patterns come back as they are (ternary 2 for
// bits 11, int4 -8, int8 -128): the loader refuses them (check_weight_codes), so kernels never see them.
inline int decode_weight_code(WeightFormat format, const uint8_t* row, int64_t k) {
  switch (format) {
    case WeightFormat::Ternary: return static_cast<int>((row[k >> 2] >> (2 * (k & 3))) & 3u) - 1;
    case WeightFormat::Int4: {
      const unsigned nib = (row[k >> 1] >> (4 * (k & 1))) & 15u;
      return static_cast<int>(nib) - (nib >= 8 ? 16 : 0);
    }
    case WeightFormat::Int8: return static_cast<int>(static_cast<int8_t>(row[k]));
  }
  return 0;
}

}  // namespace robuq
