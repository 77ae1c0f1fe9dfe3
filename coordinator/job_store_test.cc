#include "coordinator/job_store.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "storage/rocksdb_kv_store.h"
#include "tests/testing/crash_child.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "proto/event_kind.h"

namespace moec::coordinator {
namespace {

using ::moec::testing::IsOkAndHolds;
using ::moec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Property;
using ::testing::SizeIs;

v1::JobRecord Job(const std::string& id, const std::string& fp) {
  v1::JobRecord j;
  j.set_job_id(id);
  j.set_fingerprint(fp);
  j.set_state(v1::JOB_PENDING);
  return j;
}

std::vector<v1::TaskRecord> Tasks(const std::string& job, int n) {
  std::vector<v1::TaskRecord> v;
  for (int i = 0; i < n; ++i) {
    v1::TaskRecord t;
    t.set_job_id(job);
    t.set_task_id(job + "/s/L" + std::to_string(i));
    t.set_order(i);
    t.set_state(i == 0 ? v1::TASK_READY : v1::TASK_BLOCKED);
    v.push_back(t);
  }
  return v;
}

v1::JobEvent Event(const std::string& kind) {
  v1::JobEvent e;
  e.set_kind(EventKindFromName(kind));
  return e;
}

TEST(JobStoreTest, CreateCommitAndRead) {
  storage::InMemoryKvStore kv(JobStoreColumnFamilies());
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(&kv));
  v1::JobRecord job = Job("j1", "fp1");
  auto tasks = Tasks("j1", 12);  // more than 10: keys must sort numerically
  ASSERT_OK(store->CreateJob(job, tasks, {Event("job_submitted")}));
  EXPECT_EQ(job.next_event_seq(), 2);
  EXPECT_THAT(store->CreateJob(job, tasks, {}), StatusIs(absl::StatusCode::kAlreadyExists));
  v1::JobRecord dup = Job("j2", "fp1");
  EXPECT_THAT(store->CreateJob(dup, {}, {}), StatusIs(absl::StatusCode::kAlreadyExists, "fingerprint"));
  EXPECT_THAT(store->FindByFingerprint("fp1"),
              IsOkAndHolds(::testing::Optional(Property(&v1::JobRecord::job_id, "j1"))));
  EXPECT_THAT(store->FindByFingerprint("none"), IsOkAndHolds(::testing::Eq(std::nullopt)));

  tasks[0].set_state(v1::TASK_DONE);
  tasks[1].set_state(v1::TASK_READY);
  job.set_state(v1::JOB_RUNNING);
  storage::KvWriteBatch outputs;
  outputs.Put("tasks", "x/output-marker", "1");  // stands in for a task's outputs
  ASSERT_OK(store->Commit(job, {&tasks[0], &tasks[1]}, {Event("task_done"), Event("task_ready")},
                          &outputs));
  EXPECT_EQ(job.next_event_seq(), 4);
  ASSERT_OK_AND_ASSIGN(auto loaded, store->ListTasks("j1"));
  ASSERT_THAT(loaded, SizeIs(12));
  EXPECT_EQ(loaded[0].state(), v1::TASK_DONE);
  EXPECT_EQ(loaded[1].state(), v1::TASK_READY);
  EXPECT_EQ(loaded[11].task_id(), "j1/s/L11");
  EXPECT_THAT(store->GetJob("j1"), IsOkAndHolds(Property(&v1::JobRecord::state, v1::JOB_RUNNING)));
  EXPECT_THAT(store->GetJob("nope"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(kv.Get("tasks", "x/output-marker"), IsOkAndHolds("1"));
  ASSERT_OK_AND_ASSIGN(auto events, store->ReadEvents("j1", 2, 10));
  EXPECT_THAT(events, ElementsAre(Property(&v1::JobEvent::seq, 2), Property(&v1::JobEvent::seq, 3)));
  EXPECT_EQ(events[0].kind(), v1::EVENT_TASK_DONE);
  EXPECT_THAT(store->ReadEvents("j1", 1, 1), IsOkAndHolds(SizeIs(1)));
  EXPECT_THAT(store->ListJobs(), IsOkAndHolds(SizeIs(1)));
  v1::TaskRecord foreign = Tasks("j9", 1)[0];
  EXPECT_THAT(store->Commit(job, {&foreign}, {}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(JobStoreTest, RefusesStoreWithoutFamilies) {
  storage::InMemoryKvStore kv({"jobs"});
  EXPECT_THAT(JobStore::Open(&kv), StatusIs(absl::StatusCode::kInvalidArgument, "tasks"));
}

storage::RocksDbKvStoreOptions DbOptions(const std::string& dir) {
  storage::RocksDbKvStoreOptions o;
  o.path = dir + "/db";
  for (const auto& cf : JobStoreColumnFamilies()) o.column_families.push_back({cf, false});
  return o;
}

// Creates a job, completes its first task, then dies without closing anything.
MOEC_CRASH_CHILD(CommitThenCrash) {
  auto kv = storage::RocksDbKvStore::Open(DbOptions(arg));
  if (!kv.ok()) return 1;
  auto store = JobStore::Open(kv->get());
  if (!store.ok()) return 2;
  v1::JobRecord job = Job("j1", "fp");
  auto tasks = Tasks("j1", 3);
  if (!(*store)->CreateJob(job, tasks, {Event("job_submitted")}).ok()) return 3;
  tasks[0].set_state(v1::TASK_DONE);
  if (!(*store)->Commit(job, {&tasks[0]}, {Event("task_done")}).ok()) return 4;
  _exit(0);
}

TEST(JobStoreTest, RecoversEverythingCommittedAfterACrash) {
  ::moec::testing::TempDir dir;
  ASSERT_EQ(::moec::testing::RunCrashChild("CommitThenCrash", dir.path()), 0);
  ASSERT_OK_AND_ASSIGN(auto kv, storage::RocksDbKvStore::Open(DbOptions(dir.path())));
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(kv.get()));
  ASSERT_OK_AND_ASSIGN(v1::JobRecord job, store->GetJob("j1"));
  EXPECT_EQ(job.next_event_seq(), 3);
  ASSERT_OK_AND_ASSIGN(auto tasks, store->ListTasks("j1"));
  ASSERT_THAT(tasks, SizeIs(3));
  EXPECT_EQ(tasks[0].state(), v1::TASK_DONE);
  EXPECT_EQ(tasks[1].state(), v1::TASK_BLOCKED);
  EXPECT_THAT(store->ReadEvents("j1", 0, 100), IsOkAndHolds(SizeIs(2)));
}

// Events stored before EventKind existed carry their kind as text; it reads back as the enum.
TEST(JobStoreTest, EventKindsHaveNamesAndLegacyEventsReadBack) {
  EXPECT_EQ(EventKindName(v1::EVENT_TASK_DONE), "task_done");
  EXPECT_EQ(EventKindName(v1::EVENT_FACTOR_CORRUPT), "factor_corrupt");
  EXPECT_EQ(EventKindName(v1::EVENT_KIND_UNSPECIFIED), "unspecified");
  for (int k = 1; k < v1::EventKind_ARRAYSIZE; ++k) {
    const auto kind = static_cast<v1::EventKind>(k);
    EXPECT_EQ(EventKindFromName(EventKindName(kind)), kind) << k;
  }
  EXPECT_EQ(EventKindFromName("no_such_event"), v1::EVENT_KIND_UNSPECIFIED);
  storage::InMemoryKvStore kv(JobStoreColumnFamilies());
  ASSERT_OK_AND_ASSIGN(auto store, JobStore::Open(&kv));
  v1::JobRecord job = Job("j1", "fp1");
  v1::JobEvent legacy;
  legacy.set_legacy_kind("job_succeeded");
  ASSERT_OK(store->CreateJob(job, Tasks("j1", 1), {legacy}));
  ASSERT_OK_AND_ASSIGN(auto events, store->ReadEvents("j1", 1, 10));
  ASSERT_THAT(events, SizeIs(1));
  EXPECT_EQ(KindOf(events[0]), v1::EVENT_JOB_SUCCEEDED);
}

}  // namespace
}  // namespace moec::coordinator
