// Unit tests of the Coordinator's parts on their own: the worker registry (registration,
// liveness, mailboxes), output staging and corruption recovery.
#include <filesystem>

#include "common/status_payloads.h"
#include "coordinator/corruption_recovery.h"
#include "coordinator/output_staging.h"
#include "coordinator/worker_registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(WorkerRegistryTest, RegistersTracksLivenessAndDeliversGrants) {
  WorkerRegistry r;
  const std::string a = r.Register({"host:1"}, 1000);
  const std::string b = r.Register({"host:2"}, 1000);
  EXPECT_EQ(a, "w1-host:1");
  EXPECT_EQ(b, "w2-host:2");
  EXPECT_FALSE(r.Touch("w9-none", 1000));
  // Only workers waiting (and without mail) are idle; the preferred one is flagged.
  EXPECT_THAT(r.Idle(1000, ""), IsEmpty());
  r.WaitUntil(a, 1500);
  r.WaitUntil(b, 1500);
  std::vector<WorkerSlots> idle = r.Idle(1200, b);
  ASSERT_EQ(idle.size(), 2u);
  EXPECT_FALSE(idle[0].preferred);
  EXPECT_TRUE(idle[1].preferred);
  EXPECT_THAT(r.Idle(1600, ""), IsEmpty());  // the poll window passed
  // A grant stops the worker from waiting until it is taken.
  LeasedTask grant;
  grant.task.set_task_id("j/s/L0");
  r.WaitUntil(a, 2000);
  r.Deliver(a, grant);
  EXPECT_TRUE(r.HasMail(a));
  r.WaitUntil(a, 3000);  // ignored while it has mail
  EXPECT_THAT(r.Idle(1700, ""), IsEmpty());
  std::optional<LeasedTask> got = r.TakeMail(a, 1800);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->task.task_id(), "j/s/L0");
  EXPECT_FALSE(r.TakeMail(a, 1800).has_value());
  // Silent workers are dropped; one that made contact stays.
  EXPECT_TRUE(r.Touch(b, 5000));
  EXPECT_THAT(r.DropSilent(6000, 2000), ElementsAre(a));
  EXPECT_FALSE(r.Contains(a));
  EXPECT_TRUE(r.Contains(b));
  EXPECT_EQ(r.size(), 1u);
}

class StringSource : public ChunkSource {
 public:
  explicit StringSource(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  absl::StatusOr<bool> Next(std::string* chunk) override {
    if (next_ == pieces_.size()) return false;
    *chunk = pieces_[next_++];
    return true;
  }

 private:
  std::vector<std::string> pieces_;
  size_t next_ = 0;
};

class PartsTest : public ::testing::Test {
 protected:
  PartsTest() : kv_({"factors"}) { factors_ = *storage::FactorStore::Open(&kv_, {}); }
  storage::InMemoryKvStore kv_;
  std::unique_ptr<storage::FactorStore> factors_;
};

TEST_F(PartsTest, StagedOutputsCommitOnlyWhenTakenAndVanishWhenDiscarded) {
  OutputStaging staging(factors_.get());
  EXPECT_OK(OutputStaging::CheckName("model.layers.0.q/scales"));
  EXPECT_THAT(OutputStaging::CheckName("../x"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(OutputStaging::CheckName(""), StatusIs(absl::StatusCode::kInvalidArgument));
  StringSource bytes({"01", "23"});
  ASSERT_OK(OutputStaging::Stream(*staging.Open("j/a"), "fa/x", storage::DType::kU8, {4}, bytes));
  EXPECT_THAT(factors_->Get("fa/x"), StatusIs(absl::StatusCode::kNotFound));  // staged only
  StringSource short_bytes({"0"});
  EXPECT_THAT(OutputStaging::Stream(*staging.Open("j/a"), "fa/y", storage::DType::kU8, {4},
                                    short_bytes),
              StatusIs(absl::StatusCode::kFailedPrecondition, "ended after 1 of 4 bytes"));
  std::shared_ptr<OutputStaging::Pending> pending = staging.Take("j/a");
  ASSERT_NE(pending, nullptr);
  EXPECT_EQ(staging.Take("j/a"), nullptr);
  {
    absl::MutexLock lock(&pending->mu);
    ASSERT_OK(pending->txn->Commit());
  }
  ASSERT_OK_AND_ASSIGN(storage::Factor f, factors_->Get("fa/x"));
  EXPECT_EQ(f.data, "0123");
  EXPECT_THAT(factors_->Get("fa/y"), StatusIs(absl::StatusCode::kNotFound));  // aborted put
  StringSource more({"45"});
  ASSERT_OK(OutputStaging::Stream(*staging.Open("j/b"), "fb/x", storage::DType::kU8, {2}, more));
  staging.Discard("j/b");
  EXPECT_EQ(staging.Take("j/b"), nullptr);
}

// Three tasks: p (DONE, produced factor "pfp/out"), r (LEASED, read it) and d (READY, needs p).
JobTasks ThreeTasks() {
  JobTasks job;
  job.record.set_job_id("j");
  for (const char* id : {"p", "r", "d"}) {
    v1::TaskRecord t;
    t.set_task_id(std::string("j/") + id);
    t.set_stage_id(id);
    t.set_fingerprint(std::string(id) + "fp");
    job.tasks.push_back(t);
  }
  job.tasks[0].set_state(v1::TASK_DONE);
  job.tasks[1].set_state(v1::TASK_LEASED);
  job.tasks[1].set_attempts(1);
  job.tasks[1].add_lease_workers("w1");
  job.tasks[1].add_deps("j/p");
  job.tasks[2].set_state(v1::TASK_READY);
  job.tasks[2].add_deps("j/p");
  job.Index();
  return job;
}

TEST_F(PartsTest, CorruptionRecoveryReRunsTheProducerNamedByThePayloadOnly) {
  auto txn = factors_->NewTransaction();
  ASSERT_OK(txn->Put("pfp/out", storage::DType::kU8, {1}, "x"));
  ASSERT_OK(txn->Commit());
  CorruptionRecovery recovery(factors_.get(), /*max_reruns=*/1);
  JobTasks job = ThreeTasks();
  CorruptionRecovery::Changes changes;
  // No payload (the key only in the message), another code, or an unknown key: not recovered.
  const absl::Status message_only = absl::DataLossError("factor 'pfp/out' chunk 0: CRC32C mismatch");
  EXPECT_THAT(recovery.Recover(job, job.tasks[1], message_only, 0, &changes),
              moec::testing::IsOkAndHolds(false));
  EXPECT_THAT(recovery.Recover(job, job.tasks[1],
                               WithFactorKey(absl::InternalError("x"), "pfp/out"), 0, &changes),
              moec::testing::IsOkAndHolds(false));
  EXPECT_THAT(recovery.Recover(job, job.tasks[1],
                               WithFactorKey(absl::DataLossError("x"), "other/out"), 0, &changes),
              moec::testing::IsOkAndHolds(false));
  EXPECT_THAT(changes.tasks, IsEmpty());
  // The payload names p's output: p re-runs, its outputs go, d and r wait for it again.
  const absl::Status corrupt = WithFactorKey(absl::DataLossError("chunk 0: CRC32C mismatch"), "pfp/out");
  ASSERT_OK_AND_ASSIGN(bool rerun, recovery.Recover(job, job.tasks[1], corrupt, 7, &changes));
  EXPECT_TRUE(rerun);
  EXPECT_EQ(job.tasks[0].state(), v1::TASK_READY);
  EXPECT_EQ(job.tasks[1].state(), v1::TASK_BLOCKED);
  EXPECT_EQ(job.tasks[1].attempts(), 0);  // the failed attempt does not count
  EXPECT_EQ(job.tasks[2].state(), v1::TASK_BLOCKED);
  EXPECT_THAT(factors_->Get("pfp/out"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_EQ(changes.events.size(), 2u);
  EXPECT_EQ(changes.events[0].kind(), v1::EVENT_FACTOR_CORRUPT);
  EXPECT_EQ(changes.events[1].kind(), v1::EVENT_TASK_RERUN);
  EXPECT_EQ(changes.events[1].task_id(), "j/p");
  // Out of re-runs (max 1): once p is done again, a second corruption is an ordinary failure.
  job.tasks[0].set_state(v1::TASK_DONE);
  job.tasks[1].set_state(v1::TASK_LEASED);
  CorruptionRecovery::Changes again;
  EXPECT_THAT(recovery.Recover(job, job.tasks[1], corrupt, 8, &again),
              moec::testing::IsOkAndHolds(false));
}

}  // namespace
}  // namespace moec::coordinator
