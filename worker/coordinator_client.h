// How a worker talks to the coordinator. GrpcCoordinatorClient is the real one; tests of the
// Worker use an in-process one over the Coordinator core.
#ifndef MOEC_WORKER_COORDINATOR_CLIENT_H_
#define MOEC_WORKER_COORDINATOR_CLIENT_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "moec/v1/job.pb.h"
#include "storage/factor_store.h"

namespace moec::worker {

struct Lease {
  v1::TaskRecord task;
  int rank = 0;
  std::vector<std::string> group;
  std::string recipe_json;
  bool overwrite = false;  // the job may replace an output moec did not write
  std::map<std::string, std::string> input_fingerprints;  // task id -> fingerprint
};

// What a worker registers.
struct Registration {
  std::string name;
  bool gpu = false;                 // computes on a GPU of device_memory_bytes
  int64_t memory_bytes = 0;         // the host's
  int64_t device_memory_bytes = 0;
  std::string previous_id;          // the id the worker had (empty at its first registration)
  std::string store_id;             // its activation store (empty: none)
  std::string data_address;         // where its ActivationServer serves that store
};

// A registered worker holding a tensor in its activation store (FactorStat.holders).
struct Holder {
  std::string store_id;
  std::string worker_id;
  std::string address;
};

// Thread-safe.
class CoordinatorClient {
 public:
  virtual ~CoordinatorClient() = default;
  virtual absl::StatusOr<std::string> RegisterWorker(const Registration& r) = 0;
  // `running`: the tasks the worker runs now (only their leases are renewed). Returns those of
  // them that were cancelled.
  virtual absl::StatusOr<std::vector<std::string>> Heartbeat(
      const std::string& worker_id, const std::vector<std::string>& running) = 0;
  virtual absl::StatusOr<std::optional<Lease>> LeaseTask(const std::string& worker_id) = 0;
  // Ends a LeaseTask long poll in flight at once, and every later one (they return Cancelled):
  // a stopping worker does not wait out the poll.
  virtual void CancelWaits() {}
  // compute_ms: how long the stage ran, and `profile` where that time went (both recorded on
  // the task). With `next`, asks for the next task in the same call: *next is one ready at
  // once, or nullopt (the call never waits).
  virtual absl::Status CompleteTask(const std::string& worker_id, const std::string& task_id,
                                    int64_t compute_ms, const v1::TaskProfile& profile,
                                    std::optional<Lease>* next) = 0;
  // Returns true when the task was cancelled.
  virtual absl::StatusOr<bool> ReportProgress(const std::string& worker_id,
                                              const std::string& task_id, double fraction,
                                              const std::string& message) = 0;
  // A DataLoss `error` carrying a factor key (common/status_payloads.h) keeps it: the
  // coordinator re-runs the key's producer.
  virtual absl::Status FailTask(const std::string& worker_id, const std::string& task_id,
                                const absl::Status& error, bool retriable) = 0;
  // Gives back a granted task the worker has not started (it is stopping).
  virtual absl::Status ReleaseTask(const std::string& worker_id, const std::string& task_id) = 0;
  // Streams an output of a held task (FactorService.PutFactor); returns its key.
  virtual absl::StatusOr<std::string> PutOutput(const std::string& worker_id,
                                                const std::string& task_id,
                                                const std::string& name, storage::DType dtype,
                                                absl::Span<const int64_t> shape,
                                                absl::string_view data) = 0;
  // Records an output of a held task that activation store `store_id` keeps
  // (FactorService.RecordFactor); returns its key.
  virtual absl::StatusOr<std::string> RecordOutput(const std::string& worker_id,
                                                   const std::string& task_id,
                                                   const std::string& name, storage::DType dtype,
                                                   absl::Span<const int64_t> shape,
                                                   uint32_t crc32c, const std::string& store_id) = 0;
  // Reads a committed tensor (FactorService.GetFactor). A DataLoss carries `key` as its factor
  // key payload. A tensor held by workers comes back as its header alone (info.held(), no
  // bytes), and `holders` (when not null) receives the registered workers holding it.
  virtual absl::StatusOr<storage::Factor> GetFactor(const std::string& key,
                                                    std::vector<Holder>* holders = nullptr) = 0;

  // The gang rendezvous store of a held task's attempt (CoordinatorService.GroupStore*).
  virtual absl::Status GroupStoreSet(const std::string& worker_id, const std::string& task_id,
                                     int attempt, const std::string& key,
                                     const std::string& value) = 0;
  // nullopt when the key did not appear within `wait` (the coordinator caps it at 2 s).
  virtual absl::StatusOr<std::optional<std::string>> GroupStoreGet(const std::string& worker_id,
                                                                   const std::string& task_id,
                                                                   int attempt,
                                                                   const std::string& key,
                                                                   int64_t wait_ms) = 0;
  virtual absl::StatusOr<int64_t> GroupStoreAdd(const std::string& worker_id,
                                                const std::string& task_id, int attempt,
                                                const std::string& key, int64_t delta) = 0;
};

struct GrpcClientOptions {
  std::string address;     // HOST:PORT
  std::string token;       // bearer token
  std::string tls_ca;      // PEM roots; empty: plaintext
  std::string tls_cert;    // client certificate for mutual TLS (optional)
  std::string tls_key;
  int64_t rpc_timeout_ms = 10000;
  // LeaseTask long-polls this long on the coordinator before answering "nothing now".
  int64_t lease_wait_ms = 1000;
};

// Errors: InvalidArgument for an empty address or token.
absl::StatusOr<std::unique_ptr<CoordinatorClient>> NewGrpcCoordinatorClient(
    const GrpcClientOptions& options);

}  // namespace moec::worker

#endif  // MOEC_WORKER_COORDINATOR_CLIENT_H_
