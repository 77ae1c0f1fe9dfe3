#include "kernels/hqq.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moec::kernels {

int HqqChunks(int bits) {
  switch (bits) {
    case 1: return 8;
    case 2: return 4;
    case 3: return 10;
    case 4: return 2;
    default: return 1;
  }
}

bool HqqPacksToInt32(int bits) { return bits == 3; }

int64_t HqqPackedRows(int64_t rows, int bits) {
  const int c = HqqChunks(bits);
  return (rows + c - 1) / c;
}

absl::Status HqqPack(const uint8_t* codes, int64_t rows, int64_t cols, int bits, void* packed) {
  if (bits < 1 || bits > 8) return absl::InvalidArgumentError(absl::StrCat("hqq: ", bits, " bits"));
  const int chunks = HqqChunks(bits);
  const int64_t step = HqqPackedRows(rows, bits);
  const int width = bits >= 5 ? 8 : bits;
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (bits < 8 && codes[i] >> bits) {
      return absl::InvalidArgumentError(absl::StrCat("hqq: code ", int{codes[i]}, " does not fit ",
                                                     bits, " bits"));
    }
  }
  for (int64_t r = 0; r < step; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t word = 0;
      for (int k = 0; k < chunks; ++k) {
        const int64_t src = r + k * step;
        const uint32_t q = src < rows ? codes[src * cols + c] : 0;
        const int shift = bits == 3 ? 27 - 3 * k : 8 - width * (k + 1);
        word |= q << shift;
      }
      if (HqqPacksToInt32(bits)) {
        static_cast<int32_t*>(packed)[r * cols + c] = static_cast<int32_t>(word);
      } else {
        static_cast<uint8_t*>(packed)[r * cols + c] = static_cast<uint8_t>(word);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status HqqUnpack(const void* packed, int64_t rows, int64_t cols, int bits, uint8_t* codes) {
  if (bits < 1 || bits > 8) return absl::InvalidArgumentError(absl::StrCat("hqq: ", bits, " bits"));
  const int chunks = HqqChunks(bits);
  const int64_t step = HqqPackedRows(rows, bits);
  const int width = bits >= 5 ? 8 : bits;
  const uint32_t mask = (1u << width) - 1;
  for (int64_t r = 0; r < step; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t word =
          HqqPacksToInt32(bits)
              ? static_cast<uint32_t>(static_cast<const int32_t*>(packed)[r * cols + c])
              : static_cast<const uint8_t*>(packed)[r * cols + c];
      for (int k = 0; k < chunks; ++k) {
        const int64_t dst = r + k * step;
        if (dst >= rows) break;
        const int shift = bits == 3 ? 27 - 3 * k : 8 - width * (k + 1);
        codes[dst * cols + c] = static_cast<uint8_t>((word >> shift) & mask);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace moec::kernels
