#include "coordinator/corruption_recovery.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/status_payloads.h"
#include "common/task_id.h"
#include "coordinator/job_store.h"
#include "glog/logging.h"

namespace moec::coordinator {

absl::StatusOr<bool> CorruptionRecovery::Recover(JobTasks& job, v1::TaskRecord& failed,
                                                 const absl::Status& error, int64_t now_ms,
                                                 Changes* changes) {
  if (error.code() != absl::StatusCode::kDataLoss || factors_ == nullptr) return false;
  const std::optional<std::string> key = FactorKeyOf(error);
  if (!key.has_value()) return false;
  absl::StatusOr<FactorKey> parsed = FactorKey::Parse(*key);
  if (!parsed.ok()) return false;
  v1::TaskRecord* producer = nullptr;
  for (v1::TaskRecord& t : job.tasks) {
    if (t.fingerprint() == parsed->fingerprint && &t != &failed) producer = &t;
  }
  if (producer == nullptr) return false;
  if (producer->state() == v1::TASK_DONE) {
    int& reruns = reruns_[producer->task_id()];
    if (reruns >= max_reruns_) return false;
    ++reruns;
    MOEC_RETURN_IF_ERROR(RerunProducer(job, *producer, failed, *key, error, now_ms, changes));
  } else if (producer->state() != v1::TASK_READY && producer->state() != v1::TASK_LEASED) {
    return false;
  }
  // The failed attempt does not count: the task waits for the producer's new outputs (also when
  // it read them through another task, as stages after a restructure read pruned weights).
  std::vector<size_t>& waiting = job.dependents[job.PositionOf(*producer)];
  const size_t me = job.PositionOf(failed);
  if (std::find(waiting.begin(), waiting.end(), me) == waiting.end()) waiting.push_back(me);
  failed.clear_lease_workers();
  failed.set_lease_deadline_ms(0);
  failed.set_attempts(std::max(0, failed.attempts() - 1));
  failed.set_error(error.ToString());
  failed.set_state(v1::TASK_BLOCKED);
  changes->tasks.push_back(&failed);
  return true;
}

absl::Status CorruptionRecovery::RerunProducer(JobTasks& job, v1::TaskRecord& producer,
                                               const v1::TaskRecord& failed,
                                               const std::string& key, const absl::Status& error,
                                               int64_t now_ms, Changes* changes) {
  // A tensor the coordinator only recorded was lost with the workers holding it; else corrupt.
  absl::StatusOr<storage::FactorInfo> info = factors_->Stat(key);
  const char* what = info.ok() && info->held() ? "was lost with the workers holding it" : "was corrupt";
  // Its outputs go (the corrupt one and the rest: the re-run writes them all again).
  const std::string& fp = producer.fingerprint();
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> keys, factors_->List(fp + "/"));
  for (const std::string& k : keys) MOEC_RETURN_IF_ERROR(factors_->Delete(k));
  JobStore::RemoveDoneFingerprint(fp, &changes->batch);
  producer.set_state(v1::TASK_READY);
  producer.set_reused(false);
  producer.set_attempts(0);
  producer.set_lost_leases(0);
  producer.set_not_before_ms(0);
  producer.set_progress(0);
  producer.set_error(absl::StrCat("re-run: output ", key, " ", what));
  changes->tasks.push_back(&producer);
  changes->events.push_back(
      MakeEvent(v1::EVENT_FACTOR_CORRUPT, failed.task_id(), error.ToString(), now_ms));
  changes->events.push_back(MakeEvent(v1::EVENT_TASK_RERUN, producer.task_id(),
                                      absl::StrCat("its output ", key, " ", what), now_ms));
  LOG(WARNING) << "job=" << job.record.job_id() << " task=" << failed.task_id()
               << " could not read factor " << key << " (" << what << "); re-running "
               << producer.task_id();
  // Tasks that need it and have not started wait for it again.
  for (size_t i : job.dependents[job.PositionOf(producer)]) {
    v1::TaskRecord& d = job.tasks[i];
    if (d.state() == v1::TASK_READY) {
      d.set_state(v1::TASK_BLOCKED);
      changes->tasks.push_back(&d);
    }
  }
  return absl::OkStatus();
}

}  // namespace moec::coordinator
