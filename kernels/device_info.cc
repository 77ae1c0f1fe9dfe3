#include "kernels/device_info.h"

#include "absl/strings/str_cat.h"

#if MOEC_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_status.h"
#endif

namespace moec::kernels {

int CudaDeviceCount() {
#if MOEC_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

absl::StatusOr<DeviceMemory> CudaDeviceMemory(int index) {
#if MOEC_WITH_CUDA
  const int n = CudaDeviceCount();
  if (index < 0 || index >= n) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device ", index, ": this process sees ", n, " GPU(s)"));
  }
  int previous = 0;
  MOEC_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
  MOEC_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  MOEC_CUDA_RETURN_IF_ERROR(err);
  cudaDeviceProp prop{};
  MOEC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  return DeviceMemory{static_cast<int64_t>(total_bytes), static_cast<int64_t>(free_bytes),
                      prop.name};
#else
  return absl::UnimplementedError(
      absl::StrCat("cuda:", index, ": this build of moec has no CUDA (MOEC_ENABLE_CUDA=OFF)"));
#endif
}

}  // namespace moec::kernels
