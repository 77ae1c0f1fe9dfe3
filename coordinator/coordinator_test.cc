// The Coordinator's job lifecycle: submission, dependency order, gangs, long polls, chained
// completions, reuse across jobs, progress and statistics. Failures, expiries, restarts and task
// outputs: coordinator_recovery_test.cc.
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_fixture.h"

#include <filesystem>
#include <map>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

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

// A shutting-down coordinator does not wait out its long polls (its server waits for them).
TEST_F(CoordinatorTest, EndLongPollsAnswersWaitingAndLaterPollsAtOnce) {
  const std::string a = coord_->RegisterWorker({"a"});
  absl::StatusOr<std::optional<LeasedTask>> waited;
  absl::Duration took;
  std::thread poller([&] {
    const absl::Time start = absl::Now();
    waited = coord_->LeaseTask(a, absl::Seconds(2));
    took = absl::Now() - start;
  });
  absl::SleepFor(absl::Milliseconds(100));  // the poller is waiting, with nothing to lease
  coord_->EndLongPolls();
  poller.join();
  ASSERT_OK(waited.status());
  EXPECT_FALSE(waited->has_value());
  EXPECT_LT(took, absl::Milliseconds(1000));
  const absl::Time start = absl::Now();
  ASSERT_OK(coord_->LeaseTask(a, absl::Seconds(2)).status());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
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
