// JobStore: jobs, tasks and their event logs, durable in a KvStore (RocksDB in production).
// Every mutation is one synced WriteBatch, so after a crash a job's record, its tasks and its
// events agree. Key schema (docs/formats/job_store.md):
//   jobs   j/<job_id> -> JobRecord          f/<fingerprint> -> job_id (SubmitJob idempotence)
//   tasks  t/<job_id>/<order:8 digits> -> TaskRecord   d/<task fingerprint> -> task_id (done)
//   events e/<job_id>/<seq:16 digits> -> JobEvent
#ifndef MOEC_COORDINATOR_JOB_STORE_H_
#define MOEC_COORDINATOR_JOB_STORE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "moec/v1/job.pb.h"
#include "storage/kv_store.h"

namespace moec::coordinator {

// Column families a JobStore needs in its KvStore.
std::vector<std::string> JobStoreColumnFamilies();

// Thread-compatible: the coordinator serializes calls per job. The KvStore must outlive it.
class JobStore {
 public:
  // Errors: InvalidArgument when the store lacks a needed column family.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(storage::KvStore* kv);

  // Persists a new job, its tasks and events (numbered from job.next_event_seq, which is
  // advanced) in one batch. Errors: AlreadyExists for a known job id or fingerprint.
  absl::Status CreateJob(v1::JobRecord& job, absl::Span<const v1::TaskRecord> tasks,
                         std::vector<v1::JobEvent> events);

  // Persists the job record, changed tasks, new events (numbered as above) and `extra` writes
  // (e.g. a task's outputs) in one batch, synced unless `durability` says otherwise (lease
  // grants use kBuffered: losing one in a machine crash only re-runs an unfinished task).
  absl::Status Commit(v1::JobRecord& job, absl::Span<const v1::TaskRecord* const> tasks,
                      std::vector<v1::JobEvent> events, const storage::KvWriteBatch* extra = nullptr,
                      storage::Durability durability = storage::Durability::kSync);

  // Makes every commit that returned before the call durable (KvStore::SyncLog: concurrent
  // callers share syncs). For commits made kBuffered under a lock, synced after releasing it.
  absl::Status SyncLog() { return kv_->SyncLog(); }

  // Adds to `batch` the record that a task with this fingerprint finished (the memo index that
  // lets identical work be reused across resumes and jobs).
  static void AddDoneFingerprint(const v1::TaskRecord& task, storage::KvWriteBatch* batch);
  // Forgets that work with fingerprint `fp` is done (its outputs are being recomputed).
  static void RemoveDoneFingerprint(absl::string_view fp, storage::KvWriteBatch* batch);
  // The id of a finished task with this fingerprint, if any.
  absl::StatusOr<std::optional<std::string>> FindDoneFingerprint(absl::string_view fp) const;

  // Adds to `batch` what Commit would write (numbering the events), without writing it: for a
  // caller that commits it together with other data (a FactorTransaction of task outputs).
  absl::Status PrepareCommit(v1::JobRecord& job, absl::Span<const v1::TaskRecord* const> tasks,
                             std::vector<v1::JobEvent> events, storage::KvWriteBatch* batch) const;
  // Writes a batch that PrepareCommit (for one or several jobs) filled.
  absl::Status Write(const storage::KvWriteBatch& batch, storage::Durability durability) {
    return kv_->Write(batch, durability);
  }

  absl::StatusOr<v1::JobRecord> GetJob(absl::string_view job_id) const;
  // The job with this fingerprint, if any.
  absl::StatusOr<std::optional<v1::JobRecord>> FindByFingerprint(absl::string_view fp) const;
  absl::StatusOr<std::vector<v1::JobRecord>> ListJobs() const;
  // Tasks of a job in plan order.
  absl::StatusOr<std::vector<v1::TaskRecord>> ListTasks(absl::string_view job_id) const;
  // Events with seq >= from_seq, at most `limit`.
  absl::StatusOr<std::vector<v1::JobEvent>> ReadEvents(absl::string_view job_id, int64_t from_seq,
                                                       size_t limit) const;

 private:
  explicit JobStore(storage::KvStore* kv) : kv_(kv) {}
  void AddEvents(v1::JobRecord& job, std::vector<v1::JobEvent>& events,
                 storage::KvWriteBatch* batch) const;

  storage::KvStore* const kv_;  // Not owned.
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_JOB_STORE_H_
