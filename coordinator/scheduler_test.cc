#include "coordinator/scheduler.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moec::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

v1::TaskRecord Task(const std::string& id, int group = 1, v1::TaskState state = v1::TASK_READY) {
  v1::TaskRecord t;
  t.set_task_id(id);
  t.set_job_id("j");
  t.set_group_size(group);
  t.set_state(state);
  return t;
}

std::vector<const v1::TaskRecord*> Ptrs(const std::vector<v1::TaskRecord>& v) {
  std::vector<const v1::TaskRecord*> p;
  for (const auto& t : v) p.push_back(&t);
  return p;
}

TEST(SchedulerTest, AssignsReadyTasksInOrderToWorkersWithMostFreeSlots) {
  std::vector<v1::TaskRecord> tasks = {Task("a"), Task("b"), Task("c")};
  auto out = Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 2}}, 0);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].task_id, "a");
  EXPECT_THAT(out[0].workers, ElementsAre("w2"));  // most free slots
  EXPECT_THAT(out[1].workers, ElementsAre("w1"));  // tie 1:1 broken by id
  EXPECT_THAT(out[2].workers, ElementsAre("w2"));
}

TEST(SchedulerTest, APreferredWorkerIsServedFirstAmongEquals) {
  std::vector<v1::TaskRecord> tasks = {Task("next")};
  auto out = Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 1, /*preferred=*/true}}, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_THAT(out[0].workers, ElementsAre("w2"));
  // More free slots still win.
  out = Schedule(Ptrs(tasks), {{"w1", 2}, {"w2", 1, true}}, 0);
  EXPECT_THAT(out[0].workers, ElementsAre("w1"));
}

TEST(SchedulerTest, TasksGoWhereTheirInputsAreHeldBeforeThePreferredWorker) {
  std::vector<v1::TaskRecord> tasks = {Task("L1"), Task("gang", 2), Task("far")};
  const std::map<std::string, std::vector<std::string>> near = {{"L1", {"w3"}},
                                                                {"gang", {"w1", "w4"}}};
  auto out = Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 1, true}, {"w3", 1}, {"w4", 1}, {"w5", 1}},
                      0, {}, near);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_THAT(out[0].workers, ElementsAre("w3"));        // holds L1's inputs
  EXPECT_THAT(out[1].workers, ElementsAre("w1", "w4"));  // both holders, in rank (id) order
  EXPECT_THAT(out[2].workers, ElementsAre("w2"));        // no holder: the preferred worker
  // A holder with fewer free slots does not win over free slots.
  out = Schedule(Ptrs(tasks), {{"w1", 2}, {"w3", 1}}, 0, {}, near);
  EXPECT_THAT(out[0].workers, ElementsAre("w1"));
}

TEST(SchedulerTest, GangsGetDistinctWorkersOrWaitAndSmallerTasksBackfill) {
  std::vector<v1::TaskRecord> tasks = {Task("gang3", 3), Task("gang2", 2), Task("solo")};
  auto out = Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 1}}, 0);
  ASSERT_EQ(out.size(), 1u);  // gang3 does not fit; gang2 takes both workers; solo waits
  EXPECT_EQ(out[0].task_id, "gang2");
  EXPECT_THAT(out[0].workers, ElementsAre("w1", "w2"));
  // A worker with two slots still counts once in a gang.
  out = Schedule(Ptrs(tasks), {{"w1", 2}}, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].task_id, "solo");
}

TEST(SchedulerTest, SkipsTasksInBackoffAndNonReadyTasks) {
  std::vector<v1::TaskRecord> tasks = {Task("later"), Task("blocked", 1, v1::TASK_BLOCKED),
                                       Task("now")};
  tasks[0].set_not_before_ms(1000);
  EXPECT_THAT(Schedule(Ptrs(tasks), {{"w", 5}}, 999),
              ElementsAre(Field(&Assignment::task_id, "now")));
  EXPECT_THAT(Schedule(Ptrs(tasks), {{"w", 5}}, 1000),
              ElementsAre(Field(&Assignment::task_id, "later"), Field(&Assignment::task_id, "now")));
  EXPECT_THAT(Schedule(Ptrs(tasks), {}, 0), IsEmpty());
}

TEST(SchedulerTest, GangsShrinkToTheWorkersTheClusterHas) {
  std::vector<v1::TaskRecord> tasks(1);
  tasks[0].set_task_id("j/a/L0");
  tasks[0].set_state(v1::TASK_READY);
  tasks[0].set_group_size(3);
  const std::vector<WorkerSlots> three = {{"w1"}, {"w2"}, {"w3"}};
  // Three workers exist but only two are free: wait for the third.
  EXPECT_THAT(Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 1}}, 0, three), IsEmpty());
  // Only two workers are left in the cluster: a gang of two.
  auto out = Schedule(Ptrs(tasks), {{"w1", 1}, {"w2", 1}}, 0, {three.data(), 2});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"w1", "w2"}));
  out = Schedule(Ptrs(tasks), {{"w2", 1}}, 0, {three.data(), 1});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"w2"}));
}

WorkerSlots Gpu(const std::string& id, int64_t gib) {
  WorkerSlots w{id};
  w.gpu = true;
  w.device_memory_bytes = gib << 30;
  return w;
}

TEST(SchedulerTest, GangsNeverMixCpuAndGpuWorkers) {
  std::vector<v1::TaskRecord> tasks(1);
  tasks[0].set_task_id("j/a/L0");
  tasks[0].set_state(v1::TASK_READY);
  tasks[0].set_group_size(2);
  const std::vector<WorkerSlots> cluster = {{"c1"}, {"c2"}, Gpu("g1", 80), Gpu("g2", 80)};
  // One GPU and one CPU free: no gang of two of one kind is free, so nothing is granted.
  EXPECT_THAT(Schedule(Ptrs(tasks), {{"c1"}, Gpu("g1", 80)}, 0, cluster), IsEmpty());
  // Both kinds free: the GPUs take it.
  auto out = Schedule(Ptrs(tasks), {{"c1"}, {"c2"}, Gpu("g1", 80), Gpu("g2", 80)}, 0, cluster);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"g1", "g2"}));
  // Only the CPUs free: they take it.
  out = Schedule(Ptrs(tasks), {{"c1"}, {"c2"}}, 0, cluster);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"c1", "c2"}));
  // A cluster of one GPU and one CPU worker: gangs shrink to one worker of a kind.
  const std::vector<WorkerSlots> mixed = {{"c1"}, Gpu("g1", 80)};
  out = Schedule(Ptrs(tasks), {{"c1"}, Gpu("g1", 80)}, 0, mixed);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"g1"}));
}

TEST(SchedulerTest, AGpuWorkerGetsOnlyTasksWhosePlanFitsItsMemory) {
  std::vector<v1::TaskRecord> tasks(2);
  tasks[0].set_task_id("j/big/L0");
  tasks[0].set_device_memory_bytes(int64_t{100} << 30);
  tasks[1].set_task_id("j/small/L0");
  tasks[1].set_device_memory_bytes(int64_t{10} << 30);
  for (auto& t : tasks) {
    t.set_state(v1::TASK_READY);
    t.set_group_size(1);
  }
  const std::vector<WorkerSlots> cluster = {Gpu("g1", 80), {"c1"}};
  // The 100 GiB task skips the 80 GiB GPU and goes to the CPU; the small one takes the GPU.
  auto out = Schedule(Ptrs(tasks), {Gpu("g1", 80), {"c1"}}, 0, cluster);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].task_id, "j/big/L0");
  EXPECT_EQ(out[0].workers, (std::vector<std::string>{"c1"}));
  EXPECT_EQ(out[1].workers, (std::vector<std::string>{"g1"}));
  // With only the GPU free, the big task waits and the small one runs.
  out = Schedule(Ptrs(tasks), {Gpu("g1", 80)}, 0, cluster);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].task_id, "j/small/L0");
  // An unplanned task (0) fits every GPU.
  tasks[0].set_device_memory_bytes(0);
  EXPECT_TRUE(Fits(tasks[0], Gpu("g", 1)));
}

TEST(SchedulerTest, ATaskNoRegisteredWorkerFitsIsResourceExhausted) {
  v1::TaskRecord t;
  t.set_task_id("j/quant/L3");
  t.set_device_memory_bytes(int64_t{100} << 30);
  const absl::Status s = CheckSomeWorkerFits(t, {Gpu("g1", 80), Gpu("g2", 40)});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("j/quant/L3 needs 100.00 GiB"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("largest GPU of the 2 registered worker(s) has 80.00 GiB"));
  EXPECT_TRUE(CheckSomeWorkerFits(t, {Gpu("g1", 80), WorkerSlots{"c1"}}).ok());
  EXPECT_TRUE(CheckSomeWorkerFits(t, {}).ok());  // no workers yet: the job waits
  EXPECT_TRUE(CheckSomeWorkerFits(t, {Gpu("g1", 128)}).ok());
}

TEST(TaskStateTest, RetriesWithExponentialBackoffThenFails) {
  RetryPolicy policy;
  policy.max_attempts = 3;
  policy.base_backoff_ms = 100;
  v1::TaskRecord t = Task("t");
  GrantLease(t, {"w1"}, 0, policy);
  EXPECT_EQ(t.state(), v1::TASK_LEASED);
  EXPECT_EQ(t.attempts(), 1);
  EXPECT_EQ(t.lease_deadline_ms(), policy.lease_ms);
  EXPECT_FALSE(ApplyFailure(t, absl::UnavailableError("x"), true, 10, policy));
  EXPECT_EQ(t.state(), v1::TASK_READY);
  EXPECT_EQ(t.not_before_ms(), 110);
  GrantLease(t, {"w1"}, 200, policy);
  EXPECT_FALSE(ApplyFailure(t, absl::UnavailableError("x"), true, 300, policy));
  EXPECT_EQ(t.not_before_ms(), 500);  // doubled
  GrantLease(t, {"w1"}, 600, policy);
  EXPECT_TRUE(ApplyFailure(t, absl::UnavailableError("boom"), true, 700, policy));
  EXPECT_EQ(t.state(), v1::TASK_FAILED);
  EXPECT_THAT(t.error(), ::testing::HasSubstr("boom"));
  v1::TaskRecord u = Task("u");
  GrantLease(u, {"w"}, 0, policy);
  EXPECT_TRUE(ApplyFailure(u, absl::InvalidArgumentError("bad"), /*retriable=*/false, 1, policy));
  EXPECT_EQ(u.state(), v1::TASK_FAILED);
}

TEST(TaskStateTest, ExpiredLeasesReturnToReady) {
  RetryPolicy policy;
  std::vector<v1::TaskRecord> tasks = {Task("a"), Task("b")};
  GrantLease(tasks[0], {"w1"}, 0, policy);
  GrantLease(tasks[1], {"w2"}, 5000, policy);
  auto expired = ExpireLeases(tasks, policy.lease_ms + 1, policy);
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->task_id(), "a");
  EXPECT_EQ(tasks[0].state(), v1::TASK_READY);
  EXPECT_THAT(tasks[0].error(), ::testing::HasSubstr("lease of w1 expired"));
  EXPECT_EQ(tasks[1].state(), v1::TASK_LEASED);
}

// Expired leases are the machines' failures, not the task's: they do not use up max_attempts,
// and max_lost_leases of them fail the task, saying why.
TEST(TaskStateTest, LostLeasesAreCountedApartFromAttempts) {
  RetryPolicy policy;
  policy.max_attempts = 2;
  policy.max_lost_leases = 3;
  std::vector<v1::TaskRecord> tasks = {Task("a")};
  v1::TaskRecord& t = tasks[0];
  int64_t now = 0;
  for (int lost = 1; lost <= 2; ++lost) {
    GrantLease(t, {"w1"}, now, policy);
    now += policy.lease_ms + 1;
    ASSERT_EQ(ExpireLeases(tasks, now, policy).size(), 1u);
    EXPECT_EQ(t.state(), v1::TASK_READY) << lost;
    EXPECT_EQ(t.lost_leases(), lost);
  }
  GrantLease(t, {"w1"}, now, policy);  // attempt 3, the task's own failure 1 of 2
  EXPECT_FALSE(ApplyFailure(t, absl::UnavailableError("x"), true, now, policy));
  GrantLease(t, {"w1"}, now, policy);
  now += policy.lease_ms + 1;
  ASSERT_EQ(ExpireLeases(tasks, now, policy).size(), 1u);  // lost lease 3 of 3
  EXPECT_EQ(t.state(), v1::TASK_FAILED);
  EXPECT_THAT(t.error(), ::testing::HasSubstr("3 leases lost"));
  EXPECT_EQ(t.attempts(), 4);
}

TEST(TaskStateTest, JobStateFollowsTasks) {
  std::vector<v1::TaskRecord> tasks = {Task("a"), Task("b", 1, v1::TASK_BLOCKED),
                                       Task("c", 1, v1::TASK_BLOCKED)};
  EXPECT_EQ(DeriveJobState(tasks), v1::JOB_PENDING);
  tasks[0].set_state(v1::TASK_DONE);
  EXPECT_EQ(DeriveJobState(tasks), v1::JOB_RUNNING);
  tasks[1].set_state(v1::TASK_DONE);
  tasks[2].set_state(v1::TASK_DONE);
  EXPECT_EQ(DeriveJobState(tasks), v1::JOB_SUCCEEDED);
  tasks[2].set_state(v1::TASK_FAILED);
  EXPECT_EQ(DeriveJobState(tasks), v1::JOB_FAILED);
}

}  // namespace
}  // namespace moec::coordinator
