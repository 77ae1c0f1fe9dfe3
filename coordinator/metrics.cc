#include "coordinator/metrics.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace moec::coordinator {

struct MetricsExporter::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;  // null when only rendering (tests)
  prometheus::Family<prometheus::Gauge>* jobs = nullptr;
  prometheus::Family<prometheus::Gauge>* tasks = nullptr;
  prometheus::Gauge* workers = nullptr;
  std::map<std::string, prometheus::Counter*> counters;
  absl::Mutex mu;
  CoordinatorStats last ABSL_GUARDED_BY(mu);  // counters are advanced by the difference
};

MetricsExporter::MetricsExporter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsExporter::~MetricsExporter() = default;

absl::StatusOr<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(const std::string& listen) {
  auto impl = std::make_unique<Impl>();
  if (!listen.empty()) {
    try {
      impl->exposer = std::make_unique<prometheus::Exposer>(listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", listen, ": ", e.what()));
    }
    impl->exposer->RegisterCollectable(impl->registry);
  }
  impl->jobs = &prometheus::BuildGauge().Name("moec_jobs").Help("Jobs by state").Register(*impl->registry);
  impl->tasks = &prometheus::BuildGauge().Name("moec_tasks").Help("Tasks by state").Register(*impl->registry);
  impl->workers = &prometheus::BuildGauge().Name("moec_workers").Help("Registered workers")
                       .Register(*impl->registry).Add({});
  for (const char* name : {"moec_leases_granted_total", "moec_tasks_completed_total",
                           "moec_tasks_reused_total", "moec_task_retries_total",
                           "moec_lease_expiries_total", "moec_tasks_failed_total",
                           "moec_factor_bytes_stored_total", "moec_factor_bytes_held_total"}) {
    impl->counters[name] =
        &prometheus::BuildCounter().Name(name).Help(name).Register(*impl->registry).Add({});
  }
  return std::unique_ptr<MetricsExporter>(new MetricsExporter(std::move(impl)));
}

void MetricsExporter::Update(const CoordinatorStats& s) {
  for (const auto& [state, n] : s.jobs_by_state) impl_->jobs->Add({{"state", state}}).Set(n);
  for (const auto& [state, n] : s.tasks_by_state) impl_->tasks->Add({{"state", state}}).Set(n);
  impl_->workers->Set(static_cast<double>(s.workers));
  absl::MutexLock lock(&impl_->mu);
  const CoordinatorStats& l = impl_->last;
  auto advance = [&](const char* name, int64_t now, int64_t before) {
    if (now > before) impl_->counters[name]->Increment(static_cast<double>(now - before));
  };
  advance("moec_leases_granted_total", s.leases_granted, l.leases_granted);
  advance("moec_tasks_completed_total", s.tasks_completed, l.tasks_completed);
  advance("moec_tasks_reused_total", s.tasks_reused, l.tasks_reused);
  advance("moec_task_retries_total", s.retries, l.retries);
  advance("moec_lease_expiries_total", s.lease_expiries, l.lease_expiries);
  advance("moec_tasks_failed_total", s.tasks_failed, l.tasks_failed);
  advance("moec_factor_bytes_stored_total", s.factor_bytes_stored, l.factor_bytes_stored);
  advance("moec_factor_bytes_held_total", s.factor_bytes_held, l.factor_bytes_held);
  impl_->last = s;
}

std::string MetricsExporter::Render() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

}  // namespace moec::coordinator
