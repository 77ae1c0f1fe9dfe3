// The Worker against the real Coordinator core through an in-process CoordinatorClient.
#include "worker/worker.h"

#include <filesystem>
#include <stdexcept>

#include "coordinator/coordinator.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "worker/stage_runner.h"

namespace moec::worker {
namespace {

// Calls the Coordinator core directly (what the gRPC service would do).
class LocalClient : public CoordinatorClient {
 public:
  explicit LocalClient(coordinator::Coordinator* core) : core_(core) {}
  absl::StatusOr<std::string> RegisterWorker(const std::string& name, bool gpu,
                                             int64_t memory) override {
    return core_->RegisterWorker({name, gpu, memory});
  }
  absl::StatusOr<std::vector<std::string>> Heartbeat(const std::string& id) override {
    return core_->Heartbeat(id);
  }
  absl::StatusOr<std::optional<Lease>> LeaseTask(const std::string& id) override {
    auto l = core_->LeaseTask(id);
    if (!l.ok()) return l.status();
    if (!l->has_value()) return std::optional<Lease>();
    return std::optional<Lease>(Lease{(*l)->task, (*l)->rank, (*l)->group, (*l)->recipe_json});
  }
  absl::StatusOr<bool> ReportProgress(const std::string& id, const std::string& task,
                                      double fraction, const std::string& message) override {
    ++progress_reports;
    return core_->ReportProgress(id, task, fraction, message);
  }
  std::atomic<int> progress_reports{0};
  absl::Status CompleteTask(const std::string& id, const std::string& task) override {
    return core_->CompleteTask(id, task, {});
  }
  absl::Status FailTask(const std::string& id, const std::string& task, const absl::Status& e,
                        bool retriable) override {
    return core_->FailTask(id, task, e, retriable);
  }
  absl::StatusOr<std::string> PutOutput(const std::string& id, const std::string& task,
                                        const std::string& name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    struct One : coordinator::ChunkSource {
      absl::string_view d;
      bool sent = false;
      absl::StatusOr<bool> Next(std::string* chunk) override {
        if (sent) return false;
        sent = true;
        chunk->assign(d.data(), d.size());
        return true;
      }
    } src;
    src.d = data;
    return core_->PutTaskOutput(id, task, name, dtype, shape, src);
  }
  absl::StatusOr<storage::Factor> GetFactor(const std::string& key) override {
    return core_->factors()->Get(key);
  }

 private:
  coordinator::Coordinator* core_;
};

// A stage that throws when sleep_ms == 13, else behaves like noop.
class ThrowingStage : public stages::Stage {
 public:
  absl::Status Run(stages::StageContext& ctx) override {
    if (ctx.params.value("sleep_ms", 0) == 13) throw std::runtime_error("kaboom");
    return absl::OkStatus();
  }
};

class WorkerTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = coordinator::JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  WorkerTest() : kv_(Families()) {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 3})");
    store_ = *coordinator::JobStore::Open(&kv_);
    coordinator::CoordinatorOptions o;
    o.retry.base_backoff_ms = 1;
    factors_ = *storage::FactorStore::Open(&kv_);
    core_ = *coordinator::Coordinator::Create(store_.get(), o, [] { return absl::Now(); },
                                              factors_.get());
    client_ = std::make_unique<LocalClient>(core_.get());
  }
  std::string Submit(int sleep_ms, int output_bytes = 0) {
    std::string yaml = "name: w\nmodel: m\noutput: out\nstages:\n"
                       "  - {id: a, kind: noop, with: {sleep_ms: " + std::to_string(sleep_ms) +
                       ", output_bytes: " + std::to_string(output_bytes) + "}}\n";
    auto r = core_->SubmitJob(yaml, dir_.Join("r.yaml"), {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r->job.job_id();
  }
  v1::JobState WaitForEnd(const std::string& job) {
    for (int i = 0; i < 1000; ++i) {
      v1::JobState s = core_->GetJob(job)->state();
      if (s == v1::JOB_SUCCEEDED || s == v1::JOB_FAILED) return s;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return core_->GetJob(job)->state();
  }
  WorkerOptions Fast() {
    WorkerOptions o;
    o.name = "test";
    o.poll_interval = absl::Milliseconds(5);
    o.heartbeat_interval = absl::Milliseconds(50);
    return o;
  }

  ::moec::testing::TempDir dir_;
  storage::InMemoryKvStore kv_;
  std::unique_ptr<coordinator::JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  std::unique_ptr<coordinator::Coordinator> core_;
  std::unique_ptr<LocalClient> client_;
};

TEST_F(WorkerTest, RunsNoopTasksToCompletion) {
  stages::StageRegistry registry;
  stages::RegisterBuiltinStages(&registry);
  Worker worker(client_.get(), &registry, Fast());
  ASSERT_OK(worker.Start());
  const std::string job = Submit(1);
  EXPECT_EQ(WaitForEnd(job), v1::JOB_SUCCEEDED);
  EXPECT_EQ(worker.tasks_done(), 3);
  EXPECT_EQ(client_->progress_reports.load(), 3);  // noop reports 1.0 once per task
  worker.Stop();
}

TEST_F(WorkerTest, StageOutputsReachTheFactorStoreWhenTasksComplete) {
  stages::StageRegistry registry;
  stages::RegisterBuiltinStages(&registry);
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

TEST(StageRunnerTest, ConvertsExceptionsAndMissingKinds) {
  stages::StageRegistry registry;
  registry.Register("noop", [] { return std::make_unique<ThrowingStage>(); });
  v1::TaskRecord task;
  task.set_task_id("j/a");
  task.set_kind("noop");
  stages::StageContext ctx;
  ctx.task = &task;
  ctx.params = {{"sleep_ms", 13}};
  EXPECT_THAT(RunStage(registry, ctx), ::moec::testing::StatusIs(absl::StatusCode::kInternal, "kaboom"));
  task.set_kind("gptq");
  EXPECT_THAT(RunStage(registry, ctx),
              ::moec::testing::StatusIs(absl::StatusCode::kUnimplemented, "'gptq'"));
  EXPECT_FALSE(IsRetriable(absl::UnimplementedError("")));
  EXPECT_TRUE(IsRetriable(absl::InternalError("")));
}

}  // namespace
}  // namespace moec::worker
