// The Coordinator's task outputs: streamed into its factor store (PutTaskOutput), or recorded
// there while a worker's activation store keeps the bytes (RecordTaskOutput, HoldersOf).
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/task_id.h"
#include "coordinator/coordinator.h"

namespace moec::coordinator {

absl::StatusOr<std::shared_ptr<OutputStaging::Pending>> Coordinator::OpenOutput(
    absl::string_view worker_id, absl::string_view task_id, absl::string_view name,
    std::string* key) {
  if (factors_ == nullptr) return absl::FailedPreconditionError("this coordinator has no factor store");
  MOEC_RETURN_IF_ERROR(OutputStaging::CheckName(name));
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  *key = FactorKey{t->fingerprint(), std::string(name)}.ToString();
  return staging_.Open(t->task_id());
}

absl::StatusOr<std::string> Coordinator::PutTaskOutput(absl::string_view worker_id,
                                                       absl::string_view task_id,
                                                       absl::string_view name,
                                                       storage::DType dtype,
                                                       absl::Span<const int64_t> shape,
                                                       ChunkSource& source) {
  std::string key;
  MOEC_ASSIGN_OR_RETURN(std::shared_ptr<OutputStaging::Pending> pending,
                        OpenOutput(worker_id, task_id, name, &key));
  // The bytes flow without the coordinator lock; only this task's puts wait on each other.
  MOEC_RETURN_IF_ERROR(OutputStaging::Stream(*pending, key, dtype, shape, source));
  const absl::StatusOr<uint64_t> bytes = storage::TensorByteSize(dtype, shape);
  absl::MutexLock lock(&mu_);
  counters_.factor_bytes_stored += bytes.ok() ? static_cast<int64_t>(*bytes) : 0;
  return key;
}

absl::StatusOr<std::string> Coordinator::RecordTaskOutput(
    absl::string_view worker_id, absl::string_view task_id, absl::string_view name,
    storage::DType dtype, absl::Span<const int64_t> shape, uint32_t crc32c,
    absl::string_view store_id) {
  MOEC_ASSIGN_OR_RETURN(const uint64_t bytes, storage::TensorByteSize(dtype, shape));
  std::string key;
  MOEC_ASSIGN_OR_RETURN(std::shared_ptr<OutputStaging::Pending> pending,
                        OpenOutput(worker_id, task_id, name, &key));
  {
    absl::MutexLock pending_lock(&pending->mu);
    const std::string holder(store_id);
    MOEC_RETURN_IF_ERROR(pending->txn->PutHeld(key, dtype, shape, crc32c, {&holder, 1}));
  }
  absl::MutexLock lock(&mu_);
  counters_.factor_bytes_held += static_cast<int64_t>(bytes);
  return key;
}

std::vector<WorkerRegistry::View> Coordinator::HoldersOf(
    absl::Span<const std::string> store_ids) const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerRegistry::View> out;
  for (const std::string& id : store_ids) {
    if (std::optional<WorkerRegistry::View> v = workers_.ServingStore(id)) out.push_back(*v);
  }
  return out;
}

}  // namespace moec::coordinator
