#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_recipe.h"

#include <filesystem>
#include <map>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "proto/event_kind.h"
#include "common/status_payloads.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;


class CoordinatorTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  CoordinatorTest() : kv_(Families()) {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 2})");
    store_ = *JobStore::Open(&kv_);
    storage::FactorStoreOptions fo;
    fo.chunk_bytes = 4;  // several chunks even for tiny test tensors
    factors_ = *storage::FactorStore::Open(&kv_, fo);
    policy_.max_attempts = 2;
    policy_.base_backoff_ms = 100;
    policy_.lease_ms = 1000;
    Restart();
  }
  void Restart() {
    coord_.reset();
    CoordinatorOptions o;
    o.retry = policy_;
    auto c = Coordinator::Create(store_.get(), o, [this] { return now_; }, factors_.get());
    ASSERT_TRUE(c.ok()) << c.status();
    coord_ = *std::move(c);
  }
  SubmitResult Submit(const std::string& yaml = kTinyRecipe,
                      std::vector<std::string> overrides = {}) {
    auto r = coord_->SubmitJob(yaml, dir_.Join("recipe.yaml"), overrides);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SubmitResult{};
  }
  std::optional<LeasedTask> Lease(const std::string& w) {
    auto l = coord_->LeaseTask(w);
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? *l : std::nullopt;
  }
  std::vector<std::string> EventKinds(const std::string& job) {
    std::vector<std::string> kinds;
    auto events = coord_->ReadEvents(job, 0, 1000);
    EXPECT_TRUE(events.ok()) << events.status();
    for (const auto& e : *events) kinds.push_back(EventKindName(KindOf(e)));
    return kinds;
  }
  void Advance(int64_t ms) { now_ += absl::Milliseconds(ms); }

  ::moec::testing::TempDir dir_;
  storage::InMemoryKvStore kv_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  RetryPolicy policy_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  std::unique_ptr<Coordinator> coord_;
};

TEST_F(CoordinatorTest, RunsAJobToCompletionInDependencyOrder) {
  SubmitResult s = Submit();
  EXPECT_FALSE(s.existed);
  const std::string job = s.job.job_id();
  EXPECT_EQ(s.job.state(), v1::JOB_PENDING);
  std::string w = coord_->RegisterWorker({"host:1"});
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    std::optional<LeasedTask> t = Lease(w);
    ASSERT_TRUE(t.has_value()) << i;
    EXPECT_EQ(t->rank, 0);
    EXPECT_THAT(t->recipe_json, HasSubstr("max_shard_mib"));
    order.push_back(t->task.task_id());
    EXPECT_FALSE(Lease(w).has_value());  // one task at a time; nothing else is ready
    ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  }
  EXPECT_THAT(order, ElementsAre(job + "/stats/L0", job + "/stats/L1", job + "/bits"));
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_SUCCEEDED);
  EXPECT_THAT(EventKinds(job), ElementsAre("job_submitted", "task_leased", "task_done",
                                           "task_leased", "task_done", "task_leased", "task_done",
                                           "job_succeeded"));
  EXPECT_THAT(coord_->CompleteTask(w, job + "/bits", {}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "does not hold"));
  CoordinatorStats stats = coord_->Stats();
  EXPECT_EQ(stats.leases_granted, 3);
  EXPECT_EQ(stats.tasks_completed, 3);
  EXPECT_EQ(stats.workers, 1);
  EXPECT_EQ(stats.jobs_by_state["JOB_SUCCEEDED"], 1);
  EXPECT_EQ(stats.tasks_by_state["TASK_DONE"], 3);
  EXPECT_EQ(stats.retries, 0);
}

// The metrics' task counts name every state that has tasks, and only those.
TEST_F(CoordinatorTest, StatsCountTasksByStateMidJob) {
  const std::string job = Submit().job.job_id();
  const std::string w = coord_->RegisterWorker({"a"});
  ASSERT_TRUE(coord_->LeaseTask(w)->has_value());  // stats/L0 (noop is chained by layer)
  std::map<std::string, int64_t> by_state = coord_->Stats().tasks_by_state;
  EXPECT_THAT(by_state, ::testing::UnorderedElementsAre(::testing::Pair("TASK_LEASED", 1),
                                                        ::testing::Pair("TASK_BLOCKED", 2)));
}

TEST_F(CoordinatorTest, ProgressIsRecordedRenewsTheLeaseAndCarriesCancellation) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::string other = coord_->RegisterWorker({"b"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  Advance(900);
  EXPECT_THAT(coord_->ReportProgress(w, t->task.task_id(), 1.7, "almost"),
              moec::testing::IsOkAndHolds(false));
  auto tasks = *coord_->GetTasks(job);
  EXPECT_EQ(tasks[0].progress(), 1.0);  // clamped
  EXPECT_EQ(tasks[0].progress_message(), "almost");
  Advance(900);  // 1.8 s after the lease, 0.9 s after the renewal: still held
  ASSERT_OK(coord_->Tick());
  EXPECT_EQ((*coord_->GetTasks(job))[0].state(), v1::TASK_LEASED);
  EXPECT_THAT(coord_->ReportProgress(other, t->task.task_id(), 0.5, ""),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(coord_->CancelJob(job));
  EXPECT_THAT(coord_->ReportProgress(w, t->task.task_id(), 0.5, ""),
              moec::testing::IsOkAndHolds(true));
}

TEST_F(CoordinatorTest, SubmitIsIdempotentAndValidates) {
  SubmitResult a = Submit();
  SubmitResult b = Submit();
  EXPECT_TRUE(b.existed);
  EXPECT_EQ(a.job.job_id(), b.job.job_id());
  EXPECT_EQ(coord_->ListJobs().size(), 1u);
  EXPECT_THAT(coord_->SubmitJob("name: x\n", dir_.Join("r.yaml"), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "r.yaml"));
}

TEST_F(CoordinatorTest, AnExistingOutputIsRefusedUnlessThisJobWroteItOrOverwrite) {
  std::filesystem::create_directories(dir_.Join("out"));
  dir_.WriteFile("out/mine.txt", "the user's files");
  EXPECT_THAT(coord_->SubmitJob(kTinyRecipe, dir_.Join("recipe.yaml"), {}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "not written by moec); pass --overwrite"));
  // Written by another job: named in the error.
  dir_.WriteFile("out/moec_export.json", R"({"job_id": "other-123", "output": "x"})");
  EXPECT_THAT(coord_->SubmitJob(kTinyRecipe, dir_.Join("recipe.yaml"), {}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "written by job other-123"));
  // --overwrite: accepted, kept on the job (not in its recipe, which the fingerprint covers),
  // and carried by its leases to the export.
  ASSERT_OK_AND_ASSIGN(SubmitResult r,
                       coord_->SubmitJob(kTinyRecipe, dir_.Join("recipe.yaml"), {}, true));
  EXPECT_TRUE(r.job.overwrite());
  EXPECT_FALSE(nlohmann::json::parse(r.job.recipe_json()).contains("overwrite"));
  {
    std::string w = coord_->RegisterWorker({"o"});
    std::optional<LeasedTask> t = Lease(w);
    ASSERT_TRUE(t.has_value());
    EXPECT_TRUE(t->overwrite);
    ASSERT_OK(coord_->ReleaseTask(w, t->task.task_id()));
  }
  // The same job again (as `moec run` after an interruption or once it finished): accepted.
  dir_.WriteFile("out/moec_export.json", R"({"job_id": ")" + r.job.job_id() + R"("})");
  Restart();
  ASSERT_OK_AND_ASSIGN(SubmitResult again,
                       coord_->SubmitJob(kTinyRecipe, dir_.Join("recipe.yaml"), {"workers=1"}));
  EXPECT_TRUE(again.existed);
  EXPECT_TRUE(std::filesystem::exists(dir_.Join("out/mine.txt")));  // nothing deleted at submit
}

TEST_F(CoordinatorTest, GangTaskIsGrantedWhenEnoughWorkersWait) {
  const std::string job = Submit(kTinyRecipe, {"workers=2"}).job.job_id();
  std::string w1 = coord_->RegisterWorker({"a"});
  std::string w2 = coord_->RegisterWorker({"b"});
  EXPECT_FALSE(Lease(w1).has_value());  // the layer task needs two workers
  std::optional<LeasedTask> t2 = Lease(w2);
  ASSERT_TRUE(t2.has_value());
  std::optional<LeasedTask> t1 = Lease(w1);  // picks up its share at the next poll
  ASSERT_TRUE(t1.has_value());
  EXPECT_EQ(t1->task.task_id(), job + "/stats/L0");
  EXPECT_EQ(t2->task.task_id(), t1->task.task_id());
  EXPECT_THAT(t1->group, ElementsAre(w1, w2));
  EXPECT_EQ(t1->rank, 0);
  EXPECT_EQ(t2->rank, 1);
  EXPECT_THAT(coord_->CompleteTask(w2, t1->task.task_id(), {}),
              StatusIs(absl::StatusCode::kFailedPrecondition, "only rank 0"));
  ASSERT_OK(coord_->CompleteTask(w1, t1->task.task_id(), {}));
  // A waiting window expires: a worker that stopped polling is not drafted into a gang.
  EXPECT_FALSE(Lease(w1).has_value());
  Advance(10000);
  ASSERT_OK(coord_->Heartbeat(w1).status());
  ASSERT_OK(coord_->Heartbeat(w2).status());
  EXPECT_FALSE(Lease(w2).has_value());
}

TEST_F(CoordinatorTest, ExpiredLeasesRetryThenFailTheJobAndResumeRequeues) {
  const std::string job = Submit().job.job_id();
  std::string w1 = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> t = Lease(w1);
  ASSERT_TRUE(t.has_value());
  Advance(1001);  // no heartbeat: the lease expires
  ASSERT_OK(coord_->Tick());
  auto tasks = *coord_->GetTasks(job);
  EXPECT_EQ(tasks[0].state(), v1::TASK_READY);
  EXPECT_THAT(tasks[0].error(), HasSubstr("expired"));
  EXPECT_FALSE(Lease(w1).has_value());  // backoff of 100 ms
  Advance(100);
  t = Lease(w1);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.attempts(), 2);
  EXPECT_EQ(coord_->Stats().lease_expiries, 1);
  EXPECT_EQ(coord_->Stats().retries, 1);
  ASSERT_OK(coord_->FailTask(w1, t->task.task_id(), absl::InternalError("stage crashed"), true));
  EXPECT_EQ(coord_->Stats().tasks_failed, 1);
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_FAILED);  // out of attempts
  EXPECT_THAT(coord_->GetJob(job)->error(), HasSubstr("stage crashed"));
  EXPECT_FALSE(Lease(w1).has_value());
  EXPECT_THAT(coord_->CancelJob(job), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(coord_->ResumeJob(job));
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_PENDING);
  t = Lease(w1);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.attempts(), 1);
  EXPECT_THAT(coord_->ResumeJob(job), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(CoordinatorTest, NonRetriableFailureFailsAtOnceAndCancelReachesTheWorker) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_OK(coord_->CancelJob(job));
  EXPECT_THAT(coord_->Heartbeat(w, {t->task.task_id()}),
              moec::testing::IsOkAndHolds(ElementsAre(t->task.task_id())));
  EXPECT_THAT(coord_->CompleteTask(w, t->task.task_id(), {}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_CANCELLED);
  ASSERT_OK(coord_->ResumeJob(job));
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_OK(coord_->FailTask(w, t->task.task_id(), absl::InvalidArgumentError("bad params"), false));
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_FAILED);
}

TEST_F(CoordinatorTest, RestartRecoversStateAndNothingFinishedRunsAgain) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  t = Lease(w);  // stats/L1 leased when the coordinator "dies"
  ASSERT_TRUE(t.has_value());
  Restart();
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_RUNNING);
  auto tasks = *coord_->GetTasks(job);
  EXPECT_EQ(tasks[0].state(), v1::TASK_DONE);
  EXPECT_EQ(tasks[1].state(), v1::TASK_LEASED);
  // Workers are not persisted: the old one must register again; its lease runs out and the
  // task goes to the new worker.
  EXPECT_THAT(coord_->Heartbeat(w), StatusIs(absl::StatusCode::kNotFound));
  std::string w2 = coord_->RegisterWorker({"b"});
  EXPECT_FALSE(Lease(w2).has_value());
  Advance(1001);
  ASSERT_OK(coord_->Tick());
  Advance(100);
  int leases = 0;
  for (std::optional<LeasedTask> n = Lease(w2); n.has_value(); n = Lease(w2)) {
    ++leases;
    ASSERT_OK(coord_->CompleteTask(w2, n->task.task_id(), {}));
  }
  EXPECT_EQ(leases, 2);  // stats/L1 and bits; stats/L0 was not recomputed
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_SUCCEEDED);
}

// A worker long-polling in LeaseTask gets the next task as soon as the previous one completes,
// not at its next poll.
TEST_F(CoordinatorTest, LongPollHandsOutTheNextTaskOnCompletion) {
  Submit();
  const std::string a = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> first = Lease(a);
  ASSERT_TRUE(first.has_value());
  absl::StatusOr<std::optional<LeasedTask>> waited;
  absl::Duration took;
  std::thread poller([&] {
    const absl::Time start = absl::Now();
    waited = coord_->LeaseTask(a, absl::Seconds(2));
    took = absl::Now() - start;
  });
  absl::SleepFor(absl::Milliseconds(100));  // the poller is waiting
  ASSERT_OK(coord_->CompleteTask(a, first->task.task_id(), {}));
  poller.join();
  ASSERT_OK(waited.status());
  ASSERT_TRUE(waited->has_value());
  EXPECT_NE((*waited)->task.task_id(), first->task.task_id());
  EXPECT_LT(took, absl::Milliseconds(1500));
  // Nothing left to lease soon: the long poll answers "nothing" after its wait.
  const absl::Time start = absl::Now();
  auto none = coord_->LeaseTask(coord_->RegisterWorker({"b"}), absl::Milliseconds(50));
  ASSERT_OK(none.status());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(40));
}

TEST_F(CoordinatorTest, IdenticalWorkIsReusedAcrossJobs) {
  const std::string first = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  for (std::optional<LeasedTask> n = Lease(w); n.has_value(); n = Lease(w)) {
    ASSERT_OK(coord_->CompleteTask(w, n->task.task_id(), {}));
  }
  // Same stages, a different name and a changed late stage: calibration is reused.
  SubmitResult second = Submit(kTinyRecipe, {"name=tiny2", "stages.bits.with.max_shard_mib=3"});
  EXPECT_FALSE(second.existed);
  auto tasks = *coord_->GetTasks(second.job.job_id());
  EXPECT_EQ(tasks[0].state(), v1::TASK_DONE);
  EXPECT_TRUE(tasks[0].reused());
  EXPECT_TRUE(tasks[1].reused());
  EXPECT_EQ(tasks[2].state(), v1::TASK_READY);
  std::optional<LeasedTask> n = Lease(w);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(n->task.task_id(), second.job.job_id() + "/bits");
}

// Feeds fixed pieces to PutTaskOutput.
class Pieces : public ChunkSource {
 public:
  explicit Pieces(std::vector<std::string> p) : pieces_(std::move(p)) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (next_ == pieces_.size()) return false;
    *chunk = pieces_[next_++];
    return true;
  }

 private:
  std::vector<std::string> pieces_;
  size_t next_ = 0;
};

TEST_F(CoordinatorTest, TaskOutputsCommitWithCompletionAndVanishWithFailure) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::string other = coord_->RegisterWorker({"b"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  Pieces data({"0123", "4567", "89ab", "cdef"});
  ASSERT_OK_AND_ASSIGN(std::string key, coord_->PutTaskOutput(w, t->task.task_id(), "stats/counts",
                                                              storage::DType::kF32, {4}, data));
  EXPECT_EQ(key, t->task.fingerprint() + "/stats/counts");
  EXPECT_THAT(factors_->Stat(key), StatusIs(absl::StatusCode::kNotFound));  // staged only
  Pieces none({});
  EXPECT_THAT(coord_->PutTaskOutput(other, t->task.task_id(), "x", storage::DType::kF32, {0}, none),
              StatusIs(absl::StatusCode::kFailedPrecondition, "does not hold"));
  Pieces short_data({"01"});
  EXPECT_THAT(coord_->PutTaskOutput(w, t->task.task_id(), "y", storage::DType::kF32, {1}, short_data),
              StatusIs(absl::StatusCode::kFailedPrecondition, "ended after 2 of 4"));
  EXPECT_THAT(coord_->PutTaskOutput(w, t->task.task_id(), "../x", storage::DType::kF32, {0}, none),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  EXPECT_EQ(factors_->Get(key)->data, "0123456789abcdef");
  EXPECT_THAT(factors_->Stat(t->task.fingerprint() + "/y"), StatusIs(absl::StatusCode::kNotFound));

  // A failed attempt's outputs are discarded.
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  Pieces more({"abcd"});
  ASSERT_OK_AND_ASSIGN(std::string lost, coord_->PutTaskOutput(w, t->task.task_id(), "o",
                                                               storage::DType::kU8, {4}, more));
  ASSERT_OK(coord_->FailTask(w, t->task.task_id(), absl::InternalError("x"), true));
  EXPECT_THAT(factors_->Stat(lost), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(factors_->CollectGarbage(), moec::testing::IsOkAndHolds(0u));  // nothing left behind
}


TEST_F(CoordinatorTest, ACorruptFactorReRunsTheTaskThatProducedIt) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  // stats/L0 writes an output and completes.
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_EQ(t->task.task_id(), job + "/stats/L0");
  Pieces data({"0123", "4567"});
  ASSERT_OK_AND_ASSIGN(std::string key, coord_->PutTaskOutput(w, t->task.task_id(), "counts",
                                                              storage::DType::kF32, {2}, data));
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  ASSERT_OK(factors_->Get(key).status());
  // stats/L1 reads it and finds it corrupt (as the factor store reports a checksum mismatch).
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_EQ(t->task.task_id(), job + "/stats/L1");
  // The key travels as the status payload (the message is not parsed).
  const absl::Status corrupt = WithFactorKey(
      absl::DataLossError("reading input: chunk 1 has checksum 1, stored 2"), key);
  ASSERT_OK(coord_->FailTask(w, t->task.task_id(), corrupt, /*retriable=*/true));
  // The producer runs again (its outputs deleted), the reader waits for it, no attempt is lost.
  EXPECT_THAT(factors_->Stat(key), StatusIs(absl::StatusCode::kNotFound));
  auto kinds = EventKinds(job);
  EXPECT_THAT(kinds, ::testing::Contains("factor_corrupt"));
  EXPECT_THAT(kinds, ::testing::Contains("task_rerun"));
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.task_id(), job + "/stats/L0");
  EXPECT_EQ(t->task.attempts(), 1);
  Pieces rewritten({"0123", "4567"});
  ASSERT_OK(coord_->PutTaskOutput(w, t->task.task_id(), "counts", storage::DType::kF32, {2}, rewritten).status());
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.task_id(), job + "/stats/L1");
  EXPECT_EQ(t->task.attempts(), 1);
  EXPECT_EQ(factors_->Get(key)->data, "01234567");
  // A second corruption: one more re-run (kMaxCorruptReruns = 2).
  ASSERT_OK(coord_->FailTask(w, t->task.task_id(), corrupt, true));
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_EQ(t->task.task_id(), job + "/stats/L0");
  Pieces again({"0123", "4567"});
  ASSERT_OK(coord_->PutTaskOutput(w, t->task.task_id(), "counts", storage::DType::kF32, {2}, again).status());
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_EQ(t->task.task_id(), job + "/stats/L1");
  // Corruption that keeps coming back is then an ordinary (retried, then fatal) failure.
  ASSERT_OK(coord_->FailTask(w, t->task.task_id(), corrupt, true));
  EXPECT_EQ(EventKinds(job).back(), "task_retry");
  EXPECT_OK(factors_->Stat(key).status());
}


// With `next`, a completion also hands the completer its next task: the dependent it made
// ready goes to it (not to another waiting worker), and nothing when nothing is ready.
TEST_F(CoordinatorTest, CompleteTaskHandsTheCompleterItsNextTask) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::string other = coord_->RegisterWorker({"b"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  EXPECT_FALSE(Lease(other).has_value());  // `other` waits too
  std::optional<LeasedTask> next;
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}, 0, &next));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->task.task_id(), job + "/stats/L1");
  EXPECT_EQ(next->task.state(), v1::TASK_LEASED);
  EXPECT_EQ(next->task.attempts(), 1);
  EXPECT_FALSE(Lease(other).has_value());
  ASSERT_OK(coord_->CompleteTask(w, next->task.task_id(), {}, 0, &next));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->task.task_id(), job + "/bits");
  const std::string last = next->task.task_id();
  // A completion that is refused grants nothing.
  EXPECT_THAT(coord_->CompleteTask(other, last, {}, 0, &next),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_FALSE(next.has_value());
  ASSERT_OK(coord_->CompleteTask(w, last, {}, 0, &next));
  EXPECT_FALSE(next.has_value());  // nothing left
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_SUCCEEDED);
}

// A stopping worker gives back a granted task it has not started: ready at once for another
// worker, the attempt not counted, and the giver no longer holds it.
TEST_F(CoordinatorTest, AReleasedTaskIsReadyAtOnceAndItsAttemptDoesNotCount) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::string w2 = coord_->RegisterWorker({"b"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  const std::string id = t->task.task_id();
  EXPECT_THAT(coord_->ReleaseTask(w2, id), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_OK(coord_->ReleaseTask(w, id));
  auto tasks = *coord_->GetTasks(job);
  EXPECT_EQ(tasks[0].state(), v1::TASK_READY);
  EXPECT_EQ(tasks[0].lease_workers_size(), 0);
  EXPECT_THAT(EventKinds(job), ::testing::Contains("task_released"));
  EXPECT_THAT(coord_->CompleteTask(w, id, {}), StatusIs(absl::StatusCode::kFailedPrecondition));
  std::optional<LeasedTask> again = Lease(w2);  // no backoff
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->task.task_id(), id);
  EXPECT_EQ(again->task.attempts(), 1);
}

// Heartbeats renew only the leases of the tasks the worker says it runs: a task whose grant or
// completion was lost in transit (the worker does not know it holds it) expires and is re-run
// instead of being renewed by every heartbeat forever.
TEST_F(CoordinatorTest, HeartbeatsRenewOnlyTheLeasesOfTasksTheWorkerNames) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> t = Lease(w);  // lease_ms = 1000
  ASSERT_TRUE(t.has_value());
  Advance(800);
  ASSERT_OK(coord_->Heartbeat(w, {t->task.task_id()}).status());
  Advance(800);
  ASSERT_OK(coord_->Tick());
  EXPECT_EQ((*coord_->GetTasks(job))[0].state(), v1::TASK_LEASED);  // renewed
  ASSERT_OK(coord_->Heartbeat(w, {}).status());  // alive, but not running it
  ASSERT_OK(coord_->Heartbeat(w, {"tiny-nosuchjob/x", job + "/nosuchtask"}).status());
  Advance(300);
  ASSERT_OK(coord_->Tick());
  auto tasks = *coord_->GetTasks(job);
  EXPECT_EQ(tasks[0].state(), v1::TASK_READY);
  EXPECT_THAT(tasks[0].error(), HasSubstr("expired"));
}

// Stages complete out of plan order (two independent chains): the job is RUNNING until the
// very last task is done, then SUCCEEDED (the completion path's done-prefix, not a full scan).
TEST_F(CoordinatorTest, AJobSucceedsAtItsLastCompletionWhateverTheOrder) {
  std::filesystem::create_directories(dir_.Join("m3"));
  dir_.WriteFile("m3/config.json", R"({"num_hidden_layers": 3})");
  const std::string job = Submit(R"(name: two
model: m3
output: out2
stages:
  - {id: a, kind: noop, with: {salt: 1}}
  - {id: b, kind: noop, with: {salt: 2}}
)").job.job_id();
  ASSERT_EQ(coord_->GetTasks(job)->size(), 6u);  // a/L0..L2, then b/L0..L2
  std::string w1 = coord_->RegisterWorker({"a"});
  std::string w2 = coord_->RegisterWorker({"b"});
  std::optional<LeasedTask> a = Lease(w1);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->task.task_id(), job + "/a/L0");  // held while chain b runs to its end
  std::optional<LeasedTask> b = Lease(w2);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(b.has_value()) << i;
    EXPECT_EQ(b->task.stage_id(), "b");
    std::optional<LeasedTask> next;
    ASSERT_OK(coord_->CompleteTask(w2, b->task.task_id(), {}, 0, &next));
    EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_RUNNING) << i;
    b = next;
  }
  EXPECT_FALSE(b.has_value());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(a.has_value()) << i;
    std::optional<LeasedTask> next;
    ASSERT_OK(coord_->CompleteTask(w1, a->task.task_id(), {}, 0, &next));
    EXPECT_EQ(coord_->GetJob(job)->state(), i < 2 ? v1::JOB_RUNNING : v1::JOB_SUCCEEDED) << i;
    a = next;
  }
  EXPECT_FALSE(a.has_value());
}

TEST_F(CoordinatorTest, LeasesCarryTheInputsTheirLayerReads) {
  std::filesystem::create_directories(dir_.Join("m4"));
  dir_.WriteFile("m4/config.json", R"({"num_hidden_layers": 4})");
  const std::string job =
      Submit(kTinyRecipe, {"model=m4", "stages.bits.with.max_shard_mib=5"}).job.job_id();
  std::string w = coord_->RegisterWorker({"a"});
  for (int l = 0; l < 4; ++l) {
    std::optional<LeasedTask> t = Lease(w);
    ASSERT_TRUE(t.has_value());
    ASSERT_EQ(t->task.layer(), l);
    // A per-layer chain task sees layers l-1 and l of its stages (itself included), not all.
    std::vector<std::string> ids;
    for (const auto& [id, fp] : t->input_fingerprints) ids.push_back(id);
    const std::string self = job + "/stats/L" + std::to_string(l);
    if (l == 0) {
      EXPECT_THAT(ids, ::testing::IsEmpty());  // no dependencies at all
    } else {
      EXPECT_THAT(ids, ::testing::ElementsAre(job + "/stats/L" + std::to_string(l - 1), self));
    }
    ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  }
  // The global task after them reads every layer.
  std::optional<LeasedTask> bits = Lease(w);
  ASSERT_TRUE(bits.has_value());
  EXPECT_EQ(bits->input_fingerprints.size(), 4u);
}

// The compute time a worker reports with CompleteTask is stored in the task record (negative
// values as 0) and survives a coordinator restart.
TEST_F(CoordinatorTest, CompleteTaskRecordsComputeTime) {
  const std::string job = Submit().job.job_id();
  const std::string w = coord_->RegisterWorker({"host:1"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}, 1234));
  std::optional<LeasedTask> u = Lease(w);
  ASSERT_TRUE(u.has_value());
  ASSERT_OK(coord_->CompleteTask(w, u->task.task_id(), {}, -5));
  Restart();
  ASSERT_OK_AND_ASSIGN(std::vector<v1::TaskRecord> tasks, coord_->GetTasks(job));
  std::map<std::string, int64_t> compute;
  for (const v1::TaskRecord& r : tasks) compute[r.task_id()] = r.compute_ms();
  EXPECT_EQ(compute[t->task.task_id()], 1234);
  EXPECT_EQ(compute[u->task.task_id()], 0);
  EXPECT_EQ(compute[job + "/bits"], 0);  // not run yet
}

}  // namespace
}  // namespace moec::coordinator
