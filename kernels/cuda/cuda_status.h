// CUDA error codes to absl::Status, with ggml's CUDA_CHECK shape but returning instead of
// aborting: a worker reports the failure and keeps serving.
#ifndef MOEC_KERNELS_CUDA_CUDA_STATUS_H_
#define MOEC_KERNELS_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moec::kernels::cuda {

inline absl::Status CudaToStatus(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return absl::OkStatus();
  std::string msg = absl::StrCat(expr, " at ", file, ":", line, ": ", cudaGetErrorName(err), " (",
                                 cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    return absl::FailedPreconditionError(msg);
  }
  return absl::InternalError(msg);
}

}  // namespace moec::kernels::cuda

#define MOEC_CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                      \
    ::absl::Status moec_cuda_status_ =                                                      \
        ::moec::kernels::cuda::CudaToStatus((expr), #expr, __FILE__, __LINE__);             \
    if (!moec_cuda_status_.ok()) return moec_cuda_status_;                                  \
  } while (0)

#endif  // MOEC_KERNELS_CUDA_CUDA_STATUS_H_
