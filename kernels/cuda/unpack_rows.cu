#include "kernels/cuda/unpack_rows.cuh"

#include "kernels/cuda/cuda_status.h"

namespace moec::kernels::cuda {
namespace {

__global__ void UnpackRowsKernel(const uint32_t* __restrict__ packed, int64_t rows, int64_t cols,
                                 int bits, uint8_t* __restrict__ values) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols;
  const int64_t c = i - r * cols;
  const int64_t bit = r * bits;
  const int64_t word = bit >> 5;
  const int shift = static_cast<int>(bit & 31);
  const uint32_t mask = (1u << bits) - 1;
  uint32_t v = packed[word * cols + c] >> shift;
  if (shift + bits > 32) v |= packed[(word + 1) * cols + c] << (32 - shift);
  values[i] = static_cast<uint8_t>(v & mask);
}

}  // namespace

absl::Status UnpackRows(const uint32_t* packed, int64_t rows, int64_t cols, int bits,
                        uint8_t* values) {
  const int64_t n = rows * cols;
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  UnpackRowsKernel<<<static_cast<unsigned>(blocks), kThreads>>>(packed, rows, cols, bits, values);
  MOEC_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  MOEC_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace moec::kernels::cuda
