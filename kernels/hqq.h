// HQQ / MC-MoE bit packing (ALGORITHMS.md 3.5 and 5): codes [rows, cols] (uint8, < 2^bits) are
// packed along dim 0 in contiguous chunks. 1/2/4 bits: 8/bits chunks of `step` rows, one byte per
// (row, col) of the first chunk holding chunk k at bit offset 8 - bits·(k+1) (chunk 0 in the high
// bits). 3 bits: 10 chunks in one int32 word, chunk k at bits 27 - 3k (bits 30-31 zero). 5-8 bits:
// one byte per code. Rows are padded with zero codes up to a multiple of the chunk count (HQQ
// assumes divisibility; the result is identical when it holds). CPU only.
#ifndef MOEC_KERNELS_HQQ_H_
#define MOEC_KERNELS_HQQ_H_

#include <cstdint>

#include "absl/status/status.h"

namespace moec::kernels {

// Chunks packed together for `bits` (1..8): 8, 4, 10, 2, then 1 for 5..8 bits.
int HqqChunks(int bits);
// Packed rows: ceil(rows / chunks). Elements are uint8, or int32 for 3 bits.
int64_t HqqPackedRows(int64_t rows, int bits);
bool HqqPacksToInt32(int bits);

// Errors: InvalidArgument for bits outside 1..8 or a code >= 2^bits.
absl::Status HqqPack(const uint8_t* codes, int64_t rows, int64_t cols, int bits, void* packed);
// Inverse of HqqPack (the padding rows are dropped).
absl::Status HqqUnpack(const void* packed, int64_t rows, int64_t cols, int bits, uint8_t* codes);

}  // namespace moec::kernels

#endif  // MOEC_KERNELS_HQQ_H_
