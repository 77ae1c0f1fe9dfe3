// What the dashboard (coordinator/dashboard.h) shows, as JSON built from the coordinator's own
// state: every job with its progress and ETA, the workers, the coordinator's health; one job's
// tasks, recent events and report; the job's figures. Reports and figures come from report/,
// the code `moec report` uses. docs/operations.md "Dashboard" describes the fields.
#ifndef MOEC_COORDINATOR_DASHBOARD_API_H_
#define MOEC_COORDINATOR_DASHBOARD_API_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/coordinator.h"
#include "nlohmann/json.hpp"

namespace moec::coordinator {

// Thread-safe. `core` must outlive it.
class DashboardApi {
 public:
  // `store_dir`: the RocksDB directory whose size the health section reports ("" leaves it out).
  DashboardApi(Coordinator* core, std::string store_dir, absl::Time started)
      : core_(core), store_dir_(std::move(store_dir)), started_(started) {}

  // {"now_ms", "health": {...}, "jobs": [summary, newest first], "workers": [...]}.
  nlohmann::json Overview();
  // {"job": summary, "stages": [{"stage", "kind", "deps"}], "tasks": [...], "events": [the
  // last 300], "report": report/report.h's JSON, "figures": [file names]}.
  // Errors: NotFound for an unknown job; those of reading its outputs.
  absl::StatusOr<nlohmann::json> Job(const std::string& job_id);
  // The SVG figure `name` of the job. Errors: NotFound for an unknown job or figure.
  absl::StatusOr<std::string> Figure(const std::string& job_id, const std::string& name);

 private:
  // The job's report files, rebuilt when the job has new events since they were built.
  absl::StatusOr<std::map<std::string, std::string>> Files(const v1::JobRecord& job);
  nlohmann::json Health();

  Coordinator* const core_;  // Not owned.
  const std::string store_dir_;
  const absl::Time started_;
  absl::Mutex mu_;
  struct Built {
    int64_t next_event_seq = -1;
    std::map<std::string, std::string> files;
  };
  std::map<std::string, Built> files_ ABSL_GUARDED_BY(mu_);  // by job id
  int64_t store_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time store_measured_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_DASHBOARD_API_H_
