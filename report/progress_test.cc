#include "report/progress.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moec::report {
namespace {

using ::testing::HasSubstr;

v1::TaskRecord* Add(v1::GetJobResponse* job, const std::string& stage, int layer,
                    v1::TaskState state, int64_t compute_ms = 0, double progress = 0) {
  v1::TaskRecord* t = job->add_tasks();
  t->set_stage_id(stage);
  t->set_layer(layer);
  t->set_state(state);
  t->set_compute_ms(compute_ms);
  t->set_progress(progress);
  return t;
}

TEST(JobProgressTest, EtaWeighsRemainingTasksByTheirStagesMeanComputeOverObservedParallelism) {
  v1::GetJobResponse job;
  Add(&job, "stats", 0, v1::TASK_DONE, 1000);
  Add(&job, "stats", 1, v1::TASK_DONE, 3000);
  Add(&job, "stats", 2, v1::TASK_LEASED, 0, 0.5);  // 2000 ms mean, half left: 1000
  Add(&job, "quant", 0, v1::TASK_BLOCKED);           // no quant done: overall mean 2000
  Add(&job, "quant", 1, v1::TASK_BLOCKED);           // 2000
  // Watch began with nothing done, 2 s ago: 4 s of compute in 2 s = parallelism 2.
  JobProgress p = SummarizeProgress(job, 0, 0, 2.0);
  EXPECT_EQ(p.total, 5);
  EXPECT_EQ(p.done, 2);
  EXPECT_DOUBLE_EQ(p.tasks_per_second, 1.0);
  EXPECT_DOUBLE_EQ(p.eta_seconds, (1000 + 2000 + 2000) / 1000.0 / 2.0);
  ASSERT_EQ(p.running.size(), 1u);
  EXPECT_EQ(p.running[0], "stats L2 50%");
  const std::string line = ProgressLine(p, 200);
  EXPECT_THAT(line, HasSubstr("2/5 tasks"));
  EXPECT_THAT(line, HasSubstr("1.0 tasks/s"));
  EXPECT_THAT(line, HasSubstr("ETA 3 s"));
  EXPECT_THAT(line, HasSubstr("| stats L2 50%"));
  EXPECT_EQ(ProgressLine(p, 20).size(), 20u);
}

TEST(JobProgressTest, ReusedAndPreviouslyDoneWorkDoesNotCount) {
  v1::GetJobResponse job;
  Add(&job, "stats", 0, v1::TASK_DONE, 0)->set_reused(true);
  Add(&job, "stats", 1, v1::TASK_READY);
  JobProgress p = SummarizeProgress(job, 1, 0, 5.0);
  EXPECT_EQ(p.done, 1);
  EXPECT_DOUBLE_EQ(p.tasks_per_second, 0);
  EXPECT_LT(p.eta_seconds, 0);  // nothing measured yet
  EXPECT_THAT(ProgressLine(p, 200), HasSubstr("ETA ?"));
}

TEST(JobProgressTest, FormatsLongEtas) {
  EXPECT_EQ(FormatEta(4.2), "ETA 5 s");
  EXPECT_EQ(FormatEta(125), "ETA 2 min 05 s");
  EXPECT_EQ(FormatEta(3720), "ETA 1 h 02 min");
  EXPECT_EQ(FormatEta(-1), "ETA ?");
}

}  // namespace
}  // namespace moec::report
