// The Worker against the real Coordinator core through an in-process CoordinatorClient.
#include "worker/worker.h"

#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "comm/communicator.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "coordinator/coordinator.h"
#include "dataplane/stage_test_util.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "stages/noop_stage.h"
#include "worker/stage_runner.h"
#include "worker/worker_test_fixture.h"

namespace moec::worker {
namespace {

// A stage that throws when sleep_ms == 13, else behaves like noop.
class ThrowingStage : public stages::Stage {
 public:
  absl::Status Run(stages::StageContext& ctx) override {
    if (ctx.stage->Int("sleep_ms") == 13) throw std::runtime_error("kaboom");
    return absl::OkStatus();
  }
};

// A gang stage: all ranks all-reduce (rank + 1); rank 0 stores the sum as output "sum". On the
// first attempt of a task, rank 1 leaves without joining when `absent_first` is set (a member
// that died), so rank 0 must time out with a retriable error.
class AllReduceStage : public stages::Stage {
 public:
  explicit AllReduceStage(bool absent_first) : absent_first_(absent_first) {}
  absl::Status Run(stages::StageContext& ctx) override {
    if (ctx.comm == nullptr) return absl::InternalError("no communicator");
    if (absent_first_ && ctx.rank == 1 && ctx.task->attempts() == 1) return absl::OkStatus();
    int64_t v = ctx.rank + 1;
    at::Tensor t = at::full({1}, v, at::kLong);
    MOEC_RETURN_IF_ERROR(ctx.comm->AllReduceSum(t));
    if (ctx.rank != 0) return absl::OkStatus();
    const int64_t sum = t.item<int64_t>();
    return ctx.io->PutOutput("sum", storage::DType::kI64, {1},
                             absl::string_view(reinterpret_cast<const char*>(&sum), 8)).status();
  }

 private:
  const bool absent_first_;
};

// A stage whose phases are known: 30 ms of solve counting 6 GFLOP, then one output written.
class ProfiledStage : public stages::Stage {
 public:
  absl::Status Run(stages::StageContext& ctx) override {
    {
      profile::ScopedPhase solve(profile::Phase::kSolve);
      profile::AddFlops(6e9);
      absl::SleepFor(absl::Milliseconds(30));
    }
    return ctx.io->PutOutput("x", storage::DType::kU8, {3}, "abc").status();
  }
};


TEST_F(WorkerTest, RunsNoopTasksToCompletion) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<stages::NoopStage>(); });
  Worker worker(client_.get(), &registry, Fast());
  ASSERT_OK(worker.Start());
  const std::string job = Submit(1);
  EXPECT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED);
  EXPECT_EQ(worker.tasks_done(), 3);
  EXPECT_EQ(client_->progress_reports.load(), 3);  // noop reports 1.0 once per task
  // The chain's later layers came with the completions of the ones before (no LeaseTask).
  EXPECT_EQ(client_->granted_with_completion.load(), 2);
  worker.Stop();
}

// The worker measures each stage's run and reports it with the completion (TaskRecord.compute_ms):
// noop sleeps sleep_ms per task.
TEST_F(WorkerTest, ReportsEachTasksComputeTime) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<stages::NoopStage>(); });
  Worker worker(client_.get(), &registry, Fast());
  ASSERT_OK(worker.Start());
  const std::string job = Submit(60);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED);
  worker.Stop();
  auto tasks = *core_->GetTasks(job);
  ASSERT_EQ(tasks.size(), 3u);
  for (const v1::TaskRecord& t : tasks) {
    EXPECT_GE(t.compute_ms(), 60) << t.task_id();
    EXPECT_LT(t.compute_ms(), 5000) << t.task_id();
  }
}

// Each task's profile (TaskRecord.profile) comes back with its completion: every phase in
// order, the stage's own marks and FLOPs, the factor write as factor_io, what the worker measures
// against, and the coordinator's commit.
TEST_F(WorkerTest, ReportsWhereEachTasksTimeWent) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<ProfiledStage>(); });
  WorkerOptions o = Fast();
  o.gemm_gflops = 123;
  o.threads = 2;
  Worker worker(client_.get(), &registry, o);
  ASSERT_OK(worker.Start());
  const std::string job = Submit(0);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED);
  worker.Stop();
  const std::vector<v1::TaskRecord> tasks = *core_->GetTasks(job);
  ASSERT_EQ(tasks.size(), 3u);
  for (const v1::TaskRecord& t : tasks) {
    const v1::TaskProfile& p = t.profile();
    ASSERT_EQ(p.phases_size(), static_cast<int>(profile::Phase::kCount)) << t.task_id();
    std::map<std::string, v1::TaskPhase> by_name;
    double seconds = 0, flops = 0;
    for (int i = 0; i < p.phases_size(); ++i) {
      EXPECT_EQ(p.phases(i).name(), profile::PhaseName(static_cast<profile::Phase>(i)));
      by_name[p.phases(i).name()] = p.phases(i);
      seconds += p.phases(i).seconds();
      flops += p.phases(i).flops();
    }
    EXPECT_GE(by_name["solve"].seconds(), 0.03);
    EXPECT_EQ(by_name["solve"].flops(), 6e9);
    EXPECT_EQ(flops, 6e9);
    EXPECT_GT(by_name["factor_io"].seconds(), 0);
    EXPECT_LE(seconds, t.compute_ms() / 1000.0 + 0.002);
    EXPECT_EQ(p.gemm_gflops(), 123);
    EXPECT_EQ(p.threads(), 2);
    EXPECT_EQ(p.device(), "cpu");
    EXPECT_GT(p.commit_seconds(), 0);
  }
}

// A job that fixes its thread count runs every task with it (the worker's own count otherwise),
// and the profile records the count the task ran with.
TEST_F(WorkerTest, TasksRunWithTheJobsThreadCountWhenItFixesOne) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<stages::NoopStage>(); });
  WorkerOptions o = Fast();
  o.threads = 2;
  absl::Mutex mu;
  std::vector<int> set;
  o.set_threads = [&](int n) {
    absl::MutexLock lock(&mu);
    set.push_back(n);
  };
  Worker worker(client_.get(), &registry, o);
  ASSERT_OK(worker.Start());
  const std::string fixed = Submit(0, 0, 1, /*threads=*/5);
  ASSERT_EQ(WaitForEnd(fixed), v1::JOB_SUCCEEDED);
  const std::string own = Submit(1);
  ASSERT_EQ(WaitForEnd(own), v1::JOB_SUCCEEDED);
  worker.Stop();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(set, ::testing::ElementsAre(5, 5, 5, 2, 2, 2));  // 3 tasks per job
  // (The StatusOr must outlive the loop: a range over *Temporary() dangles.)
  const std::vector<v1::TaskRecord> fixed_tasks = *core_->GetTasks(fixed);
  const std::vector<v1::TaskRecord> own_tasks = *core_->GetTasks(own);
  for (const v1::TaskRecord& t : fixed_tasks) EXPECT_EQ(t.profile().threads(), 5);
  for (const v1::TaskRecord& t : own_tasks) EXPECT_EQ(t.profile().threads(), 2);
}

// Preemption: a worker stopped (SIGTERM) in the middle of a task gives it back at once, the
// attempt not counted, instead of letting its lease expire; another worker then runs it.
TEST_F(WorkerTest, AStoppedWorkerGivesItsRunningTaskBackAtOnce) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<stages::NoopStage>(); });
  auto first = std::make_unique<Worker>(client_.get(), &registry, Fast());
  ASSERT_OK(first->Start());
  const std::string job = Submit(60000);
  auto running = [&] {
    const std::vector<v1::TaskRecord> tasks = *core_->GetTasks(job);
    for (const v1::TaskRecord& t : tasks) {
      if (t.state() == v1::TASK_LEASED) return true;
    }
    return false;
  };
  for (int i = 0; i < 500 && !running(); ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(running());
  const absl::Time stopped = absl::Now();
  first->Stop();
  const std::vector<v1::TaskRecord> tasks = *core_->GetTasks(job);
  EXPECT_LT(absl::Now() - stopped, absl::Seconds(5));
  EXPECT_EQ(tasks[0].state(), v1::TASK_READY);
  EXPECT_EQ(tasks[0].attempts(), 0);
  EXPECT_EQ(tasks[0].lost_leases(), 0);
  bool released = false;
  const std::vector<v1::JobEvent> events = *core_->ReadEvents(job, 0, 100);
  for (const v1::JobEvent& e : events) {
    released |= e.kind() == v1::EVENT_TASK_RELEASED && e.task_id() == tasks[0].task_id();
  }
  EXPECT_TRUE(released);
}

TEST_F(WorkerTest, StageOutputsReachTheFactorStoreWhenTasksComplete) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<stages::NoopStage>(); });
  Worker worker(client_.get(), &registry, Fast());
  ASSERT_OK(worker.Start());
  const std::string job = Submit(0, 30);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED);
  worker.Stop();
  auto tasks = *core_->GetTasks(job);
  ASSERT_EQ(tasks.size(), 3u);
  ASSERT_OK_AND_ASSIGN(storage::Factor f, factors_->Get(tasks[2].fingerprint() + "/noop"));
  EXPECT_EQ(f.data.size(), 30u);
  EXPECT_EQ(f.data.substr(0, 3), "cde");  // 'a' + (i + layer 2) % 26
}

TEST_F(WorkerTest, AThrowingStageFailsItsJobButNotTheWorker) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<ThrowingStage>(); });
  Worker worker(client_.get(), &registry, Fast());
  ASSERT_OK(worker.Start());
  const std::string bad = Submit(13);
  EXPECT_EQ(WaitForEnd(bad), v1::JOB_FAILED);
  EXPECT_THAT(core_->GetJob(bad)->error(), ::testing::HasSubstr("kaboom"));
  EXPECT_EQ(worker.tasks_failed(), 3);  // retried up to max_attempts
  const std::string good = Submit(0);
  EXPECT_EQ(WaitForEnd(good), v1::JOB_SUCCEEDED);
  worker.Stop();
}

TEST_F(WorkerTest, GangTasksFormAGlooGroupThroughTheCoordinator) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<AllReduceStage>(false); });
  WorkerOptions o = Fast();
  Worker a(client_.get(), &registry, o), b(client_.get(), &registry, o);
  ASSERT_OK(a.Start());
  ASSERT_OK(b.Start());
  const std::string job = Submit(0, 0, /*workers=*/2);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED) << core_->GetJob(job)->error();
  a.Stop();
  b.Stop();
  EXPECT_EQ(a.tasks_done() + b.tasks_done(), 6);  // 3 layer tasks x 2 ranks
  const std::vector<v1::TaskRecord> tasks = *core_->GetTasks(job);
  for (const auto& t : tasks) {
    ASSERT_OK_AND_ASSIGN(storage::Factor f, factors_->Get(t.fingerprint() + "/sum"));
    int64_t sum = 0;
    std::memcpy(&sum, f.data.data(), 8);
    EXPECT_EQ(sum, 3) << t.task_id();
  }
}

TEST_F(WorkerTest, AMissingGangMemberFailsTheAttemptRetriablyAndTheRetrySucceeds) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<AllReduceStage>(true); });
  WorkerOptions o = Fast();
  o.collective_timeout = absl::Seconds(1);
  Worker a(client_.get(), &registry, o), b(client_.get(), &registry, o);
  ASSERT_OK(a.Start());
  ASSERT_OK(b.Start());
  const std::string job = Submit(0, 0, /*workers=*/2);
  ASSERT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED) << core_->GetJob(job)->error();
  a.Stop();
  b.Stop();
  EXPECT_GE(a.tasks_failed() + b.tasks_failed(), 3);  // each task's first attempt
  const std::vector<v1::TaskRecord> tasks = *core_->GetTasks(job);
  for (const auto& t : tasks) EXPECT_EQ(t.attempts(), 2) << t.task_id();
}

TEST_F(WorkerTest, GroupStoreIsOpenOnlyToTheLeaseHoldersOfTheCurrentAttempt) {
  const std::string w1 = core_->RegisterWorker({"a", false, 0});
  const std::string w2 = core_->RegisterWorker({"b", false, 0});
  const std::string outsider = core_->RegisterWorker({"c", false, 0});
  const std::string job = Submit(0, 0, /*workers=*/2);
  std::optional<coordinator::LeasedTask> lease;
  for (const std::string& w : {w1, w2, outsider}) {
    auto l = core_->LeaseTask(w);
    ASSERT_OK(l.status());
    if (l->has_value() && !lease) lease = **l;
  }
  ASSERT_TRUE(lease.has_value());
  const std::string task = lease->task.task_id();
  const int attempt = lease->task.attempts();
  const std::string member = lease->group[1];
  ASSERT_OK(GroupSet(*core_, lease->group[0], task, attempt, "k", "v"));
  auto got = GroupGet(*core_, member, task, attempt, "k", absl::ZeroDuration());
  ASSERT_OK(got.status());
  EXPECT_EQ(got->value_or(""), "v");
  std::string other = outsider;
  for (const std::string& w : {w1, w2, outsider}) {
    if (w != lease->group[0] && w != lease->group[1]) other = w;
  }
  EXPECT_EQ(GroupGet(*core_, other, task, attempt, "k", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GroupSet(*core_, member, task, attempt + 1, "k", "v").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GroupSet(*core_, member, task, attempt, std::string(300, 'k'), "v").code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(int64_t n, GroupAdd(*core_, member, task, attempt, "n", 5));
  EXPECT_EQ(n, 5);
  auto missing = GroupGet(*core_, member, task, attempt, "absent", absl::Milliseconds(10));
  ASSERT_OK(missing.status());
  EXPECT_FALSE(missing->has_value());
}

}  // namespace
}  // namespace moec::worker
