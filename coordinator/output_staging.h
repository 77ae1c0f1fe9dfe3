// Outputs of leased tasks, staged until their task completes: each task's puts stream into one
// FactorTransaction, invisible to readers, which the completion commits together with the task's
// state (one write); a failed, expired, cancelled or released attempt discards it. Thread-safe.
// Lock order: the coordinator's lock, then this one, then a Pending's.
#ifndef MOEC_COORDINATOR_OUTPUT_STAGING_H_
#define MOEC_COORDINATOR_OUTPUT_STAGING_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "storage/dtype.h"
#include "storage/factor_store.h"

namespace moec::coordinator {

// The bytes of a streamed tensor, in pieces.
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // Sets *chunk to the next piece and returns true, or returns false at the end.
  virtual absl::StatusOr<bool> Next(std::string* chunk) = 0;
};

class OutputStaging {
 public:
  // The staged outputs of one attempt of a task.
  struct Pending {
    absl::Mutex mu;
    std::unique_ptr<storage::FactorTransaction> txn ABSL_GUARDED_BY(mu);
  };

  explicit OutputStaging(storage::FactorStore* factors) : factors_(factors) {}

  // The staged outputs of `task_id`, created when it has none. Called while the caller knows the
  // attempt holds its lease (under the coordinator's lock); the bytes then stream without it.
  std::shared_ptr<Pending> Open(const std::string& task_id);
  // Streams `source` into `pending` as factor `key` (puts of one task are serialized). Errors:
  // InvalidArgument for a bad dtype/shape or a size mismatch; errors of `source`.
  static absl::Status Stream(Pending& pending, const std::string& key, storage::DType dtype,
                             absl::Span<const int64_t> shape, ChunkSource& source);
  // Removes and returns the staged outputs of `task_id` (null: none), for its completion.
  std::shared_ptr<Pending> Take(const std::string& task_id);
  // Drops the staged outputs of `task_id`: a put still streaming into them is discarded with them.
  void Discard(const std::string& task_id);

  // Checks an output name: 1-256 of [A-Za-z0-9._/-] without "..".
  static absl::Status CheckName(absl::string_view name);

 private:
  storage::FactorStore* const factors_;  // Not owned.
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_OUTPUT_STAGING_H_
