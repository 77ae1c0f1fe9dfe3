// GPU workers in the Coordinator: tasks carry their planned GPU memory from submission, a GPU
// worker is leased only tasks that fit its registered memory, and a task no registered worker can
// hold fails with the sizes named.
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_fixture.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tools/tiny_model.h"

namespace moec::coordinator {
namespace {

using ::testing::HasSubstr;

constexpr char kCalibrateRecipe[] = R"(name: gpu
model: tiny
output: out
workers: 1
calibration: {path: calib.txt, samples: 8, seqlen: 16}
stages:
  - {id: stats, kind: calibrate}
  - {id: out, kind: export, needs: [stats], with: {format: hf}}
)";

class CoordinatorGpuTest : public CoordinatorTest {
 protected:
  CoordinatorGpuTest() {
    tools::TinyModelOptions o;
    o.num_layers = 2;
    EXPECT_OK(tools::WriteTinyModel(o, dir_.Join("tiny")));
    dir_.WriteFile("calib.txt", std::string(4000, 'x'));
  }
  WorkerInfo Gpu(const std::string& name, int64_t bytes) { return {name, true, 0, bytes}; }
};

TEST_F(CoordinatorGpuTest, TasksCarryTheirPlannedGpuMemoryAndGoOnlyToGpusThatHoldIt) {
  const std::string job = Submit(kCalibrateRecipe).job.job_id();
  ASSERT_OK_AND_ASSIGN(std::vector<v1::TaskRecord> tasks, coord_->GetTasks(job));
  ASSERT_EQ(tasks.size(), 3u);
  const int64_t need = tasks[0].device_memory_bytes();
  EXPECT_GT(need, int64_t{1} << 30);        // the layer, its windows, and the CUDA overhead
  EXPECT_LT(need, int64_t{2} << 30);        // a tiny model
  EXPECT_EQ(tasks[2].device_memory_bytes(), 0);  // the export runs on the host
  // A GPU too small gets nothing while a GPU that holds it exists; the large one gets the task.
  const std::string small = coord_->RegisterWorker(Gpu("small", need - 1));
  const std::string large = coord_->RegisterWorker(Gpu("large", need));
  EXPECT_FALSE(Lease(small).has_value());
  std::optional<LeasedTask> t = Lease(large);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.task_id(), job + "/stats/L0");
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_RUNNING);
}

TEST_F(CoordinatorGpuTest, ATaskNoRegisteredWorkerCanHoldFailsNamingTheSizes) {
  const std::string job = Submit(kCalibrateRecipe).job.job_id();
  const std::string w = coord_->RegisterWorker(Gpu("tiny-gpu", int64_t{256} << 20));
  EXPECT_FALSE(Lease(w).has_value());
  const v1::JobRecord j = *coord_->GetJob(job);
  EXPECT_EQ(j.state(), v1::JOB_FAILED);
  EXPECT_THAT(j.error(), HasSubstr("RESOURCE_EXHAUSTED"));
  EXPECT_THAT(j.error(), HasSubstr("GiB of GPU memory by its plan"));
  EXPECT_THAT(j.error(), HasSubstr("has 0.25 GiB"));
}

TEST_F(CoordinatorGpuTest, ACpuWorkerTakesWhatNoGpuHolds) {
  const std::string job = Submit(kCalibrateRecipe).job.job_id();
  const std::string g = coord_->RegisterWorker(Gpu("tiny-gpu", int64_t{256} << 20));
  const std::string c = coord_->RegisterWorker({"cpu"});
  EXPECT_FALSE(Lease(g).has_value());
  std::optional<LeasedTask> t = Lease(c);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.task_id(), job + "/stats/L0");
}

}  // namespace
}  // namespace moec::coordinator
