#include "coordinator/job_source.h"

#include "absl/strings/str_cat.h"

namespace moec::coordinator {

absl::StatusOr<v1::GetJobResponse> JobWithTasks(const Coordinator& core, const std::string& job_id,
                                                bool include_tasks) {
  absl::StatusOr<v1::JobRecord> job = core.GetJob(job_id);
  if (!job.ok()) return job.status();
  v1::GetJobResponse resp;
  *resp.mutable_job() = *std::move(job);
  if (include_tasks) {
    absl::StatusOr<std::vector<v1::TaskRecord>> tasks = core.GetTasks(job_id);
    if (!tasks.ok()) return tasks.status();
    for (auto& t : *tasks) *resp.add_tasks() = std::move(t);
  }
  return resp;
}

absl::StatusOr<v1::GetJobResponse> CoordinatorJobSource::GetJob(const std::string& job_id,
                                                                bool include_tasks, bool) {
  return JobWithTasks(*core_, job_id, include_tasks);
}

absl::StatusOr<std::vector<v1::JobRecord>> CoordinatorJobSource::ListJobs() {
  return core_->ListJobs();
}

absl::StatusOr<std::string> CoordinatorJobSource::GetFactorBytes(const std::string& key,
                                                                 uint64_t max_bytes) {
  storage::FactorStore* factors = core_->factors();
  if (factors == nullptr) return absl::FailedPreconditionError("the coordinator has no factor store");
  absl::StatusOr<storage::FactorInfo> info = factors->Stat(key);
  if (!info.ok()) return info.status();
  if (info->byte_size > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("factor ", key, " has ", info->byte_size,
                                                     " bytes, more than the ", max_bytes,
                                                     " a report reads"));
  }
  absl::StatusOr<storage::Factor> f = factors->Get(key);
  if (!f.ok()) return f.status();
  return std::move(f->data);
}

}  // namespace moec::coordinator
