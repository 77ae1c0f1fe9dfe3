// Prometheus metrics of moec-coordinator (prometheus-cpp): the coordinator core knows nothing of
// them; main() feeds CoordinatorStats snapshots in on every tick.
#ifndef MOEC_COORDINATOR_METRICS_H_
#define MOEC_COORDINATOR_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"

namespace moec::coordinator {

// Exposes /metrics over HTTP. Metric names:
//   moec_jobs{state}, moec_tasks{state}, moec_workers            (gauges)
//   moec_leases_granted_total, moec_tasks_completed_total, moec_tasks_reused_total,
//   moec_task_retries_total, moec_lease_expiries_total, moec_tasks_failed_total (counters)
// Thread-safe.
class MetricsExporter {
 public:
  // Errors: Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& listen);
  ~MetricsExporter();
  void Update(const CoordinatorStats& stats);

  // The current metrics in Prometheus text format (what /metrics serves).
  std::string Render() const;

 private:
  struct Impl;
  explicit MetricsExporter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moec::coordinator

#endif  // MOEC_COORDINATOR_METRICS_H_
