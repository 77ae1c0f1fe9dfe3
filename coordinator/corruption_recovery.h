// Recovery from corrupt or lost task outputs (lineage). A task that reads a corrupt or incomplete
// factor, or one whose holders are all gone (docs/data_plane.md), fails with
// DataLoss carrying the factor's key (common/status_payloads.h); the task that produced it is
// re-run — its outputs deleted, its done-fingerprint forgotten, READY again — and the failed task
// and the not-yet-leased tasks that need the producer wait for it again. The failed attempt does
// not count. At most `max_reruns` re-runs per producing task (this process's lifetime).
// Thread-compatible: the coordinator guards it with its lock.
#ifndef MOEC_COORDINATOR_CORRUPTION_RECOVERY_H_
#define MOEC_COORDINATOR_CORRUPTION_RECOVERY_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/job_tasks.h"
#include "storage/factor_store.h"
#include "storage/kv_store.h"

namespace moec::coordinator {

class CorruptionRecovery {
 public:
  // `factors` may be null (then nothing is ever recovered).
  explicit CorruptionRecovery(storage::FactorStore* factors, int max_reruns = 2)
      : factors_(factors), max_reruns_(max_reruns) {}

  // What Recover changed, for the caller's commit.
  struct Changes {
    std::vector<v1::TaskRecord*> tasks;
    std::vector<v1::JobEvent> events;
    storage::KvWriteBatch batch;  // the producer's done-fingerprint removal
  };

  // When `error` is a DataLoss naming a factor produced by another task of `job`, applies the
  // re-run to `job` (the producer's stored outputs are deleted now) and returns true. Returns
  // false, changing nothing, for any other error, a producer out of re-runs, or one that failed
  // or was cancelled.
  absl::StatusOr<bool> Recover(JobTasks& job, v1::TaskRecord& failed, const absl::Status& error,
                               int64_t now_ms, Changes* changes);

 private:
  // Re-runs a DONE producer: outputs deleted, READY, its waiting dependents BLOCKED.
  absl::Status RerunProducer(JobTasks& job, v1::TaskRecord& producer, const v1::TaskRecord& failed,
                             const std::string& key, const absl::Status& error, int64_t now_ms,
                             Changes* changes);

  storage::FactorStore* const factors_;  // Not owned; may be null.
  const int max_reruns_;
  std::map<std::string, int> reruns_;  // producing task id -> re-runs so far
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_CORRUPTION_RECOVERY_H_
