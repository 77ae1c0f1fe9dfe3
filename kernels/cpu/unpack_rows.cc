#include "kernels/cpu/unpack_rows.h"

#include <cstring>

namespace moec::kernels::cpu {

void UnpackRows(const uint32_t* packed, int64_t rows, int64_t cols, int bits, uint8_t* values) {
  const uint32_t mask = (1u << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bit = r * bits;
    const int64_t word = bit >> 5;
    const int shift = static_cast<int>(bit & 31);
    const uint32_t* lo = packed + word * cols;
    uint8_t* out = values + r * cols;
    if (shift + bits <= 32) {
      for (int64_t c = 0; c < cols; ++c) out[c] = static_cast<uint8_t>((lo[c] >> shift) & mask);
    } else {
      // The value straddles two words (3-, 5-, 6-, 7-bit layouts).
      const uint32_t* hi = lo + cols;
      for (int64_t c = 0; c < cols; ++c) {
        out[c] = static_cast<uint8_t>(((lo[c] >> shift) | (hi[c] << (32 - shift))) & mask);
      }
    }
  }
}

void PackRows(const uint8_t* values, int64_t rows, int64_t cols, int bits, uint32_t* packed) {
  const int64_t words = (rows * bits + 31) / 32;
  std::memset(packed, 0, static_cast<size_t>(words * cols) * sizeof(uint32_t));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bit = r * bits;
    const int64_t word = bit >> 5;
    const int shift = static_cast<int>(bit & 31);
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t v = values[r * cols + c];
      packed[word * cols + c] |= v << shift;
      if (shift + bits > 32) packed[(word + 1) * cols + c] |= v >> (32 - shift);
    }
  }
}

}  // namespace moec::kernels::cpu
