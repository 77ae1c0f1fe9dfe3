// Where reports read a job from: its record and tasks, the coordinator's other jobs, and the
// committed outputs of its tasks. The CLI's gRPC client (client/client.h) is one; the
// coordinator's own store, for GetJobReport and the dashboard (coordinator/job_source.h), the
// other. So a report is built by one piece of code wherever it is asked for.
#ifndef MOEC_REPORT_SOURCE_H_
#define MOEC_REPORT_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moec/v1/coordinator.pb.h"

namespace moec::report {

class JobSource {
 public:
  virtual ~JobSource() = default;
  // Errors: NotFound for an unknown job.
  virtual absl::StatusOr<v1::GetJobResponse> GetJob(const std::string& job_id, bool include_tasks,
                                                    bool wait_for_ready = false) = 0;
  virtual absl::StatusOr<std::vector<v1::JobRecord>> ListJobs() = 0;
  // The bytes of committed factor `key` ("<task fingerprint>/<name>"), at most `max_bytes`.
  // Errors: NotFound, ResourceExhausted (larger), DataLoss (corrupt or incomplete).
  virtual absl::StatusOr<std::string> GetFactorBytes(const std::string& key,
                                                     uint64_t max_bytes) = 0;
};

}  // namespace moec::report

#endif  // MOEC_REPORT_SOURCE_H_
