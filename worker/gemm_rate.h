// The GEMM rate a worker's tasks are measured against (TaskProfile.gemm_gflops): measured once
// at start-up on the worker's device, with its threads.
#ifndef MOEC_WORKER_GEMM_RATE_H_
#define MOEC_WORKER_GEMM_RATE_H_

#include "absl/status/statusor.h"
#include "common/device.h"

namespace moec::worker {

// GFLOP/s of a square fp32 matrix product (1536 on a CPU, 4096 on a GPU: large enough to reach
// the device's rate, small enough to take well under a second), the best of the runs after a
// warm-up (at least 3 and a quarter of a second). Errors: those of the device (a CUDA device
// that is not there).
absl::StatusOr<double> MeasureGemmGflops(const ComputeDevice& device);

}  // namespace moec::worker

#endif  // MOEC_WORKER_GEMM_RATE_H_
