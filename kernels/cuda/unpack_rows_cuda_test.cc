// CUDA UnpackRows against the CPU reference. Skips itself on machines without a GPU.
#include <cuda_runtime_api.h>

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/unpack_rows.cuh"
#include "kernels/kernels.h"
#include "tests/testing/status_matchers.h"

namespace moec::kernels {
namespace {

TEST(UnpackRowsCudaTest, MatchesCpuReferenceForEveryWidth) {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(99);
  for (int bits = 1; bits <= 8; ++bits) {
    const int64_t rows = 4096 + 3, cols = 257;
    std::vector<uint8_t> values(rows * cols);
    for (auto& v : values) v = static_cast<uint8_t>(rng() % (1u << bits));
    std::vector<uint32_t> packed(PackedWordsPerColumn(rows, bits) * cols);
    ASSERT_OK(PackRows(values.data(), rows, cols, bits, packed.data()));
    std::vector<uint8_t> cpu(values.size());
    ASSERT_OK(UnpackRows(Device::kCpu, packed.data(), rows, cols, bits, cpu.data()));

    uint32_t* d_packed = nullptr;
    uint8_t* d_values = nullptr;
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_packed), packed.size() * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d_values), values.size()), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d_packed, packed.data(), packed.size() * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_OK(UnpackRows(Device::kCuda, d_packed, rows, cols, bits, d_values));
    std::vector<uint8_t> gpu(values.size());
    ASSERT_EQ(cudaMemcpy(gpu.data(), d_values, gpu.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(d_packed);
    cudaFree(d_values);
    EXPECT_EQ(gpu, cpu) << "bits " << bits;  // exact: integer op, tolerance 0
  }
}

}  // namespace
}  // namespace moec::kernels
