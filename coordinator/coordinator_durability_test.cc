// Durability of completions: which completions wait for a log sync (background syncer vs
// --durable-completions), and that a completion and the lease it grants are one write.
#include <atomic>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/synchronization/notification.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_test_recipe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "proto/event_kind.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;


// Counts writes and log syncs (and which thread synced) of an in-memory store; a sync can be
// held open to show that a completion does not wait for it.
class CountingKvStore : public storage::KvStore {
 public:
  explicit CountingKvStore(std::vector<std::string> cfs) : inner_(std::move(cfs)) {}
  std::vector<std::string> ColumnFamilies() const override { return inner_.ColumnFamilies(); }
  absl::Status Read(absl::string_view cf, absl::string_view key,
                    absl::FunctionRef<absl::Status(absl::string_view)> fn) const override {
    return inner_.Read(cf, key, fn);
  }
  absl::Status Put(absl::string_view cf, absl::string_view key, absl::string_view value,
                   storage::Durability d) override {
    ++writes;
    return inner_.Put(cf, key, value, d);
  }
  absl::Status Write(const storage::KvWriteBatch& batch, storage::Durability d) override {
    ++writes;
    return inner_.Write(batch, d);
  }
  absl::Status Flush(absl::string_view cf) override { return inner_.Flush(cf); }
  absl::Status SyncLog() override {
    absl::MutexLock lock(&mu);
    ++syncs;
    if (std::this_thread::get_id() == caller) {
      ++caller_syncs;  // never held: a caller that syncs is counted, not hung
    } else {
      // Held for at most 3 s: a completion that waited for it would take that long.
      auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return !hold; };
      mu.AwaitWithTimeout(absl::Condition(&open), absl::Seconds(3));
    }
    return inner_.SyncLog();
  }
  std::unique_ptr<storage::KvIterator> NewIterator(absl::string_view cf) const override {
    return inner_.NewIterator(cf);
  }

  std::atomic<int> writes{0};
  absl::Mutex mu;
  int syncs ABSL_GUARDED_BY(mu) = 0;
  int caller_syncs ABSL_GUARDED_BY(mu) = 0;  // made by the thread `caller`
  bool hold ABSL_GUARDED_BY(mu) = false;
  const std::thread::id caller = std::this_thread::get_id();

 private:
  storage::InMemoryKvStore inner_;
};

// kTinyRecipe submitted to a coordinator on a CountingKvStore, and one worker holding its first
// task.
struct OneWorkerJob {
  explicit OneWorkerJob(bool durable_completions) : kv(JobStoreColumnFamilies()) {
    std::filesystem::create_directories(dir.Join("m"));
    dir.WriteFile("m/config.json", R"({"num_hidden_layers": 2})");
    store = *JobStore::Open(&kv);
    CoordinatorOptions o;
    o.durable_completions = durable_completions;
    coord = *Coordinator::Create(store.get(), o, [] { return absl::Now(); });
    job = coord->SubmitJob(kTinyRecipe, dir.Join("recipe.yaml"), {})->job.job_id();
    worker = coord->RegisterWorker({"a"});
    first = *coord->LeaseTask(worker);
    absl::MutexLock lock(&kv.mu);
    kv.caller_syncs = 0;
  }

  ::moec::testing::TempDir dir;
  CountingKvStore kv;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<Coordinator> coord;  // destroyed before the store and the kv store
  std::string job, worker;
  std::optional<LeasedTask> first;
};

// Runs kTinyRecipe's three tasks as one worker chaining them through CompleteTask's next task,
// and
// returns how many log syncs the calling thread made.
int CallerSyncsOfAChainedJob(bool durable_completions) {
  OneWorkerJob j(durable_completions);
  CountingKvStore& kv = j.kv;
  Coordinator* coord = j.coord.get();
  const std::string job = j.job, w = j.worker;
  std::optional<LeasedTask> t = j.first;
  {
    absl::MutexLock lock(&kv.mu);
    kv.hold = !durable_completions;  // the background syncer blocks; completions must not
  }
  EXPECT_TRUE(t.has_value());
  int completions = 0;
  while (t.has_value()) {
    const std::string id = t->task.task_id();
    std::optional<LeasedTask> next;
    if (id == job + "/bits" && !durable_completions) {
      absl::MutexLock lock(&kv.mu);
      kv.hold = false;  // the last completion waits for its sync: let it through
    }
    const absl::Time started = absl::Now();
    EXPECT_OK(coord->CompleteTask(w, id, {}, 0, &next));
    EXPECT_LT(absl::Now() - started, absl::Seconds(2)) << id << " waited for the held sync";
    ++completions;
    t = std::move(next);
  }
  EXPECT_EQ(completions, 3);
  EXPECT_EQ(coord->GetJob(job)->state(), v1::JOB_SUCCEEDED);
  absl::MutexLock lock(&kv.mu);
  return kv.caller_syncs;
}

// By default a completion returns once it is logged; the background syncer makes it durable
// (here it is held inside a sync the whole time, and completions still return). The completion
// that ends the job waits for its sync. With durable completions every one waits.
TEST(CoordinatorDurabilityTest, OnlyTheJobEndingCompletionWaitsForTheLogSyncUnlessDurable) {
  EXPECT_EQ(CallerSyncsOfAChainedJob(/*durable_completions=*/false), 1);
  EXPECT_EQ(CallerSyncsOfAChainedJob(/*durable_completions=*/true), 3);
}

// CompleteTaskAsync (the gRPC handler's path) never blocks its caller on a sync: a completion
// that waits for none calls back before returning; one that does (the job's last, or every one
// when durable) returns at once and calls back from the syncer's thread once the sync (held open
// here) has ended.
TEST(CoordinatorDurabilityTest, AsyncCompletionsCallBackAfterTheirSyncWithoutBlockingTheCaller) {
  for (bool durable : {false, true}) {
    SCOPED_TRACE(durable ? "durable" : "default");
    OneWorkerJob j(durable);
    CountingKvStore& kv = j.kv;
    Coordinator* coord = j.coord.get();
    const std::string job = j.job, w = j.worker;
    std::optional<LeasedTask> t = j.first;
    int completions = 0, waited = 0;
    while (t.has_value()) {
      const std::string id = t->task.task_id();
      {
        absl::MutexLock lock(&kv.mu);
        kv.hold = true;  // the syncer's syncs block (for at most 3 s)
      }
      absl::Notification called;
      absl::Status got = absl::UnknownError("not called");
      std::optional<LeasedTask> next;
      const absl::Time started = absl::Now();
      coord->CompleteTaskAsync(w, id, 0, {}, /*lease_next=*/true,
                               [&](absl::Status s, std::optional<LeasedTask> n) {
                                 got = s;
                                 next = std::move(n);
                                 called.Notify();
                               });
      EXPECT_LT(absl::Now() - started, absl::Seconds(2)) << id << " blocked on the held sync";
      const bool waits = durable || id == job + "/bits";
      EXPECT_EQ(called.HasBeenNotified(), !waits) << id;
      if (waits) {
        ++waited;
        absl::MutexLock lock(&kv.mu);
        kv.hold = false;
      }
      ASSERT_TRUE(called.WaitForNotificationWithTimeout(absl::Seconds(10))) << id;
      EXPECT_OK(got);
      ++completions;
      t = std::move(next);
    }
    EXPECT_EQ(completions, 3);
    EXPECT_EQ(waited, durable ? 3 : 1);
    EXPECT_EQ(coord->GetJob(job)->state(), v1::JOB_SUCCEEDED);
    absl::MutexLock lock(&kv.mu);
    EXPECT_EQ(kv.caller_syncs, 0);  // every sync on the syncer's thread
  }
}

TEST(CoordinatorDurabilityTest, TheSyncIntervalIsBounded) {
  CoordinatorOptions o;
  o.log_sync_interval_ms = -1;
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("-1")));
  o.log_sync_interval_ms = 10001;
  EXPECT_THAT(o.Validate(), StatusIs(absl::StatusCode::kInvalidArgument));
  o.log_sync_interval_ms = 0;
  EXPECT_OK(o.Validate());
}

// A completion and the lease of the next task it hands over are one write (one log record,
// so a crash keeps both or neither), and what it wrote is what a restarted coordinator reads.
TEST(CoordinatorDurabilityTest, ACompletionAndTheLeaseItGrantsAreOneWrite) {
  OneWorkerJob j(/*durable_completions=*/false);
  const std::string job = j.job;
  const std::optional<LeasedTask>& t = j.first;
  ASSERT_TRUE(t.has_value());
  const int before = j.kv.writes.load();
  std::optional<LeasedTask> next;
  ASSERT_OK(j.coord->CompleteTask(j.worker, t->task.task_id(), {}, 0, &next));
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(j.kv.writes.load() - before, 1);
  const std::string done = t->task.task_id(), leased = next->task.task_id();
  j.coord.reset();  // syncs and stops
  auto again = *Coordinator::Create(j.store.get(), {}, [] { return absl::Now(); });
  ASSERT_OK_AND_ASSIGN(std::vector<v1::TaskRecord> tasks, again->GetTasks(job));
  std::map<std::string, v1::TaskState> state;
  for (const v1::TaskRecord& r : tasks) state[r.task_id()] = r.state();
  EXPECT_EQ(state[done], v1::TASK_DONE);
  EXPECT_EQ(state[leased], v1::TASK_LEASED);
  ASSERT_OK_AND_ASSIGN(std::vector<v1::JobEvent> events, again->ReadEvents(job, 0, 100));
  std::vector<std::string> tail;
  for (size_t i = events.size() >= 2 ? events.size() - 2 : 0; i < events.size(); ++i) {
    tail.push_back(EventKindName(events[i].kind()) + " " + events[i].task_id());
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i) + 1);  // numbered without gaps
  }
  EXPECT_THAT(tail, ElementsAre("task_done " + done, "task_leased " + leased));
}

}  // namespace
}  // namespace moec::coordinator
