// RunStage (worker/stage_runner.h): a stage's exceptions, unknown kinds and device
// out-of-memory errors become precise statuses, with their retriability.
#include "worker/stage_runner.h"

#include <ATen/ATen.h>

#include <stdexcept>

#include "dataplane/stage_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::worker {
namespace {

// A stage that throws when sleep_ms == 13, else does nothing.
class ThrowingStage : public stages::Stage {
 public:
  absl::Status Run(stages::StageContext& ctx) override {
    if (ctx.stage->Int("sleep_ms") == 13) throw std::runtime_error("kaboom");
    return absl::OkStatus();
  }
};

TEST(StageRunnerTest, ConvertsExceptionsAndMissingKinds) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<ThrowingStage>(); });
  v1::TaskRecord task;
  task.set_task_id("j/a");
  task.set_kind("noop");
  stages::StageContext ctx;
  ctx.task = &task;
  ctx.SetRecipe(dataplane::TestRecipe({{"model", "/m"},
                                       {"stages", {dataplane::TestStage("a", "noop", {{"sleep_ms", 13}})}}}),
                "a");
  EXPECT_THAT(RunStage(registry, ctx), ::moec::testing::StatusIs(absl::StatusCode::kInternal, "kaboom"));
  task.set_kind("gptq");
  EXPECT_THAT(RunStage(registry, ctx),
              ::moec::testing::StatusIs(absl::StatusCode::kUnimplemented, "'gptq'"));
  EXPECT_FALSE(IsRetriable(absl::UnimplementedError("")));
  EXPECT_TRUE(IsRetriable(absl::InternalError("")));
}

// What c10's CUDA caching allocator throws when a GPU is full.
class DeviceFullStage : public stages::Stage {
 public:
  absl::Status Run(stages::StageContext&) override {
    TORCH_CHECK_WITH(OutOfMemoryError, false,
                     "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                     "of 79.19 GiB of which 1.06 GiB is free.\nIncluding non-PyTorch memory ...");
    return absl::OkStatus();
  }
};

TEST(StageRunnerTest, ADeviceOutOfMemoryErrorIsResourceExhaustedNamingTheDeviceAndRetriable) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<DeviceFullStage>(); });
  v1::TaskRecord task;
  task.set_task_id("j/a@3");
  task.set_kind("noop");
  stages::StageContext ctx;
  ctx.task = &task;
  ctx.device = ComputeDevice::Cuda(0);
  const absl::Status s = RunStage(registry, ctx);
  EXPECT_THAT(s, ::moec::testing::StatusIs(absl::StatusCode::kResourceExhausted,
                                           "task j/a@3 on cuda:0: out of memory"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("1.06 GiB is free"));
  EXPECT_THAT(std::string(s.message()), ::testing::Not(::testing::HasSubstr("non-PyTorch")));
  EXPECT_TRUE(IsRetriable(s));
}

}  // namespace
}  // namespace moec::worker
