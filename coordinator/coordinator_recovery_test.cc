// The Coordinator when things go wrong: leases that expire, failed and cancelled tasks, restarts,
// tasks given back, task outputs staged until completion, and corrupt factors re-run by their
// producers. The job lifecycle: coordinator_test.cc.
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_fixture.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/status_payloads.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

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
  EXPECT_EQ(t->task.lost_leases(), 1);
  EXPECT_EQ(coord_->Stats().lease_expiries, 1);
  EXPECT_EQ(coord_->Stats().retries, 1);
  // The lost lease was not the task's failure: max_attempts = 2 failures of its own remain.
  ASSERT_OK(coord_->FailTask(w1, t->task.task_id(), absl::InternalError("stage crashed"), true));
  EXPECT_EQ(coord_->GetJob(job)->state(), v1::JOB_RUNNING);
  Advance(200);
  t = Lease(w1);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.attempts(), 3);
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

TEST_F(CoordinatorTest, OutputsHeldByWorkersAreRecordedAndTheirLossReRunsTheProducer) {
  const std::string job = Submit().job.job_id();
  std::string w = coord_->RegisterWorker({"a", false, 0, 0, "", "as-1", "127.0.0.1:9"});
  std::optional<LeasedTask> t = Lease(w);
  ASSERT_TRUE(t.has_value());
  ASSERT_OK_AND_ASSIGN(std::string key,
                       coord_->RecordTaskOutput(w, t->task.task_id(), "hidden.c00000",
                                                storage::DType::kF32, {2, 3}, 99u, "as-1"));
  EXPECT_THAT(factors_->Stat(key), StatusIs(absl::StatusCode::kNotFound));  // staged only
  EXPECT_THAT(coord_->RecordTaskOutput("nobody", t->task.task_id(), "h", storage::DType::kF32, {1},
                                       0u, "as-1"),
              StatusIs(absl::StatusCode::kFailedPrecondition, "does not hold"));
  ASSERT_OK(coord_->CompleteTask(w, t->task.task_id(), {}));
  ASSERT_OK_AND_ASSIGN(storage::FactorInfo info, factors_->Stat(key));
  EXPECT_TRUE(info.held());
  EXPECT_EQ(info.byte_size, 24u);
  EXPECT_EQ(info.crc32c, 99u);
  EXPECT_EQ(coord_->Stats().factor_bytes_held, 24);
  EXPECT_EQ(coord_->Stats().factor_bytes_stored, 0);
  // Holders resolve to the registered worker serving the store; a restarted worker (same
  // store, new id) is heard from last and takes over.
  std::vector<WorkerRegistry::View> holders = coord_->HoldersOf(info.holders);
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_EQ(holders[0].worker_id, w);
  Advance(1000);
  std::string restarted = coord_->RegisterWorker({"a", false, 0, 0, "", "as-1", "127.0.0.1:10"});
  holders = coord_->HoldersOf(info.holders);
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_EQ(holders[0].worker_id, restarted);
  EXPECT_EQ(holders[0].info.data_address, "127.0.0.1:10");
  EXPECT_THAT(coord_->HoldersOf({"as-gone"}), ::testing::IsEmpty());
  // A reader that found no holder fails with DataLoss naming the key: the producer runs again.
  t = Lease(restarted);
  ASSERT_TRUE(t.has_value());
  ASSERT_EQ(t->task.task_id(), job + "/stats/L1");
  ASSERT_OK(coord_->FailTask(restarted, t->task.task_id(),
                             WithFactorKey(absl::DataLossError("no worker holding it"), key), true));
  EXPECT_THAT(factors_->Stat(key), StatusIs(absl::StatusCode::kNotFound));
  auto events = coord_->ReadEvents(job, 0, 1000);
  ASSERT_TRUE(events.ok());
  bool lost = false;
  for (const v1::JobEvent& e : *events) {
    lost = lost || (e.kind() == v1::EVENT_TASK_RERUN &&
                    absl::StrContains(e.message(), "lost with the workers holding it"));
  }
  EXPECT_TRUE(lost);
  t = Lease(restarted);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->task.task_id(), job + "/stats/L0");
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

// A coordinator restart costs no attempt: a worker that registers again with its previous id
// gets it back (a fresh worker does not: the stored lease reserves it), and its heartbeats keep
// the lease it held before the restart until it completes the task.
TEST_F(CoordinatorTest, ARestartCostsNoAttemptWhenItsWorkersRegisterAgainWithTheirIds) {
  const std::string job = Submit().job.job_id();
  const std::string w = coord_->RegisterWorker({"a"});
  std::optional<LeasedTask> t = Lease(w);  // lease_ms = 1000
  ASSERT_TRUE(t.has_value());
  const std::string task = t->task.task_id();
  Restart();
  EXPECT_THAT(coord_->Heartbeat(w, {task}), StatusIs(absl::StatusCode::kNotFound));
  const std::string fresh = coord_->RegisterWorker({"a"});
  EXPECT_NE(fresh, w);
  WorkerInfo again{"a"};
  again.previous_id = w;
  EXPECT_EQ(coord_->RegisterWorker(again), w);
  for (int i = 0; i < 5; ++i) {  // 3 s: three times the lease
    Advance(600);
    ASSERT_OK(coord_->Heartbeat(w, {task}).status());
    ASSERT_OK(coord_->Tick());
  }
  const v1::TaskRecord held = (*coord_->GetTasks(job))[0];
  EXPECT_EQ(held.task_id(), task);
  EXPECT_EQ(held.state(), v1::TASK_LEASED);
  EXPECT_EQ(held.attempts(), 1);
  ASSERT_OK(coord_->CompleteTask(w, task, {}));
  // An id that a registered worker holds is never handed out twice, nor one of another name.
  EXPECT_NE(coord_->RegisterWorker(again), w);
  WorkerInfo other{"b"};
  other.previous_id = fresh;
  EXPECT_NE(coord_->RegisterWorker(other), fresh);
}

}  // namespace
}  // namespace moec::coordinator
