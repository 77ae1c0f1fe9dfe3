// Job-facing half of the Coordinator: creation and recovery, submission, queries, events, cancel
// and resume, and the commit and dependency machinery both halves use. The worker-facing half is
// in coordinator_leasing.cc.
#include "coordinator/coordinator.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/recipe/recipe.h"
#include "common/status_macros.h"
#include "common/task_id.h"
#include "coordinator/planner.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "plan/job_plan.h"

namespace moec::coordinator {

namespace {

// An existing output is refused unless this job wrote it (its export marker names the job) or
// the submission says `overwrite`.
absl::Status CheckOutput(const std::string& output, const std::string& job_id, bool overwrite) {
  std::error_code ec;
  if (overwrite || !std::filesystem::exists(output, ec)) return absl::OkStatus();
  std::ifstream in(std::filesystem::path(output) / "moec_export.json");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json marker = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  const std::string writer = marker.is_object() ? marker.value("job_id", "") : "";
  if (writer == job_id) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "output ", output, " exists (",
      writer.empty() ? "not written by moec" : "written by job " + writer,
      "); pass --overwrite to replace it when the job succeeds, or choose another output "
      "(--set output=DIR)"));
}

// Jobs stored before JobRecord.overwrite and TaskRecord.inputs existed: `overwrite` was a key of
// the stored recipe JSON, and inputs were derived at every grant.
void UpgradeStoredJob(JobTasks& job) {
  nlohmann::json recipe = nlohmann::json::parse(job.record.recipe_json(), nullptr, false);
  if (recipe.is_object() && recipe.contains("overwrite")) {
    job.record.set_overwrite(recipe.value("overwrite", false));
    recipe.erase("overwrite");
    job.record.set_recipe_json(recipe.dump());
  }
  const bool any_deps = std::any_of(job.tasks.begin(), job.tasks.end(),
                                    [](const v1::TaskRecord& t) { return t.deps_size() > 0; });
  const bool any_inputs = std::any_of(job.tasks.begin(), job.tasks.end(),
                                      [](const v1::TaskRecord& t) { return t.inputs_size() > 0; });
  if (any_deps && !any_inputs) AssignInputs(&job.tasks);
}

}  // namespace

absl::Status CoordinatorOptions::Validate() const {
  if (retry.max_attempts < 1) return absl::InvalidArgumentError("retry.max_attempts must be >= 1");
  if (retry.max_lost_leases < 1) {
    return absl::InvalidArgumentError("retry.max_lost_leases must be >= 1");
  }
  if (retry.lease_ms <= 0 || worker_timeout_ms <= 0 || poll_window_ms <= 0) {
    return absl::InvalidArgumentError("lease, worker timeout and poll window must be positive");
  }
  if (log_sync_interval_ms < 0 || log_sync_interval_ms > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_sync_interval_ms must be in [0, 10000], not ", log_sync_interval_ms));
  }
  return absl::OkStatus();
}

int64_t Coordinator::NowMs() const { return absl::ToUnixMillis(clock_()); }

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(JobStore* store,
                                                                 CoordinatorOptions options,
                                                                 Clock clock,
                                                                 storage::FactorStore* factors) {
  MOEC_RETURN_IF_ERROR(options.Validate());
  auto c = std::unique_ptr<Coordinator>(
      new Coordinator(store, std::move(options), std::move(clock), factors));
  MOEC_ASSIGN_OR_RETURN(std::vector<v1::JobRecord> records, store->ListJobs());
  std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) {
    return a.submit_time_ms() != b.submit_time_ms() ? a.submit_time_ms() < b.submit_time_ms()
                                                    : a.job_id() < b.job_id();
  });
  absl::MutexLock lock(&c->mu_);
  const int64_t now = c->NowMs();
  for (auto& r : records) {
    JobTasks job;
    job.record = std::move(r);
    MOEC_ASSIGN_OR_RETURN(job.tasks, store->ListTasks(job.record.job_id()));
    UpgradeStoredJob(job);
    job.Index();
    for (v1::TaskRecord& t : job.tasks) {
      if (t.state() != v1::TASK_LEASED) continue;
      t.set_lease_deadline_ms(now + c->options_.retry.lease_ms);
      // Its workers get their ids back when they register again (WorkerRegistry::Register).
      for (const std::string& w : t.lease_workers()) c->workers_.ReserveId(w);
    }
    const std::string id = job.record.job_id();
    c->job_order_.push_back(id);
    c->jobs_.emplace(id, std::move(job));
  }
  LOG(INFO) << "coordinator: recovered " << c->jobs_.size() << " jobs";
  // Syncs the log in the background (unless durable: then completions sync themselves) and for
  // CompleteTaskAsync's completions that wait for a sync.
  c->syncer_ = std::make_unique<storage::BackgroundSync>(
      [store] { return store->SyncLog(); }, absl::Milliseconds(c->options_.log_sync_interval_ms));
  return c;
}

absl::Status Coordinator::CommitLocked(JobTasks& job, std::vector<v1::TaskRecord*> changed,
                                       std::vector<v1::JobEvent> events,
                                       const storage::KvWriteBatch* extra,
                                       storage::Durability durability) {
  job.NoteChanged(changed);
  if (deferred_batch_ != nullptr) {
    MOEC_RETURN_IF_ERROR(store_->PrepareCommit(job.record, changed, std::move(events), deferred_batch_));
    if (extra != nullptr) deferred_batch_->Append(*extra);
    deferred_sync_ = deferred_sync_ || durability == storage::Durability::kSync;
    return absl::OkStatus();
  }
  MOEC_RETURN_IF_ERROR(store_->Commit(job.record, changed, std::move(events), extra, durability));
  events_cv_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<JobTasks*> Coordinator::FindJobLocked(absl::string_view job_id) {
  auto it = jobs_.find(std::string(job_id));
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return &it->second;
}

absl::StatusOr<v1::TaskRecord*> Coordinator::FindTaskLocked(absl::string_view task_id,
                                                            JobTasks** job) {
  MOEC_ASSIGN_OR_RETURN(*job, FindJobLocked(TaskId::JobOf(task_id)));
  v1::TaskRecord* t = (*job)->Find(task_id);
  if (t == nullptr) return absl::NotFoundError(absl::StrCat("no task ", task_id));
  return t;
}

absl::Status Coordinator::AdvanceLocked(JobTasks& job, std::vector<v1::TaskRecord*>* changed,
                                        std::vector<v1::JobEvent>* events,
                                        const v1::TaskRecord* done) {
  auto deps_done = [&](const v1::TaskRecord& t) {
    for (const auto& d : t.deps()) {
      const v1::TaskRecord* dep = job.Find(d);
      if (dep == nullptr || dep->state() != v1::TASK_DONE) return false;
    }
    return true;
  };
  // Tasks to examine: dependents of newly finished tasks (or everything, without `done`).
  std::vector<size_t> frontier;
  if (done != nullptr) {
    frontier = job.dependents[job.PositionOf(*done)];
  } else {
    for (size_t i = 0; i < job.tasks.size(); ++i) frontier.push_back(i);
  }
  while (!frontier.empty()) {
    const size_t i = frontier.back();
    frontier.pop_back();
    v1::TaskRecord* t = &job.tasks[i];
    if (t->state() != v1::TASK_BLOCKED || !deps_done(*t)) continue;
    t->set_state(v1::TASK_READY);
    changed->push_back(t);
    MOEC_ASSIGN_OR_RETURN(std::optional<std::string> prior,
                          store_->FindDoneFingerprint(t->fingerprint()));
    if (prior.has_value()) {  // identical work finished before: reuse it, and go on
      t->set_state(v1::TASK_DONE);
      t->set_reused(true);
      ++counters_.tasks_reused;
      events->push_back(EventLocked(v1::EVENT_TASK_REUSED, t->task_id(), *prior));
      frontier.insert(frontier.end(), job.dependents[i].begin(), job.dependents[i].end());
    }
  }
  const v1::JobState derived = DeriveStateLocked(job, *changed, done != nullptr);
  if (job.record.state() != v1::JOB_CANCELLED && derived != job.record.state()) {
    job.record.set_state(derived);
    if (derived == v1::JOB_SUCCEEDED || derived == v1::JOB_FAILED) {
      job.record.set_end_time_ms(NowMs());
      events->push_back(EventLocked(
          derived == v1::JOB_SUCCEEDED ? v1::EVENT_JOB_SUCCEEDED : v1::EVENT_JOB_FAILED, "",
          job.record.error()));
      LOG(INFO) << "job=" << job.record.job_id() << " state=" << v1::JobState_Name(derived);
    }
  }
  return absl::OkStatus();
}

v1::JobState Coordinator::DeriveStateLocked(JobTasks& job,
                                            const std::vector<v1::TaskRecord*>& changed,
                                            bool completion) {
  if (!completion || job.record.state() != v1::JOB_RUNNING) {
    // Failures, expiries, cancellation, resumption, recovery: rare; every task is looked at and
    // the prefix starts again (those paths may move DONE tasks back, e.g. a corrupt output's
    // producer re-run).
    job.done_prefix = 0;
    return DeriveJobState(job.tasks);
  }
  // A completion of a running job adds no failure (a failed task would have failed the job) and
  // the job has started: it stays RUNNING until every task is DONE. Tasks below done_prefix were
  // DONE when last looked at; one this change moved away from DONE lowers it.
  for (const v1::TaskRecord* t : changed) {
    const size_t i = job.PositionOf(*t);
    if (i < job.done_prefix && t->state() != v1::TASK_DONE) job.done_prefix = i;
  }
  while (job.done_prefix < job.tasks.size() &&
         job.tasks[job.done_prefix].state() == v1::TASK_DONE) {
    ++job.done_prefix;  // amortized O(1) per completion instead of a scan of every task
  }
  return job.done_prefix == job.tasks.size() ? v1::JOB_SUCCEEDED : v1::JOB_RUNNING;
}

namespace {

// Each task's planned peak GPU memory (plan/job_plan.h): the scheduler leases it only to GPUs
// that large. A plan that cannot be made (it reads the model's config.json and the evaluation
// text's size) leaves them unbounded, and says so.
void SetDeviceMemory(const recipe::Recipe& r, std::vector<v1::TaskRecord>* tasks) {
  absl::StatusOr<plan::JobPlan> p = plan::PlanRecipe(r);
  if (!p.ok()) {
    LOG(WARNING) << "job " << r.name << ": no memory plan, GPU workers are not bounded: " << p.status();
    return;
  }
  std::map<std::string, int64_t> by_stage;
  for (const plan::PlannedStage& s : p->stages) by_stage[s.id] = s.device_memory_bytes;
  for (v1::TaskRecord& t : *tasks) t.set_device_memory_bytes(by_stage[t.stage_id()]);
}

}  // namespace

absl::StatusOr<SubmitResult> Coordinator::SubmitJob(const std::string& recipe_yaml,
                                                    const std::string& source_path,
                                                    const std::vector<std::string>& overrides,
                                                    bool overwrite) {
  // Everything that reads files or plans runs without the lock.
  recipe::RecipeOptions ropts;
  ropts.allowed_roots = options_.allowed_roots;
  MOEC_ASSIGN_OR_RETURN(recipe::Recipe r, recipe::ParseRecipe(recipe_yaml, source_path, overrides, ropts));
  MOEC_ASSIGN_OR_RETURN(ModelShape shape, ReadModelShape(r.model));
  MOEC_ASSIGN_OR_RETURN(std::string inputs, FingerprintJobInputs(r));
  const std::string fingerprint = JobFingerprint(r, inputs);
  const std::string job_id = absl::StrCat(r.name, "-", fingerprint.substr(0, 10));
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) {
      if (job.record.fingerprint() == fingerprint) return SubmitResult{job.record, true};
    }
  }
  MOEC_RETURN_IF_ERROR(CheckOutput(r.output, job_id, overwrite));
  JobTasks job;
  MOEC_ASSIGN_OR_RETURN(job.tasks, PlanJob(r, shape, job_id, inputs));
  SetDeviceMemory(r, &job.tasks);
  job.record.set_job_id(job_id);
  job.record.set_name(r.name);
  job.record.set_fingerprint(fingerprint);
  job.record.set_recipe_json(r.CanonicalJson());
  job.record.set_overwrite(overwrite);
  job.record.set_state(v1::JOB_PENDING);
  job.record.set_workers(r.workers);
  job.Index();
  absl::MutexLock lock(&mu_);
  for (const auto& [id, existing] : jobs_) {  // an identical submission that won the race
    if (existing.record.fingerprint() == fingerprint) return SubmitResult{existing.record, true};
  }
  job.record.set_submit_time_ms(NowMs());
  std::vector<v1::JobEvent> events = {EventLocked(v1::EVENT_JOB_SUBMITTED, "",
                                                  absl::StrCat(job.tasks.size(), " tasks"))};
  return AddJobLocked(std::move(job), std::move(events));
}

absl::StatusOr<SubmitResult> Coordinator::AddJobLocked(JobTasks job,
                                                       std::vector<v1::JobEvent> events) {
  // Tasks whose fingerprints are already done (an earlier job) are reused at once.
  for (auto& t : job.tasks) {
    if (t.state() != v1::TASK_READY) continue;
    MOEC_ASSIGN_OR_RETURN(std::optional<std::string> done, store_->FindDoneFingerprint(t.fingerprint()));
    if (done.has_value()) {
      t.set_state(v1::TASK_DONE);
      t.set_reused(true);
      events.push_back(EventLocked(v1::EVENT_TASK_REUSED, t.task_id(), *done));
    }
  }
  std::vector<v1::TaskRecord*> ignored;
  MOEC_RETURN_IF_ERROR(AdvanceLocked(job, &ignored, &events));
  MOEC_RETURN_IF_ERROR(store_->CreateJob(job.record, job.tasks, std::move(events)));
  events_cv_.SignalAll();
  const std::string job_id = job.record.job_id();
  LOG(INFO) << "job=" << job_id << " submitted, " << job.tasks.size() << " tasks";
  job_order_.push_back(job_id);
  JobTasks& stored = jobs_.emplace(job_id, std::move(job)).first->second;
  stored.RebuildReady();
  const SubmitResult result{stored.record, false};
  WakeWaitersLocked();
  return result;
}

absl::StatusOr<v1::JobRecord> Coordinator::GetJob(absl::string_view job_id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(std::string(job_id));
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return it->second.record;
}

std::vector<v1::JobRecord> Coordinator::ListJobs() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::JobRecord> out;
  for (const auto& id : job_order_) out.push_back(jobs_.at(id).record);
  return out;
}

absl::StatusOr<std::vector<v1::TaskRecord>> Coordinator::GetTasks(absl::string_view job_id) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(std::string(job_id));
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return it->second.tasks;
}

absl::StatusOr<std::vector<v1::JobEvent>> Coordinator::ReadEvents(absl::string_view job_id,
                                                                  int64_t from_seq, size_t limit,
                                                                  absl::Duration timeout,
                                                                  bool* ended) {
  {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      MOEC_ASSIGN_OR_RETURN(JobTasks * job, FindJobLocked(job_id));
      const bool over = job->Ended();
      if (ended != nullptr) *ended = over;
      if (job->record.next_event_seq() > from_seq || over || timeout <= absl::ZeroDuration()) break;
      if (events_cv_.WaitWithDeadline(&mu_, deadline)) break;  // timed out
    }
  }
  return store_->ReadEvents(job_id, from_seq, limit);
}

absl::Status Coordinator::CancelJob(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  MOEC_ASSIGN_OR_RETURN(JobTasks * job, FindJobLocked(job_id));
  if (job->Ended()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " already ended: ", v1::JobState_Name(job->record.state())));
  }
  std::vector<v1::TaskRecord*> changed;
  for (auto& t : job->tasks) {
    if (t.state() == v1::TASK_READY || t.state() == v1::TASK_BLOCKED || t.state() == v1::TASK_LEASED) {
      staging_.Discard(t.task_id());
      t.set_state(v1::TASK_CANCELLED);
      changed.push_back(&t);
    }
  }
  job->record.set_state(v1::JOB_CANCELLED);
  job->record.set_end_time_ms(NowMs());
  return CommitLocked(*job, changed, {EventLocked(v1::EVENT_JOB_CANCELLED, "", "")});
}

absl::Status Coordinator::ResumeJob(absl::string_view job_id) {
  absl::MutexLock lock(&mu_);
  MOEC_ASSIGN_OR_RETURN(JobTasks * job, FindJobLocked(job_id));
  const v1::JobState s = job->record.state();
  if (s != v1::JOB_FAILED && s != v1::JOB_CANCELLED) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is ", v1::JobState_Name(s), "; only failed or cancelled jobs resume"));
  }
  std::vector<v1::TaskRecord*> changed;
  for (auto& t : job->tasks) {
    if (t.state() == v1::TASK_FAILED || t.state() == v1::TASK_CANCELLED) {
      t.set_state(v1::TASK_BLOCKED);  // AdvanceLocked decides between BLOCKED and READY
      t.set_attempts(0);
      t.set_lost_leases(0);
      t.set_not_before_ms(0);
      t.clear_lease_workers();
      changed.push_back(&t);
    }
  }
  for (auto& t : job->tasks) {
    if (t.state() == v1::TASK_BLOCKED && t.deps_size() == 0) t.set_state(v1::TASK_READY);
  }
  job->record.set_state(v1::JOB_RUNNING);
  job->record.set_error("");
  job->record.set_end_time_ms(0);
  std::vector<v1::JobEvent> events = {EventLocked(v1::EVENT_JOB_RESUMED, "", "")};
  MOEC_RETURN_IF_ERROR(AdvanceLocked(*job, &changed, &events));
  MOEC_RETURN_IF_ERROR(CommitLocked(*job, changed, std::move(events)));
  job->RebuildReady();
  WakeWaitersLocked();
  return absl::OkStatus();
}

}  // namespace moec::coordinator
