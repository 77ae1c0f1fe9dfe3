#include "coordinator/scheduler.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moec::coordinator {

bool Fits(const v1::TaskRecord& task, const WorkerSlots& w) {
  return !w.gpu || task.device_memory_bytes() <= 0 ||
         task.device_memory_bytes() <= w.device_memory_bytes;
}

absl::Status CheckSomeWorkerFits(const v1::TaskRecord& task,
                                 absl::Span<const WorkerSlots> cluster) {
  int64_t largest = 0;
  for (const WorkerSlots& w : cluster) {
    if (Fits(task, w)) return absl::OkStatus();
    largest = std::max(largest, w.device_memory_bytes);
  }
  if (cluster.empty()) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "task %s needs %.2f GiB of GPU memory by its plan; the largest GPU of the %d registered "
      "worker(s) has %.2f GiB and no CPU worker is registered: add workers with more memory "
      "(or a CPU worker) and resume the job",
      task.task_id(), task.device_memory_bytes() / 1073741824.0, static_cast<int>(cluster.size()),
      largest / 1073741824.0));
}

namespace {

// Up to `need` free workers of one kind that `task` fits, best first; empty when fewer.
std::vector<WorkerSlots*> PickGang(const v1::TaskRecord& task, std::vector<WorkerSlots>& workers,
                                   bool gpu, size_t need, const std::vector<std::string>& near) {
  std::vector<WorkerSlots*> candidates;
  for (auto& w : workers) {
    if (w.free_slots > 0 && w.gpu == gpu && Fits(task, w)) candidates.push_back(&w);
  }
  if (candidates.size() < need) return {};
  auto is_near = [&](const WorkerSlots* w) {
    return std::find(near.begin(), near.end(), w->worker_id) != near.end();
  };
  std::sort(candidates.begin(), candidates.end(), [&](const WorkerSlots* a, const WorkerSlots* b) {
    if (a->free_slots != b->free_slots) return a->free_slots > b->free_slots;
    if (is_near(a) != is_near(b)) return is_near(a);
    if (a->preferred != b->preferred) return a->preferred;
    return a->worker_id < b->worker_id;
  });
  candidates.resize(need);
  return candidates;
}

// Workers a gang of `task` on workers of kind `gpu` needs: its group size, at most the registered
// workers of that kind it fits (no bound without a cluster view).
size_t GangSize(const v1::TaskRecord& task, absl::Span<const WorkerSlots> cluster, bool gpu) {
  int registered = cluster.empty() ? (1 << 30) : 0;
  for (const WorkerSlots& w : cluster) registered += (w.gpu == gpu && Fits(task, w)) ? 1 : 0;
  return static_cast<size_t>(std::max(1, std::min(task.group_size(), registered)));
}

}  // namespace

std::vector<Assignment> Schedule(absl::Span<const v1::TaskRecord* const> ready,
                                 std::vector<WorkerSlots> workers, int64_t now_ms,
                                 absl::Span<const WorkerSlots> cluster,
                                 const std::map<std::string, std::vector<std::string>>& near) {
  std::vector<Assignment> out;
  static const std::vector<std::string> kNone;
  for (const v1::TaskRecord* task : ready) {
    if (task->state() != v1::TASK_READY || task->not_before_ms() > now_ms) continue;
    auto it = near.find(task->task_id());
    const std::vector<std::string>& holders = it == near.end() ? kNone : it->second;
    std::vector<WorkerSlots*> gang;
    for (const bool gpu : {true, false}) {
      gang = PickGang(*task, workers, gpu, GangSize(*task, cluster, gpu), holders);
      if (!gang.empty()) break;
    }
    if (gang.empty()) continue;
    Assignment a;
    a.task_id = task->task_id();
    for (WorkerSlots* w : gang) {
      a.workers.push_back(w->worker_id);
      --w->free_slots;
    }
    std::sort(a.workers.begin(), a.workers.end());  // rank order of a gang = worker id order
    out.push_back(std::move(a));
  }
  return out;
}

void GrantLease(v1::TaskRecord& task, const std::vector<std::string>& workers, int64_t now_ms,
                const RetryPolicy& policy) {
  task.set_state(v1::TASK_LEASED);
  task.clear_lease_workers();
  for (const auto& w : workers) task.add_lease_workers(w);
  task.set_lease_deadline_ms(now_ms + policy.lease_ms);
  task.set_attempts(task.attempts() + 1);
}

bool ApplyFailure(v1::TaskRecord& task, const absl::Status& error, bool retriable, int64_t now_ms,
                  const RetryPolicy& policy, bool lease_lost) {
  task.clear_lease_workers();
  task.set_lease_deadline_ms(0);
  if (lease_lost) task.set_lost_leases(task.lost_leases() + 1);
  const int counted = task.attempts() - task.lost_leases();  // failures of the task itself
  const bool left = lease_lost ? task.lost_leases() < policy.max_lost_leases
                               : counted < policy.max_attempts;
  task.set_error(lease_lost && !left
                     ? absl::StrCat(error.ToString(), " (", task.lost_leases(),
                                    " leases lost: its workers died or went silent; --max-lost-leases)")
                     : error.ToString());
  if (retriable && left) {
    int64_t backoff = policy.base_backoff_ms;
    for (int i = 1; i < task.attempts() && backoff < policy.max_backoff_ms; ++i) backoff *= 2;
    task.set_not_before_ms(now_ms + std::min(backoff, policy.max_backoff_ms));
    task.set_state(v1::TASK_READY);
    return false;
  }
  task.set_state(v1::TASK_FAILED);
  return true;
}

std::vector<v1::TaskRecord*> ExpireLeases(std::vector<v1::TaskRecord>& tasks, int64_t now_ms,
                                          const RetryPolicy& policy) {
  std::vector<v1::TaskRecord*> expired;
  for (auto& t : tasks) {
    if (t.state() == v1::TASK_LEASED && t.lease_deadline_ms() < now_ms) {
      std::string holders;
      for (const auto& w : t.lease_workers()) absl::StrAppend(&holders, holders.empty() ? "" : ",", w);
      ApplyFailure(t, absl::AbortedError(absl::StrCat("lease of ", holders, " expired")),
                   /*retriable=*/true, now_ms, policy, /*lease_lost=*/true);
      expired.push_back(&t);
    }
  }
  return expired;
}

v1::JobState DeriveJobState(absl::Span<const v1::TaskRecord> tasks) {
  bool all_done = true, started = false;
  for (const auto& t : tasks) {
    if (t.state() == v1::TASK_FAILED) return v1::JOB_FAILED;
    if (t.state() != v1::TASK_DONE) all_done = false;
    if (t.state() == v1::TASK_DONE || t.state() == v1::TASK_LEASED || t.attempts() > 0) started = true;
  }
  if (all_done) return v1::JOB_SUCCEEDED;
  return started ? v1::JOB_RUNNING : v1::JOB_PENDING;
}

}  // namespace moec::coordinator
