// CPU reference implementation of the row bit-unpack op (see kernels.h).
#ifndef MOEC_KERNELS_CPU_UNPACK_ROWS_H_
#define MOEC_KERNELS_CPU_UNPACK_ROWS_H_

#include <cstdint>

namespace moec::kernels::cpu {

// REQUIRES: validated arguments (1 <= bits <= 8, rows, cols >= 0).
void UnpackRows(const uint32_t* packed, int64_t rows, int64_t cols, int bits, uint8_t* values);
void PackRows(const uint8_t* values, int64_t rows, int64_t cols, int bits, uint32_t* packed);

}  // namespace moec::kernels::cpu

#endif  // MOEC_KERNELS_CPU_UNPACK_ROWS_H_
