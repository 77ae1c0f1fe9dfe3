// Coordinator: the core of moec-coordinator, free of gRPC. Owns the in-memory view of every job
// (loaded from the JobStore at creation) and the scheduling loop; every state change is persisted
// (one JobStore commit) before it becomes visible. Its parts live in their own classes: the
// worker registry (registration, liveness, mailboxes, long polls), the staging of task outputs,
// and the recovery from corrupt outputs. Job-facing methods are in coordinator.cc, worker-facing
// ones in coordinator_leasing.cc.
//
// Workers pull work: LeaseTask never blocks beyond its long poll. A worker that asks and gets
// nothing is remembered as waiting for `poll_window_ms`, so a gang task (a layer task over W
// workers) is granted once W workers are waiting; each member then finds it at its next LeaseTask.
#ifndef MOEC_COORDINATOR_COORDINATOR_H_
#define MOEC_COORDINATOR_COORDINATOR_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/corruption_recovery.h"
#include "coordinator/group_store.h"
#include "coordinator/job_store.h"
#include "coordinator/job_tasks.h"
#include "coordinator/output_staging.h"
#include "coordinator/scheduler.h"
#include "coordinator/worker_registry.h"
#include "moec/v1/job.pb.h"
#include "storage/factor_store.h"
#include "storage/group_sync.h"
#include "storage/kv_store.h"

namespace moec::coordinator {

struct CoordinatorOptions {
  RetryPolicy retry;
  // A worker that has not called Heartbeat or LeaseTask for this long is dropped.
  int64_t worker_timeout_ms = 15000;
  // How long a LeaseTask call that got nothing keeps the worker eligible for gang grants.
  int64_t poll_window_ms = 3000;
  // Recipe paths must resolve inside these directories (empty: anywhere).
  std::vector<std::string> allowed_roots;
  // When a completion is made durable (docs/job_store.md "Durability of completions"). false:
  // CompleteTask returns once the completion is in the log (it survives a crash of this
  // process) and a background thread syncs the log, at most `log_sync_interval_ms` after; a
  // machine crash loses at most the completions of that window, whose tasks re-run after the
  // restart to the same bytes. The completion that ends a job always waits for the sync.
  // true: every CompleteTask returns only once its completion is synced.
  bool durable_completions = false;
  int64_t log_sync_interval_ms = 5;
  absl::Status Validate() const;
};

// Counts for metrics (moec-coordinator exports them in Prometheus text format).
struct CoordinatorStats {
  std::map<std::string, int64_t> jobs_by_state;   // JobState name -> count
  std::map<std::string, int64_t> tasks_by_state;  // TaskState name -> count
  int64_t workers = 0;
  // Cumulative since start:
  int64_t leases_granted = 0;
  int64_t tasks_completed = 0;
  int64_t tasks_reused = 0;
  int64_t retries = 0;          // failed attempts that will be retried
  int64_t lease_expiries = 0;
  int64_t tasks_failed = 0;     // tasks that failed for good
  int64_t log_syncs = 0;        // group syncs of the job log to disk
  int64_t log_sync_failures = 0;
  // Task outputs the coordinator's factor store received (PutFactor), and those recorded there
  // but kept in workers' activation stores (RecordFactor), in bytes.
  int64_t factor_bytes_stored = 0;
  int64_t factor_bytes_held = 0;
};

struct SubmitResult {
  v1::JobRecord job;
  bool existed = false;  // an identical job was already submitted; it is returned
};

// Thread-safe. The JobStore (and its KvStore) must outlive the Coordinator.
class Coordinator {
 public:
  using Clock = std::function<absl::Time()>;

  // Loads every job. Leases of tasks that were LEASED when the previous process stopped are
  // renewed from now, giving their workers a lease period to report back.
  // `factors` (optional) stores task outputs; it must use the JobStore's KvStore so that a
  // task's outputs and its completion commit in one batch.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      JobStore* store, CoordinatorOptions options, Clock clock,
      storage::FactorStore* factors = nullptr);

  // --- Client-facing (coordinator.cc) ---
  // Validates the recipe (`source_path` resolves relative paths), plans and persists the job.
  // An identical job (same fingerprint) is returned instead of a new one.
  // An existing `output` is refused (FailedPrecondition) unless it was written by this job or
  // `overwrite` is set; then the job's export replaces it when it succeeds.
  // Reading the recipe's files and planning happen outside the coordinator's lock.
  // Errors: those of recipe::ParseRecipe and ReadModelShape.
  absl::StatusOr<SubmitResult> SubmitJob(const std::string& recipe_yaml,
                                         const std::string& source_path,
                                         const std::vector<std::string>& overrides,
                                         bool overwrite = false);
  absl::StatusOr<v1::JobRecord> GetJob(absl::string_view job_id) const;
  std::vector<v1::JobRecord> ListJobs() const;
  absl::StatusOr<std::vector<v1::TaskRecord>> GetTasks(absl::string_view job_id) const;
  // Events with seq >= from_seq, at most `limit`. With a `timeout`, waits up to that long for
  // one to exist (an empty list on timeout). Sets `*ended` (when given) when the job has ended:
  // no further events unless it is resumed.
  absl::StatusOr<std::vector<v1::JobEvent>> ReadEvents(absl::string_view job_id, int64_t from_seq,
                                                       size_t limit,
                                                       absl::Duration timeout = absl::ZeroDuration(),
                                                       bool* ended = nullptr);
  // Errors: NotFound; FailedPrecondition for a job that already ended (succeeded, failed,
  // cancelled).
  absl::Status CancelJob(absl::string_view job_id);
  // Re-queues the failed and cancelled tasks of a failed or cancelled job (attempts reset).
  // Errors: NotFound; FailedPrecondition for a job that is running or succeeded.
  absl::Status ResumeJob(absl::string_view job_id);

  // --- Worker-facing (coordinator_leasing.cc) ---
  // Returns the new worker's id.
  std::string RegisterWorker(const WorkerInfo& info);
  // Renews the worker's liveness and the leases of the tasks it says it is running (`running`;
  // ids it does not hold are ignored); returns those of them that were cancelled. A task it holds
  // but does not name (its grant or its completion was lost in transit) is not renewed: its lease
  // expires and it is re-run. Errors: NotFound for an unknown (e.g. timed out) worker: it must
  // register again.
  absl::StatusOr<std::vector<std::string>> Heartbeat(absl::string_view worker_id,
                                                     absl::Span<const std::string> running = {});
  // A task for this worker, if there is one now or, with `wait` (at most 2 s), within that time
  // (a long poll: completions and submissions hand tasks to waiting workers at once).
  // Errors: NotFound for an unknown worker.
  absl::StatusOr<std::optional<LeasedTask>> LeaseTask(absl::string_view worker_id,
                                                      absl::Duration wait = absl::ZeroDuration());
  // Ends the long polls in flight and makes later ones answer at once (the process is shutting
  // down: the server waits for its handlers, and a poll would hold it for up to 2 s).
  void EndLongPolls();
  // Records progress (fraction clamped to [0, 1]) of a task the worker holds and renews its
  // lease. Returns true when the task was cancelled (the worker should stop it).
  // Errors: NotFound; FailedPrecondition when the worker does not hold the task.
  absl::StatusOr<bool> ReportProgress(absl::string_view worker_id, absl::string_view task_id,
                                      double fraction, absl::string_view message);
  // Marks the task done, committing `outputs` with its state in one batch. Only the gang's
  // rank 0 completes a task. Errors: NotFound; FailedPrecondition when the worker does not hold
  // the task's current lease (e.g. it expired and the task was re-leased).
  // With `next`, the worker also asks for its next task: *next is set to one ready at once (it
  // never waits; typically the dependent this completion made ready), or to nullopt.
  // `profile`: where the stage's time went (TaskRecord.profile; empty: none recorded).
  absl::Status CompleteTask(absl::string_view worker_id, absl::string_view task_id,
                            const storage::KvWriteBatch& outputs, int64_t compute_ms = 0,
                            std::optional<LeasedTask>* next = nullptr,
                            const v1::TaskProfile& profile = v1::TaskProfile::default_instance());
  // CompleteTask without blocking on a log sync (for the gRPC callback handler, whose thread
  // serves other calls): `done` gets CompleteTask's result and, when `lease_next`, the next task
  // — at once when the completion waits for no sync, else from the log syncer's thread when the
  // sync has ended. `done` must be quick and must not call this Coordinator.
  using CompletionDone = std::function<void(absl::Status, std::optional<LeasedTask>)>;
  void CompleteTaskAsync(absl::string_view worker_id, absl::string_view task_id, int64_t compute_ms,
                         const v1::TaskProfile& profile, bool lease_next, CompletionDone done);
  // Reports a failed attempt. Retriable failures are retried with backoff while attempts
  // remain; otherwise the job fails with `error`. A DataLoss naming a corrupt factor re-runs its
  // producer instead (corruption_recovery.h). Errors: as CompleteTask.
  absl::Status FailTask(absl::string_view worker_id, absl::string_view task_id,
                        const absl::Status& error, bool retriable);
  // Gives back a task the worker holds but has not started (a stopping worker's grant): READY
  // again at once, its lease dropped, the attempt not counted. Errors: as CompleteTask.
  absl::Status ReleaseTask(absl::string_view worker_id, absl::string_view task_id);

  // Streams output `name` ([A-Za-z0-9._/-], 1..256 bytes) of a task the worker holds into the
  // factor store under the key "<task fingerprint>/<name>" (returned). It stays invisible until
  // CompleteTask commits it with the task's state (output_staging.h).
  // Errors: FailedPrecondition without a factor store or for a task the worker does not hold;
  // InvalidArgument for a bad name, dtype/shape, or a size mismatch; errors of `source`.
  absl::StatusOr<std::string> PutTaskOutput(absl::string_view worker_id, absl::string_view task_id,
                                            absl::string_view name, storage::DType dtype,
                                            absl::Span<const int64_t> shape, ChunkSource& source);
  // Records output `name` of a task the worker holds that the worker keeps in its activation
  // store `store_id`: the factor store gets only its header (dtype, shape, CRC32C, holder),
  // committed with the task like a PutTaskOutput. Errors: as PutTaskOutput.
  absl::StatusOr<std::string> RecordTaskOutput(absl::string_view worker_id,
                                               absl::string_view task_id, absl::string_view name,
                                               storage::DType dtype,
                                               absl::Span<const int64_t> shape, uint32_t crc32c,
                                               absl::string_view store_id);
  // The registered workers serving the activation stores `store_ids` (those with none now are
  // left out).
  std::vector<WorkerRegistry::View> HoldersOf(absl::Span<const std::string> store_ids) const;
  // Rendezvous of a gang (docs/data_plane.md): the GroupStore namespace of the worker's current
  // lease of `task_id` at `attempt`, in the store group_store() returns. Errors: NotFound;
  // FailedPrecondition when the worker does not hold the task or `attempt` is not the current one.
  absl::StatusOr<std::string> GroupNamespace(absl::string_view worker_id,
                                             absl::string_view task_id, int attempt);
  GroupStore& group_store() { return group_store_; }

  // The factor store (null when the coordinator has none). Reads need no coordinator state.
  storage::FactorStore* factors() const { return factors_; }

  // Expires leases and drops silent workers. The server calls it periodically.
  absl::Status Tick();

  struct WorkerView {
    std::string worker_id;
    WorkerInfo info;
    int64_t last_seen_ms;
    std::vector<std::string> tasks;
  };
  std::vector<WorkerView> ListWorkers() const;

  CoordinatorStats Stats() const;

 private:
  Coordinator(JobStore* store, CoordinatorOptions options, Clock clock,
              storage::FactorStore* factors)
      : store_(store), options_(std::move(options)), clock_(std::move(clock)), factors_(factors),
        staging_(factors), recovery_(factors) {}
  int64_t NowMs() const;
  absl::StatusOr<JobTasks*> FindJobLocked(absl::string_view job_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::TaskRecord*> FindTaskLocked(absl::string_view task_id, JobTasks** job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The staged outputs of the task the worker holds, and in *key the factor key of its output
  // `name`. Errors: as PutTaskOutput.
  absl::StatusOr<std::shared_ptr<OutputStaging::Pending>> OpenOutput(absl::string_view worker_id,
                                                                     absl::string_view task_id,
                                                                     absl::string_view name,
                                                                     std::string* key)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Task id -> the workers whose activation stores hold the hidden states each of `ready` reads
  // (the gangs that ran its previous-layer inputs), for the scheduler's locality.
  std::map<std::string, std::vector<std::string>> NearLocked(
      absl::Span<const v1::TaskRecord* const> ready) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::TaskRecord*> HeldTaskLocked(absl::string_view worker_id,
                                                 absl::string_view task_id, JobTasks** job)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::JobEvent EventLocked(v1::EventKind kind, absl::string_view task_id,
                           absl::string_view message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return MakeEvent(kind, task_id, message, NowMs());
  }
  // Unblocks tasks, reusing outputs of DONE tasks with the same fingerprint; appends what
  // changed to `changed` and events to `events`. With `done` (a task that just finished), only
  // its dependents are examined (O(fan-out)); otherwise every task is.
  absl::Status AdvanceLocked(JobTasks& job, std::vector<v1::TaskRecord*>* changed,
                             std::vector<v1::JobEvent>* events, const v1::TaskRecord* done = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job state after `changed`: from the done prefix after a completion, else from every task.
  v1::JobState DeriveStateLocked(JobTasks& job, const std::vector<v1::TaskRecord*>& changed,
                                 bool completion) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Commits a new job and makes it visible.
  absl::StatusOr<SubmitResult> AddJobLocked(JobTasks job, std::vector<v1::JobEvent> events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `preferred`: a worker to give tasks first (Schedule's WorkerSlots::preferred).
  absl::Status ScheduleLocked(absl::string_view preferred = "") ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Leases task `t` of `job` to `workers` and puts the grants into their mailboxes.
  absl::Status GrantLocked(JobTasks& job, v1::TaskRecord& t, const std::vector<std::string>& workers,
                           int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ScheduleLocked after a change that may make tasks ready; errors are logged. `completer`: the
  // worker whose completion made them ready — it counts as waiting and is served first.
  // `completer_asks`: it asked for its next task in the completing call (schedule even when
  // nobody long-polls).
  void WakeWaitersLocked(absl::string_view completer = "", bool completer_asks = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CompleteTask but for the final log sync: commits kBuffered. Sets *ended when the
  // completion ended its job.
  absl::Status CompleteTaskUnsynced(absl::string_view worker_id, absl::string_view task_id,
                                    const storage::KvWriteBatch& outputs, int64_t compute_ms,
                                    const v1::TaskProfile& profile,
                                    std::optional<LeasedTask>* next, bool* ended)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Logs a completion: `changed` and `events` join `all` (the task's outputs), the grants that
  // scheduling then makes are deferred into it, and `write` writes it (kSync when a deferred
  // commit asked for it, else kBuffered).
  absl::Status LogCompletionLocked(JobTasks& job, std::vector<v1::TaskRecord*> changed,
                                   std::vector<v1::JobEvent> events, absl::string_view worker_id,
                                   std::optional<LeasedTask>* next, storage::KvWriteBatch& all,
                                   const std::function<absl::Status(storage::Durability)>& write)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a completion: schedules (the completer first) and, with `next`, hands it its grant.
  void ServeCompleterLocked(absl::string_view worker_id, std::optional<LeasedTask>* next)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies a failed attempt (a retry or the job's failure) and commits it.
  absl::Status ApplyFailureLocked(JobTasks& job, v1::TaskRecord& t, absl::string_view worker_id,
                                  const absl::Status& error, bool retriable)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Commits a state transition. While a completion defers commits (deferred_batch_ set), the
  // writes are added to the completion's batch instead, which the completion writes (one log
  // record for the completion and the leases it caused) and signals itself.
  absl::Status CommitLocked(JobTasks& job, std::vector<v1::TaskRecord*> changed,
                            std::vector<v1::JobEvent> events,
                            const storage::KvWriteBatch* extra = nullptr,
                            storage::Durability durability = storage::Durability::kSync)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether a completion's reply waits for its log sync: with durable completions, and for the
  // completion that ended its job (docs/formats/job_store.md "Durability of completions").
  bool WaitsForSync(bool ended_job) const { return options_.durable_completions || ended_job; }

  // Constant after construction.
  JobStore* const store_;  // Not owned.
  const CoordinatorOptions options_;
  const Clock clock_;
  storage::FactorStore* const factors_;  // Not owned; may be null.

  // State transitions are committed to the JobStore while mu_ is held: a transition must be
  // durable before any caller can observe it, and commits are short writes (logged, then synced
  // after mu_ is released for completions and leases).
  mutable absl::Mutex mu_;
  absl::CondVar events_cv_;  // signalled after every commit (new events)
  std::map<std::string, JobTasks> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);  // submission order: priority
  WorkerRegistry workers_ ABSL_GUARDED_BY(mu_);
  CoordinatorStats counters_ ABSL_GUARDED_BY(mu_);  // only the cumulative fields are kept
  OutputStaging staging_;  // internally synchronized; lock order: mu_, then staging_
  CorruptionRecovery recovery_ ABSL_GUARDED_BY(mu_);
  GroupStore group_store_;  // internally synchronized; never called with mu_ held
  // Set by CompleteTaskUnsynced while it schedules: see CommitLocked. deferred_sync_: a deferred
  // commit asked for kSync (the completion then syncs before it returns).
  storage::KvWriteBatch* deferred_batch_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool deferred_sync_ ABSL_GUARDED_BY(mu_) = false;
  bool long_polls_ended_ ABSL_GUARDED_BY(mu_) = false;  // EndLongPolls
  // Syncs the log behind completions that do not wait (kicked), and for CompleteTaskAsync's
  // completions that do (AfterSync). Declared last: destroyed first, it syncs what was logged
  // (and answers those waiting) before the coordinator goes.
  std::unique_ptr<storage::BackgroundSync> syncer_;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_COORDINATOR_H_
