#include "common/task_id.h"

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec {
namespace {

using ::moec::testing::StatusIs;

TEST(TaskIdTest, FormatsAndParsesBothForms) {
  const TaskId global{"job-1", "out", -1};
  const TaskId layer{"job-1", "quant", 12};
  EXPECT_EQ(global.ToString(), "job-1/out");
  EXPECT_EQ(layer.ToString(), "job-1/quant/L12");
  ASSERT_OK_AND_ASSIGN(TaskId g, TaskId::Parse("job-1/out"));
  EXPECT_EQ(g, global);
  ASSERT_OK_AND_ASSIGN(TaskId l, TaskId::Parse("job-1/quant/L12"));
  EXPECT_EQ(l, layer);
  EXPECT_EQ(TaskId::JobOf("job-1/quant/L12"), "job-1");
  EXPECT_EQ(TaskId::JobOf("job-1"), "job-1");
  for (const char* bad : {"", "job", "/out", "job/", "job/out/12", "job/out/L", "job/out/L-1",
                          "job/out/L01", "job/out/Lx", "a/b/L1/c"}) {
    EXPECT_THAT(TaskId::Parse(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(FactorKeyTest, SplitsAtTheFirstSlash) {
  ASSERT_OK_AND_ASSIGN(FactorKey k, FactorKey::Parse("abc123/model.layers.0.q/scales"));
  EXPECT_EQ(k.fingerprint, "abc123");
  EXPECT_EQ(k.name, "model.layers.0.q/scales");
  EXPECT_EQ(k.ToString(), "abc123/model.layers.0.q/scales");
  for (const char* bad : {"", "abc", "/x", "abc/"}) {
    EXPECT_THAT(FactorKey::Parse(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

}  // namespace
}  // namespace moec
