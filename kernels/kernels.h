// moec kernels: one function per op, dispatched by device. No torch or CUDA headers here.
// Every op has a CPU implementation (kernels/cpu/) that is the test oracle for the CUDA one
// (kernels/cuda/, built when MOEC_WITH_CUDA). An op without an implementation for the requested
// device returns Unimplemented; nothing falls back to another device silently.
#ifndef MOEC_KERNELS_KERNELS_H_
#define MOEC_KERNELS_KERNELS_H_

#include <cstdint>

#include "absl/status/status.h"

namespace moec::kernels {

enum class Device { kCpu, kCuda };

// True when this build has CUDA kernels (MOEC_WITH_CUDA).
bool BuiltWithCuda();

// --- Bit packing along rows (the GPTQ `qweight` layout) -------------------------------------
// A [rows, cols] matrix of `bits`-bit unsigned values (1 <= bits <= 8) is packed per column as a
// little-endian bit stream over 32-bit words: value (r, c) occupies bits [r*bits, (r+1)*bits) of
// column c's stream, and word w of column c is packed[w * cols + c]. For bits 2, 4 and 8 this is
// GPTQ's int32 qweight layout; for 3 bits it is GPTQ's 3-bit layout (values straddle words).

// Words per column: ceil(rows * bits / 32).
int64_t PackedWordsPerColumn(int64_t rows, int bits);

// Packs `values` (row-major [rows, cols], each < 2^bits) into `packed`
// ([PackedWordsPerColumn(rows, bits), cols]). CPU only.
// Errors: InvalidArgument for bits outside 1..8, negative sizes, or a value >= 2^bits.
absl::Status PackRows(const uint8_t* values, int64_t rows, int64_t cols, int bits,
                      uint32_t* packed);

// Unpacks `packed` into `values` (row-major [rows, cols]). On kCuda both pointers are device
// memory and the call is synchronous. Errors: InvalidArgument for bad sizes; Unimplemented for
// kCuda in a build without CUDA; Internal/ResourceExhausted for CUDA failures.
absl::Status UnpackRows(Device device, const uint32_t* packed, int64_t rows, int64_t cols,
                        int bits, uint8_t* values);

}  // namespace moec::kernels

#endif  // MOEC_KERNELS_KERNELS_H_
