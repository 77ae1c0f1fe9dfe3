#include "kernels/kernels.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/unpack_rows.h"

#if MOEC_WITH_CUDA
#include "kernels/cuda/unpack_rows.cuh"
#endif

namespace moec::kernels {
namespace {

absl::Status CheckPackArgs(int64_t rows, int64_t cols, int bits) {
  if (bits < 1 || bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be 1..8, got ", bits));
  }
  if (rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("negative size ", rows, " x ", cols));
  }
  if (rows > (int64_t{1} << 40) || cols > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError("matrix too large");
  }
  return absl::OkStatus();
}

}  // namespace

bool BuiltWithCuda() { return MOEC_WITH_CUDA != 0; }

int64_t PackedWordsPerColumn(int64_t rows, int bits) { return (rows * bits + 31) / 32; }

absl::Status PackRows(const uint8_t* values, int64_t rows, int64_t cols, int bits,
                      uint32_t* packed) {
  if (absl::Status s = CheckPackArgs(rows, cols, bits); !s.ok()) return s;
  const uint32_t limit = 1u << bits;
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (values[i] >= limit) {
      return absl::InvalidArgumentError(absl::StrCat("value ", int{values[i]}, " at (", i / cols,
                                                     ", ", i % cols, ") needs more than ", bits,
                                                     " bits"));
    }
  }
  cpu::PackRows(values, rows, cols, bits, packed);
  return absl::OkStatus();
}

absl::Status UnpackRows(Device device, const uint32_t* packed, int64_t rows, int64_t cols,
                        int bits, uint8_t* values) {
  if (absl::Status s = CheckPackArgs(rows, cols, bits); !s.ok()) return s;
  switch (device) {
    case Device::kCpu:
      cpu::UnpackRows(packed, rows, cols, bits, values);
      return absl::OkStatus();
    case Device::kCuda:
#if MOEC_WITH_CUDA
      return cuda::UnpackRows(packed, rows, cols, bits, values);
#else
      return absl::UnimplementedError("UnpackRows on CUDA: this build has no CUDA (MOEC_WITH_CUDA off)");
#endif
  }
  return absl::InvalidArgumentError("unknown device");
}

}  // namespace moec::kernels
