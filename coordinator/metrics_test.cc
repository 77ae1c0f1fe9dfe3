#include "coordinator/metrics.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::coordinator {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersGaugesAndAdvancesCountersByDifference) {
  ASSERT_OK_AND_ASSIGN(auto m, MetricsExporter::Start(""));  // no HTTP listener in tests
  CoordinatorStats s;
  s.jobs_by_state["JOB_RUNNING"] = 2;
  s.tasks_by_state["TASK_DONE"] = 7;
  s.workers = 3;
  s.leases_granted = 5;
  m->Update(s);
  s.leases_granted = 9;
  m->Update(s);
  const std::string text = m->Render();
  EXPECT_THAT(text, HasSubstr("moec_jobs{state=\"JOB_RUNNING\"} 2"));
  EXPECT_THAT(text, HasSubstr("moec_tasks{state=\"TASK_DONE\"} 7"));
  EXPECT_THAT(text, HasSubstr("moec_workers 3"));
  EXPECT_THAT(text, HasSubstr("moec_leases_granted_total 9"));
}

}  // namespace
}  // namespace moec::coordinator
