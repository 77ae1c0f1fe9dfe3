#include "common/device.h"

#include <gtest/gtest.h>

namespace moec {
namespace {

TEST(ComputeDeviceTest, ParsesCpuAndCudaOrdinalsAndPrintsThemBack) {
  ASSERT_TRUE(ComputeDevice::Parse("cpu").ok());
  EXPECT_FALSE(ComputeDevice::Parse("cpu")->cuda);
  absl::StatusOr<ComputeDevice> d = ComputeDevice::Parse("cuda:3");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->cuda);
  EXPECT_EQ(d->index, 3);
  EXPECT_EQ(d->ToString(), "cuda:3");
  EXPECT_EQ(ComputeDevice::Cpu().ToString(), "cpu");
  EXPECT_EQ(*ComputeDevice::Parse("cuda:0"), ComputeDevice::Cuda(0));
  EXPECT_NE(ComputeDevice::Cuda(0), ComputeDevice::Cuda(1));
}

TEST(ComputeDeviceTest, RefusesOtherSpellings) {
  for (const char* bad : {"", "gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda:1:2",
                          "cuda:99999"}) {
    absl::StatusOr<ComputeDevice> d = ComputeDevice::Parse(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    if (!d.ok()) EXPECT_NE(d.status().message().find("cpu or cuda:N"), std::string::npos);
  }
}

}  // namespace
}  // namespace moec
