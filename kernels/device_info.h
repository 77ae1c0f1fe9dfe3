// What this process sees of its CUDA devices, without torch: how many, and their memory. The
// worker registers a GPU's memory with the coordinator from here. Builds without CUDA see none.
#ifndef MOEC_KERNELS_DEVICE_INFO_H_
#define MOEC_KERNELS_DEVICE_INFO_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace moec::kernels {

// CUDA devices visible to this process: 0 in a build without CUDA, without a driver or without a
// GPU (never an error: a GPU-less machine is a CPU machine).
int CudaDeviceCount();

struct DeviceMemory {
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
  std::string name;  // e.g. "NVIDIA H100 80GB HBM3"
};

// Memory of CUDA device `index`. Unimplemented in a build without CUDA; FailedPrecondition when
// the device does not exist (naming how many there are).
absl::StatusOr<DeviceMemory> CudaDeviceMemory(int index);

}  // namespace moec::kernels

#endif  // MOEC_KERNELS_DEVICE_INFO_H_
