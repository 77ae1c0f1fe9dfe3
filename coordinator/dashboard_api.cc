#include "coordinator/dashboard_api.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "coordinator/job_source.h"
#include "coordinator/job_tasks.h"
#include "report/progress.h"
#include "report/report.h"
#include "report/report_files.h"

namespace moec::coordinator {
namespace {

constexpr size_t kEvents = 300;    // recent events a job's page shows
constexpr size_t kCachedJobs = 16;  // jobs whose report files are kept

nlohmann::json AsJson(const google::protobuf::Message& m) {
  return nlohmann::json::parse(report::MessageJson(m), nullptr, false);
}

// A job's record with its progress: done/total, failed, running tasks and, while it runs, an
// ETA from the compute its finished tasks took since it was submitted.
nlohmann::json Summary(const v1::GetJobResponse& job, int64_t now_ms) {
  const v1::JobRecord& r = job.job();
  const double elapsed = std::max<int64_t>(0, now_ms - r.submit_time_ms()) / 1000.0;
  const report::JobProgress p = report::SummarizeProgress(job, 0, 0, elapsed);
  nlohmann::json j = {{"job_id", r.job_id()}, {"name", r.name()},
                      {"state", v1::JobState_Name(r.state())},
                      {"submit_time_ms", r.submit_time_ms()}, {"end_time_ms", r.end_time_ms()},
                      {"error", r.error()}, {"workers", r.workers()}, {"total", p.total},
                      {"done", p.done}, {"failed", p.failed}, {"running", p.running}};
  j["eta_seconds"] = JobEnded(r.state()) ? -1.0 : p.eta_seconds;
  return j;
}

// One task for the page: its state, attempts, workers, progress, error and time breakdown.
nlohmann::json TaskJson(const v1::TaskRecord& t) {
  nlohmann::json j = {{"task_id", t.task_id()}, {"stage", t.stage_id()}, {"kind", t.kind()},
                      {"layer", t.layer()}, {"state", v1::TaskState_Name(t.state())},
                      {"attempts", t.attempts()}, {"lost_leases", t.lost_leases()},
                      {"workers", std::vector<std::string>(t.lease_workers().begin(), t.lease_workers().end())}, {"error", t.error()},
                      {"progress", t.progress()}, {"progress_message", t.progress_message()},
                      {"compute_ms", t.compute_ms()}, {"reused", t.reused()}};
  if (t.has_profile()) j["profile"] = AsJson(t.profile());
  return j;
}

// The job's stages in plan order, each with the stages it depends on (in plan order too).
nlohmann::json Stages(const v1::GetJobResponse& job) {
  std::map<std::string, size_t> index;  // stage -> position
  std::vector<std::string> names, kinds;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (index.emplace(t.stage_id(), names.size()).second) {
      names.push_back(t.stage_id());
      kinds.push_back(t.kind());
    }
  }
  std::map<std::string, size_t> stage_of;  // task id -> stage position
  for (const v1::TaskRecord& t : job.tasks()) stage_of[t.task_id()] = index[t.stage_id()];
  std::vector<std::set<size_t>> deps(names.size());
  for (const v1::TaskRecord& t : job.tasks()) {
    const size_t me = index[t.stage_id()];
    for (const std::string& d : t.deps()) {
      auto s = stage_of.find(d);
      if (s != stage_of.end() && s->second != me) deps[me].insert(s->second);
    }
  }
  nlohmann::json stages = nlohmann::json::array();
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<std::string> on;
    for (size_t d : deps[i]) on.push_back(names[d]);
    stages.push_back({{"stage", names[i]}, {"kind", kinds[i]}, {"deps", on}});
  }
  return stages;
}

int64_t DirectoryBytes(const std::string& dir) {
  std::error_code ec;
  int64_t bytes = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) bytes += static_cast<int64_t>(it->file_size(size_ec));
  }
  return bytes;
}

}  // namespace

nlohmann::json DashboardApi::Health() {
  const CoordinatorStats s = core_->Stats();
  nlohmann::json h = {{"uptime_seconds", absl::ToDoubleSeconds(absl::Now() - started_)},
                      {"started_ms", absl::ToUnixMillis(started_)},
                      {"workers", s.workers}, {"jobs", s.jobs_by_state},
                      {"tasks", s.tasks_by_state}, {"leases_granted", s.leases_granted},
                      {"tasks_completed", s.tasks_completed}, {"tasks_reused", s.tasks_reused},
                      {"retries", s.retries}, {"lease_expiries", s.lease_expiries},
                      {"tasks_failed", s.tasks_failed}, {"log_syncs", s.log_syncs},
                      {"log_sync_failures", s.log_sync_failures},
                      {"factor_bytes_stored", s.factor_bytes_stored},
                      {"factor_bytes_held", s.factor_bytes_held}};
  if (!store_dir_.empty()) {
    absl::MutexLock lock(&mu_);
    if (absl::Now() - store_measured_ > absl::Seconds(10)) {  // a walk of the RocksDB files
      store_bytes_ = DirectoryBytes(store_dir_);
      store_measured_ = absl::Now();
    }
    h["store_bytes"] = store_bytes_;
  }
  return h;
}

nlohmann::json DashboardApi::Overview() {
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  nlohmann::json jobs = nlohmann::json::array();
  std::vector<v1::JobRecord> records = core_->ListJobs();
  std::sort(records.begin(), records.end(), [](const v1::JobRecord& a, const v1::JobRecord& b) {
    return a.submit_time_ms() > b.submit_time_ms();
  });
  for (const v1::JobRecord& r : records) {
    absl::StatusOr<v1::GetJobResponse> job = JobWithTasks(*core_, r.job_id(), true);
    if (job.ok()) jobs.push_back(Summary(*job, now_ms));
  }
  nlohmann::json workers = nlohmann::json::array();
  for (const Coordinator::WorkerView& w : core_->ListWorkers()) {
    workers.push_back({{"worker_id", w.worker_id}, {"name", w.info.name}, {"gpu", w.info.gpu},
                       {"memory_bytes", w.info.memory_bytes},
                       {"device_memory_bytes", w.info.device_memory_bytes},
                       {"last_seen_ms", w.last_seen_ms}, {"tasks", w.tasks}});
  }
  return {{"now_ms", now_ms}, {"health", Health()}, {"jobs", jobs}, {"workers", workers}};
}

absl::StatusOr<std::map<std::string, std::string>> DashboardApi::Files(const v1::JobRecord& job) {
  {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(job.job_id());
    if (it != files_.end() && it->second.next_event_seq == job.next_event_seq()) return it->second.files;
  }
  CoordinatorJobSource source(core_);
  absl::StatusOr<std::map<std::string, std::string>> files =
      report::BuildReportFiles(source, job.job_id());
  if (!files.ok()) return files.status();
  absl::MutexLock lock(&mu_);
  if (files_.size() >= kCachedJobs && !files_.count(job.job_id())) files_.erase(files_.begin());
  files_[job.job_id()] = {job.next_event_seq(), *files};
  return files;
}

absl::StatusOr<nlohmann::json> DashboardApi::Job(const std::string& job_id) {
  absl::StatusOr<v1::GetJobResponse> job = JobWithTasks(*core_, job_id, true);
  if (!job.ok()) return job.status();
  absl::StatusOr<std::map<std::string, std::string>> files = Files(job->job());
  if (!files.ok()) return files.status();
  nlohmann::json tasks = nlohmann::json::array();
  for (const v1::TaskRecord& t : job->tasks()) tasks.push_back(TaskJson(t));
  const int64_t next = job->job().next_event_seq();
  absl::StatusOr<std::vector<v1::JobEvent>> events = core_->ReadEvents(
      job_id, std::max<int64_t>(1, next - static_cast<int64_t>(kEvents)), kEvents);
  nlohmann::json ev = nlohmann::json::array();
  if (events.ok()) {
    for (const v1::JobEvent& e : *events) ev.push_back(nlohmann::json::parse(report::EventJson(e)));
  }
  nlohmann::json figures = nlohmann::json::array();
  for (const auto& [name, content] : *files) {
    if (absl::EndsWith(name, ".svg")) figures.push_back(name);
  }
  return nlohmann::json{{"job", Summary(*job, absl::ToUnixMillis(absl::Now()))},
                        {"stages", Stages(*job)}, {"tasks", tasks}, {"events", ev},
                        {"report", nlohmann::json::parse((*files)["report.json"])},
                        {"figures", figures}};
}

absl::StatusOr<std::string> DashboardApi::Figure(const std::string& job_id, const std::string& name) {
  absl::StatusOr<v1::JobRecord> job = core_->GetJob(job_id);
  if (!job.ok()) return job.status();
  absl::StatusOr<std::map<std::string, std::string>> files = Files(*job);
  if (!files.ok()) return files.status();
  auto it = files->find(name);
  if (it == files->end() || !absl::EndsWith(name, ".svg")) {
    return absl::NotFoundError(absl::StrCat("job ", job_id, " has no figure ", name));
  }
  return it->second;
}

}  // namespace moec::coordinator
