// The coordinator's registry of workers: registration, liveness, and the mailboxes and long polls
// through which workers pull work. A worker that asks for a task and gets none is remembered as
// waiting for a poll window, so a gang task (a layer task over W workers) is granted once W
// workers are waiting; each member then finds the grant in its mailbox. Thread-compatible: the
// coordinator guards it with its lock (and waits on it under that lock for long polls).
#ifndef MOEC_COORDINATOR_WORKER_REGISTRY_H_
#define MOEC_COORDINATOR_WORKER_REGISTRY_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "coordinator/scheduler.h"
#include "moec/v1/job.pb.h"

namespace moec::coordinator {

struct WorkerInfo {
  std::string name;  // host:pid or a user-given name
  bool gpu = false;
  int64_t memory_bytes = 0;         // the host's
  int64_t device_memory_bytes = 0;  // the GPU's (gpu)
  // The id the worker had before (it registers again after a coordinator restart); empty: none.
  std::string previous_id;
  // Its activation store (moec-worker --scratch; kept across the worker's restarts) and the
  // address of the FactorService serving it; both empty when it has none.
  std::string store_id;
  std::string data_address;
};

// A task granted to a worker.
struct LeasedTask {
  v1::TaskRecord task;
  int rank = 0;                     // this worker's rank in the gang
  std::vector<std::string> group;   // worker ids of the gang, rank order
  std::string recipe_json;          // the job's canonical recipe
  bool overwrite = false;           // the job may replace an output moec did not write
  // Task id -> fingerprint of every task whose outputs `task` reads (TaskRecord.inputs).
  std::map<std::string, std::string> input_fingerprints;
};

class WorkerRegistry {
 public:
  // Returns the worker's id, "w<n>-<name>": its previous id when it has one of that form for
  // its name and no registered worker holds it (a restarted coordinator gives a worker its id
  // back, and with it the leases its tasks hold), else a new one.
  std::string Register(const WorkerInfo& info, int64_t now_ms);
  bool Contains(absl::string_view id) const { return workers_.count(std::string(id)) > 0; }
  // New ids are numbered after `id`'s ("w<n>-..."; others are ignored): a restarted coordinator
  // reserves the ids its stored leases name, so that only their workers get them back.
  void ReserveId(absl::string_view id);
  // Records contact from the worker. False for an unknown (e.g. timed out) worker.
  bool Touch(absl::string_view id, int64_t now_ms);
  // Drops the workers silent for longer than `timeout_ms` and returns their ids.
  std::vector<std::string> DropSilent(int64_t now_ms, int64_t timeout_ms);

  // The worker is eligible for grants until `until_ms` (while it has no mail).
  void WaitUntil(absl::string_view id, int64_t until_ms);
  // Workers eligible now, one slot each (a GPU runs one task at a time); `preferred` is served
  // first.
  std::vector<WorkerSlots> Idle(int64_t now_ms, absl::string_view preferred) const;
  // Every registered worker, busy or not, with its kind and GPU memory (the scheduler's bound on
  // gang sizes, and whether any worker could ever run a task).
  std::vector<WorkerSlots> Cluster() const;
  // Puts a grant into the worker's mailbox; it is no longer waiting.
  void Deliver(const std::string& id, LeasedTask grant);
  bool HasMail(absl::string_view id) const;
  // Takes the worker's grant, if any (and records contact).
  std::optional<LeasedTask> TakeMail(absl::string_view id, int64_t now_ms);

  // LeaseTask calls waiting now: while none waits, only a completer asking for its next task
  // makes a completion schedule.
  void BeginLongPoll() { ++long_polls_; }
  void EndLongPoll() { --long_polls_; }
  int long_polls() const { return long_polls_; }

  struct View {
    std::string worker_id;
    WorkerInfo info;
    int64_t last_seen_ms = 0;
  };
  std::vector<View> List() const;
  // The registered worker serving activation store `store_id` (the one heard from last when a
  // restarted worker and its silent predecessor both claim it), or nullopt.
  std::optional<View> ServingStore(absl::string_view store_id) const;
  size_t size() const { return workers_.size(); }

 private:
  struct Worker {
    WorkerInfo info;
    int64_t last_seen_ms = 0;
    int64_t waiting_until_ms = -1;       // eligible for gang grants until then
    std::optional<LeasedTask> mailbox;   // granted, not yet picked up
  };
  std::map<std::string, Worker> workers_;
  int64_t next_id_ = 1;
  int long_polls_ = 0;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_WORKER_REGISTRY_H_
