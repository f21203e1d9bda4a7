// Ternary weight packing (2 bits per weight), see robuq/pack.h for the layout.
#include "robuq/pack.h"

#include <stdexcept>
#include <string>

namespace robuq {

void pack_ternary(const int8_t* w, int64_t rows, int64_t cols, uint8_t* packed) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("pack_ternary: negative shape");
  const int64_t pc = ternary_packed_cols(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* wr = w + r * cols;
    uint8_t* pr = packed + r * pc;
    for (int64_t j = 0; j < pc; ++j) {
      unsigned byte = 0;
      for (int i = 0; i < 4; ++i) {
        const int64_t c = 4 * j + i;
        unsigned code = 1;  // padding: weight 0
        if (c < cols) {
          const int v = wr[c];
          if (v < -1 || v > 1)
            throw std::invalid_argument("pack_ternary: value " + std::to_string(v) + " at [" + std::to_string(r) +
                                        ", " + std::to_string(c) + "] is not a ternary code in {-1, 0, 1}");
          code = static_cast<unsigned>(v + 1);
        }
        byte |= code << (2 * i);
      }
      pr[j] = static_cast<uint8_t>(byte);
    }
  }
}

void unpack_ternary(const uint8_t* packed, int64_t rows, int64_t packed_cols, int64_t cols, int8_t* w) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("unpack_ternary: negative shape");
  if (packed_cols != ternary_packed_cols(cols))
    throw std::invalid_argument("unpack_ternary: " + std::to_string(cols) + " columns need " +
                                std::to_string(ternary_packed_cols(cols)) + " packed bytes per row, got " +
                                std::to_string(packed_cols));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* pr = packed + r * packed_cols;
    int8_t* wr = w + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const unsigned code = (pr[c / 4] >> (2 * (c % 4))) & 3u;
      if (code == 3)
        throw std::invalid_argument("unpack_ternary: invalid code 3 at [" + std::to_string(r) + ", " +
                                    std::to_string(c) + "] (byte " + std::to_string(c / 4) + ")");
      wr[c] = static_cast<int8_t>(static_cast<int>(code) - 1);
    }
  }
}

}  // namespace robuq
