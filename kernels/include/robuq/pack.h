// Ternary (W1.58) weight packing: 2 bits per weight, 4 weights per byte.
//
// Codes w in {-1, 0, 1} are stored as c = w + 1 in {0, 1, 2}. A row of `cols` weights becomes
// ternary_packed_cols(cols) = ceil(cols / 4) bytes; byte j holds weights 4j .. 4j+3 with weight 4j+i in
// bits 2i .. 2i+1:
//     byte = c0 | c1 << 2 | c2 << 4 | c3 << 6
// so the pair (4j, 4j+1) is the low nibble c0 | c1 << 2 and (4j+2, 4j+3) the high nibble, each usable
// directly as a 16-entry lookup-table index. The tail of a row is padded with code 1 (weight 0), so a
// fully padded byte is 0x55. Code 3 never occurs.
#pragma once
#include <cstdint>

namespace robuq {

constexpr int64_t ternary_packed_cols(int64_t cols) { return (cols + 3) / 4; }

// w: rows * cols int8 in {-1, 0, 1} -> packed: rows * ternary_packed_cols(cols) bytes.
// Throws std::invalid_argument (naming the row, column and value) on any other value.
void pack_ternary(const int8_t* w, int64_t rows, int64_t cols, uint8_t* packed);

// packed: rows * packed_cols bytes -> w: rows * cols int8 in {-1, 0, 1}. Requires
// packed_cols == ternary_packed_cols(cols). Throws std::invalid_argument on code 3 in a used position
// or a mismatch of packed_cols; padding positions are not inspected.
void unpack_ternary(const uint8_t* packed, int64_t rows, int64_t packed_cols, int64_t cols, int8_t* w);

}  // namespace robuq
