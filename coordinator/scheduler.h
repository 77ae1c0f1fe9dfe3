// The scheduler and the task state machine, as pure functions of the job state, the workers and
// the time: no I/O, no threads, no clock of their own. The coordinator calls them under its lock
// and persists what they change (JobStore).
#ifndef MOEC_COORDINATOR_SCHEDULER_H_
#define MOEC_COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "moec/v1/job.pb.h"

namespace moec::coordinator {

struct WorkerSlots {
  std::string worker_id;
  int free_slots = 1;  // tasks it can take now
  // Taken first among workers with as many free slots (the worker that just completed a task:
  // it asks for the next one at once, so the task it made ready does not wake another).
  bool preferred = false;
  bool gpu = false;                 // computes on a GPU (moec-worker --device cuda:N)
  int64_t device_memory_bytes = 0;  // that GPU's memory
};

// Whether `w` may run `task`: a CPU worker always; a GPU worker when the task's planned device
// memory (TaskRecord.device_memory_bytes; 0: not planned) fits its GPU.
bool Fits(const v1::TaskRecord& task, const WorkerSlots& w);

// OK when some worker of `cluster` (every registered one) could run `task`, or when the cluster
// is empty; otherwise ResourceExhausted naming the task's planned memory and the largest GPU.
absl::Status CheckSomeWorkerFits(const v1::TaskRecord& task, absl::Span<const WorkerSlots> cluster);

struct Assignment {
  std::string task_id;
  std::vector<std::string> workers;  // group_size distinct workers
};

// Leases READY tasks (in the given priority order; tasks with not_before_ms > now_ms wait) to
// workers with free slots. A gang never mixes CPU and GPU workers (their collectives differ:
// Gloo, NCCL): it is formed from GPU workers the task fits, else from CPU workers. A task with
// group_size k gets min(k, n) distinct workers of one kind, n being the registered workers of
// that kind it fits (`cluster`; empty: no bound), or none: a gang never waits for more workers
// than the cluster has — after a member died for good the group re-forms smaller (a stage's
// outputs do not depend on the gang size, docs/data_plane.md); a task that does not fit is
// skipped and later, smaller tasks may still run (backfilling). Workers are chosen by most free
// slots, then those holding the task's inputs (`near`: task id -> the workers that ran the tasks
// whose hidden states it reads, whose activation stores keep them), then the preferred one, then
// by id, so the result is deterministic.
std::vector<Assignment> Schedule(
    absl::Span<const v1::TaskRecord* const> ready, std::vector<WorkerSlots> workers,
    int64_t now_ms, absl::Span<const WorkerSlots> cluster = {},
    const std::map<std::string, std::vector<std::string>>& near = {});

struct RetryPolicy {
  int max_attempts = 3;            // leases a task may get before it fails for good
  int64_t base_backoff_ms = 1000;  // delay before the 2nd attempt; doubles, capped below
  int64_t max_backoff_ms = 60000;
  int64_t lease_ms = 30000;        // lease length; heartbeats renew it
  // Expired leases (dead or silent workers) a task may have before it fails for good; they do
  // not count as attempts: a machine's failure is not the task's.
  int max_lost_leases = 10;
};

// Marks `task` LEASED to `workers` until now + lease_ms and counts the attempt.
void GrantLease(v1::TaskRecord& task, const std::vector<std::string>& workers, int64_t now_ms,
                const RetryPolicy& policy);

// Applies a failure of `task`'s current attempt. A retriable failure with attempts left puts it
// back to READY after a backoff; otherwise it becomes FAILED with `error`. Attempts whose lease
// was lost (`lease_lost`, and TaskRecord.lost_leases) count against max_lost_leases instead of
// max_attempts. Returns true when the task failed for good.
bool ApplyFailure(v1::TaskRecord& task, const absl::Status& error, bool retriable, int64_t now_ms,
                  const RetryPolicy& policy, bool lease_lost = false);

// Returns the LEASED tasks of `tasks` whose lease has expired at now_ms after applying to each a
// retriable failure (Aborted: lease expired) that counts as a lost lease, not an attempt. Those
// out of lost leases become FAILED.
std::vector<v1::TaskRecord*> ExpireLeases(std::vector<v1::TaskRecord>& tasks, int64_t now_ms,
                                          const RetryPolicy& policy);

// The job state implied by its tasks: FAILED if any task failed for good, SUCCEEDED if all are
// DONE, RUNNING if any has started, else PENDING. CANCELLED is set by the coordinator only.
v1::JobState DeriveJobState(absl::Span<const v1::TaskRecord> tasks);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_SCHEDULER_H_
