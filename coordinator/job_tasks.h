// A job as the coordinator holds it in memory: its record, its tasks in plan order, and the
// indexes the scheduler and the completion path read instead of scanning every task. Thread-
// compatible; the coordinator guards every JobTasks with its lock.
#ifndef MOEC_COORDINATOR_JOB_TASKS_H_
#define MOEC_COORDINATOR_JOB_TASKS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "moec/v1/job.pb.h"

namespace moec::coordinator {

// Whether a job in `state` has ended (succeeded, failed or cancelled).
inline bool JobEnded(v1::JobState state) {
  return state == v1::JOB_SUCCEEDED || state == v1::JOB_FAILED || state == v1::JOB_CANCELLED;
}

struct JobTasks {
  v1::JobRecord record;
  std::vector<v1::TaskRecord> tasks;
  std::map<std::string, size_t> index;          // task id -> position
  std::vector<std::vector<size_t>> dependents;  // position -> positions that depend on it
  // Positions of READY tasks, in plan order: what the scheduler looks at instead of every task.
  // Kept by NoteChanged for every task a commit changes, rebuilt by RebuildReady at submission,
  // resumption, recovery and each Tick (a safety net); entries are re-checked.
  std::set<size_t> ready;
  std::map<std::string, std::vector<size_t>> by_stage;  // stage id -> its tasks, layer order
  // Every task at a position below this is DONE: advanced by the completion path, lowered by
  // NoteChanged (every commit) for a task that left DONE, reset to 0 by RebuildReady. How a
  // completion decides whether the job succeeded without looking at every task.
  size_t done_prefix = 0;

  // Builds index, dependents, by_stage and ready from `tasks`.
  void Index();
  void RebuildReady();
  // Updates `ready` and `done_prefix` for tasks a commit changed.
  void NoteChanged(const std::vector<v1::TaskRecord*>& changed);
  // The task with this id, or nullptr.
  v1::TaskRecord* Find(absl::string_view task_id);
  const v1::TaskRecord* Find(absl::string_view task_id) const;
  size_t PositionOf(const v1::TaskRecord& t) const {
    return static_cast<size_t>(&t - tasks.data());
  }
  // Whether the job still runs tasks (PENDING or RUNNING).
  bool Active() const {
    return record.state() == v1::JOB_PENDING || record.state() == v1::JOB_RUNNING;
  }
  bool Ended() const { return JobEnded(record.state()); }
};

// An event of `kind` at `time_ms`.
v1::JobEvent MakeEvent(v1::EventKind kind, absl::string_view task_id, absl::string_view message,
                       int64_t time_ms);

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_JOB_TASKS_H_
