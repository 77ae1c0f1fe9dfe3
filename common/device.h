// Where a worker computes: the CPU or one CUDA GPU ("cpu", "cuda:N"). No torch here: the
// control plane (coordinator, CLI) reads and prints devices without libtorch.
#ifndef MOEC_COMMON_DEVICE_H_
#define MOEC_COMMON_DEVICE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec {

struct ComputeDevice {
  bool cuda = false;
  int index = 0;  // the CUDA device ordinal when cuda

  // "cpu" or "cuda:N" (N >= 0). InvalidArgument naming the accepted spellings otherwise.
  static absl::StatusOr<ComputeDevice> Parse(absl::string_view text);
  static ComputeDevice Cpu() { return {}; }
  static ComputeDevice Cuda(int index) { return {true, index}; }
  std::string ToString() const;  // "cpu" or "cuda:N"
  bool operator==(const ComputeDevice& o) const { return cuda == o.cuda && index == o.index; }
  bool operator!=(const ComputeDevice& o) const { return !(*this == o); }
};

}  // namespace moec

#endif  // MOEC_COMMON_DEVICE_H_
