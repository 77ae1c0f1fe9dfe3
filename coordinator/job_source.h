// The coordinator's own jobs, tasks and committed outputs as a report::JobSource: what
// GetJobReport and the dashboard (coordinator/dashboard.h) build reports from, with the same
// code as the CLI (report/).
#ifndef MOEC_COORDINATOR_JOB_SOURCE_H_
#define MOEC_COORDINATOR_JOB_SOURCE_H_

#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "report/source.h"

namespace moec::coordinator {

// The job's record and, with `include_tasks`, its tasks in plan order (what GetJob returns).
// Errors: NotFound for an unknown job.
absl::StatusOr<v1::GetJobResponse> JobWithTasks(const Coordinator& core, const std::string& job_id,
                                                bool include_tasks);

// Thread-safe. `core` must outlive it.
class CoordinatorJobSource final : public report::JobSource {
 public:
  explicit CoordinatorJobSource(const Coordinator* core) : core_(core) {}
  absl::StatusOr<v1::GetJobResponse> GetJob(const std::string& job_id, bool include_tasks,
                                            bool wait_for_ready = false) override;
  absl::StatusOr<std::vector<v1::JobRecord>> ListJobs() override;
  absl::StatusOr<std::string> GetFactorBytes(const std::string& key, uint64_t max_bytes) override;

 private:
  const Coordinator* const core_;  // Not owned.
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_JOB_SOURCE_H_
