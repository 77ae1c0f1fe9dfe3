// CUDA twin of kernels/cpu/unpack_rows: one thread per output element.
#ifndef MOEC_KERNELS_CUDA_UNPACK_ROWS_CUH_
#define MOEC_KERNELS_CUDA_UNPACK_ROWS_CUH_

#include <cstdint>

#include "absl/status/status.h"

namespace moec::kernels::cuda {

// Device pointers; synchronous. REQUIRES: validated arguments.
absl::Status UnpackRows(const uint32_t* packed, int64_t rows, int64_t cols, int bits,
                        uint8_t* values);

// Number of CUDA devices visible (0 when there is no driver or device).
int DeviceCount();

}  // namespace moec::kernels::cuda

#endif  // MOEC_KERNELS_CUDA_UNPACK_ROWS_CUH_
