#include "kernels/device_info.h"

#include <gtest/gtest.h>

#include "kernels/kernels.h"

namespace moec::kernels {
namespace {

TEST(DeviceInfoTest, CountsDevicesAndRefusesOrdinalsBeyondThem) {
  const int n = CudaDeviceCount();
  EXPECT_GE(n, 0);
  if (!BuiltWithCuda()) EXPECT_EQ(n, 0);
  absl::StatusOr<DeviceMemory> beyond = CudaDeviceMemory(n);
  EXPECT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.status().code(), BuiltWithCuda() ? absl::StatusCode::kFailedPrecondition
                                                    : absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(CudaDeviceMemory(-1).ok());
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<DeviceMemory> m = CudaDeviceMemory(i);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_GT(m->total_bytes, int64_t{1} << 30);
    EXPECT_GT(m->free_bytes, 0);
    EXPECT_LE(m->free_bytes, m->total_bytes);
    EXPECT_FALSE(m->name.empty());
  }
}

}  // namespace
}  // namespace moec::kernels
