// Worker-facing half of the Coordinator: registration and heartbeats, scheduling and leasing,
// progress, task outputs, completion, failure and release, lease expiry, and the gang
// rendezvous namespace. The job-facing half is in coordinator.cc.
#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/task_id.h"
#include "coordinator/coordinator.h"
#include "glog/logging.h"

namespace moec::coordinator {
namespace {

bool HeldBy(const v1::TaskRecord& t, absl::string_view worker_id) {
  return std::find(t.lease_workers().begin(), t.lease_workers().end(), worker_id) !=
         t.lease_workers().end();
}

}  // namespace

std::string Coordinator::RegisterWorker(const WorkerInfo& info) {
  absl::MutexLock lock(&mu_);
  std::string id = workers_.Register(info, NowMs());
  if (!info.previous_id.empty() && id == info.previous_id) {
    LOG(INFO) << "worker=" << id << " registered again with its id (its leases stay its own)";
  } else {
    LOG(INFO) << "worker=" << id << " registered";
  }
  return id;
}

absl::StatusOr<std::vector<std::string>> Coordinator::Heartbeat(
    absl::string_view worker_id, absl::Span<const std::string> running) {
  absl::MutexLock lock(&mu_);
  const int64_t now = NowMs();
  if (!workers_.Touch(worker_id, now)) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  std::vector<std::string> cancelled;
  for (const std::string& tid : running) {  // O(running), not O(stored tasks)
    JobTasks* job = nullptr;
    absl::StatusOr<v1::TaskRecord*> t = FindTaskLocked(tid, &job);
    if (!t.ok() || !HeldBy(**t, worker_id)) continue;
    if ((*t)->state() == v1::TASK_LEASED) {
      (*t)->set_lease_deadline_ms(now + options_.retry.lease_ms);  // in memory; re-derived on restart
    } else if ((*t)->state() == v1::TASK_CANCELLED) {
      cancelled.push_back((*t)->task_id());
    }
  }
  return cancelled;
}

absl::Status Coordinator::ScheduleLocked(absl::string_view preferred) {
  const int64_t now = NowMs();
  std::vector<WorkerSlots> idle = workers_.Idle(now, preferred);
  if (idle.empty()) return absl::OkStatus();
  const std::vector<WorkerSlots> cluster = workers_.Cluster();
  std::vector<const v1::TaskRecord*> ready;
  // Tasks no registered worker could ever run (a GPU plan larger than every GPU, no CPU worker):
  // failed for good, with the figures, rather than left waiting.
  struct Unfit {
    JobTasks* job;
    v1::TaskRecord* task;
    absl::Status why;
  };
  std::vector<Unfit> unfit;
  for (const auto& id : job_order_) {
    JobTasks& job = jobs_.at(id);
    if (!job.Active()) continue;
    for (auto it = job.ready.begin(); it != job.ready.end();) {
      v1::TaskRecord& t = job.tasks[*it];
      if (t.state() != v1::TASK_READY) {
        it = job.ready.erase(it);  // stale entry
        continue;
      }
      if (absl::Status fits = CheckSomeWorkerFits(t, cluster); !fits.ok()) {
        unfit.push_back({&job, &t, std::move(fits)});
      } else {
        ready.push_back(&t);
      }
      ++it;
    }
  }
  for (const Unfit& u : unfit) {
    if (u.task->state() != v1::TASK_READY) continue;  // an earlier failure ended its job
    MOEC_RETURN_IF_ERROR(
        ApplyFailureLocked(*u.job, *u.task, "(scheduler)", u.why, /*retriable=*/false));
  }
  for (const Assignment& a : Schedule(ready, idle, now, cluster, NearLocked(ready))) {
    JobTasks* job = nullptr;
    MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, FindTaskLocked(a.task_id, &job));
    MOEC_RETURN_IF_ERROR(GrantLocked(*job, *t, a.workers, now));
  }
  return absl::OkStatus();
}

std::map<std::string, std::vector<std::string>> Coordinator::NearLocked(
    absl::Span<const v1::TaskRecord* const> ready) const {
  std::map<std::string, std::vector<std::string>> near;
  for (const v1::TaskRecord* t : ready) {
    if (t->layer() <= 0) continue;
    auto job = jobs_.find(t->job_id());
    if (job == jobs_.end()) continue;
    // The previous layer's tasks it reads: their gangs keep the hidden states in their stores.
    for (const std::string& id : t->inputs()) {
      const v1::TaskRecord* in = job->second.Find(id);
      if (in == nullptr || in->layer() != t->layer() - 1 || in->state() != v1::TASK_DONE) continue;
      std::vector<std::string>& out = near[t->task_id()];
      out.insert(out.end(), in->lease_workers().begin(), in->lease_workers().end());
    }
  }
  return near;
}

absl::Status Coordinator::GrantLocked(JobTasks& job, v1::TaskRecord& t,
                                      const std::vector<std::string>& workers, int64_t now) {
  GrantLease(t, workers, now, options_.retry);
  ++counters_.leases_granted;
  if (job.record.state() == v1::JOB_PENDING) job.record.set_state(v1::JOB_RUNNING);
  MOEC_RETURN_IF_ERROR(CommitLocked(
      job, {&t},
      {EventLocked(v1::EVENT_TASK_LEASED, t.task_id(),
                   absl::StrCat("attempt ", t.attempts(), " on ", absl::StrJoin(workers, ",")))},
      /*extra=*/nullptr, storage::Durability::kBuffered));
  // The planner chose the tasks it reads (TaskRecord.inputs); the lease carries their
  // fingerprints, which key their outputs.
  std::map<std::string, std::string> inputs;
  for (const std::string& id : t.inputs()) {
    if (const v1::TaskRecord* in = job.Find(id); in != nullptr) inputs[id] = in->fingerprint();
  }
  for (size_t rank = 0; rank < workers.size(); ++rank) {
    workers_.Deliver(workers[rank],
                     LeasedTask{t, static_cast<int>(rank), workers, job.record.recipe_json(),
                                job.record.overwrite(), inputs});
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<LeasedTask>> Coordinator::LeaseTask(absl::string_view worker_id,
                                                                absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  const std::string id(worker_id);
  const int64_t now = NowMs();
  if (!workers_.Touch(id, now)) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  if (!workers_.HasMail(id)) {
    workers_.WaitUntil(id, now + options_.poll_window_ms);
    MOEC_RETURN_IF_ERROR(ScheduleLocked());
  }
  if (!workers_.HasMail(id) && wait > absl::ZeroDuration()) {
    // Long poll: completions and submissions schedule (WakeWaitersLocked) while we wait.
    auto ready = [this, &id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return long_polls_ended_ || !workers_.Contains(id) || workers_.HasMail(id);
    };
    workers_.BeginLongPoll();
    mu_.AwaitWithTimeout(absl::Condition(&ready), std::min(wait, absl::Seconds(2)));
    workers_.EndLongPoll();
    if (!workers_.Contains(id)) return absl::NotFoundError(absl::StrCat("worker ", id, " timed out"));
  }
  return workers_.TakeMail(id, NowMs());
}

void Coordinator::EndLongPolls() {
  absl::MutexLock lock(&mu_);
  long_polls_ended_ = true;  // the waiting polls' condition holds: they return
}

absl::StatusOr<v1::TaskRecord*> Coordinator::HeldTaskLocked(absl::string_view worker_id,
                                                            absl::string_view task_id,
                                                            JobTasks** job) {
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, FindTaskLocked(task_id, job));
  if (t->state() != v1::TASK_LEASED || !HeldBy(*t, worker_id)) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_id, " does not hold task ",
                                                      task_id, " (", v1::TaskState_Name(t->state()),
                                                      ")"));
  }
  return t;
}

absl::StatusOr<bool> Coordinator::ReportProgress(absl::string_view worker_id,
                                                 absl::string_view task_id, double fraction,
                                                 absl::string_view message) {
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, FindTaskLocked(task_id, &job));
  const bool holder = HeldBy(*t, worker_id);
  if (holder && t->state() == v1::TASK_CANCELLED) return true;
  if (!holder || t->state() != v1::TASK_LEASED) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_id, " does not hold task ", task_id));
  }
  t->set_progress(std::clamp(fraction, 0.0, 1.0));
  t->set_progress_message(std::string(message.substr(0, 256)));
  t->set_lease_deadline_ms(NowMs() + options_.retry.lease_ms);
  return false;
}

absl::Status Coordinator::CompleteTask(absl::string_view worker_id, absl::string_view task_id,
                                       const storage::KvWriteBatch& outputs, int64_t compute_ms,
                                       std::optional<LeasedTask>* next,
                                       const v1::TaskProfile& profile) {
  std::optional<LeasedTask> granted;  // *next is written last: task_id may point into it
  bool ended = false;
  absl::Status s = CompleteTaskUnsynced(worker_id, task_id, outputs, compute_ms, profile,
                                        next != nullptr ? &granted : nullptr, &ended);
  // The completion was logged (kBuffered) under mu_, in commit order: it survives a crash of
  // this process from here on. It is synced after mu_ is released — by the background syncer
  // (the reply does not wait), or, for durable completions and for the completion that ended
  // its job, here, by a log sync shared with the completions other workers logged meanwhile.
  // What others saw before the sync (a dependent leased, an event streamed) is lost with it in
  // a machine crash, never kept without it: the log is a prefix.
  if (s.ok()) {
    if (WaitsForSync(ended)) {
      s = store_->SyncLog();
    } else {
      syncer_->Kick();
    }
  }
  // On an error a granted task is dropped: its lease expires (heartbeats do not name it).
  if (next != nullptr) *next = s.ok() ? std::move(granted) : std::nullopt;
  return s;
}

void Coordinator::CompleteTaskAsync(absl::string_view worker_id, absl::string_view task_id,
                                    int64_t compute_ms, const v1::TaskProfile& profile,
                                    bool lease_next, CompletionDone done) {
  std::optional<LeasedTask> granted;
  bool ended = false;
  absl::Status s = CompleteTaskUnsynced(worker_id, task_id, {}, compute_ms, profile,
                                        lease_next ? &granted : nullptr, &ended);
  if (!s.ok()) return done(s, std::nullopt);
  if (!WaitsForSync(ended)) {
    syncer_->Kick();
    return done(absl::OkStatus(), std::move(granted));
  }
  // The same sync CompleteTask waits for, shared with the completions logged meanwhile; the
  // syncer's thread waits instead of the caller's. On a failed sync the granted task is dropped
  // (its lease expires), as in CompleteTask.
  syncer_->AfterSync([done = std::move(done), granted = std::move(granted)](absl::Status synced) mutable {
    done(synced, synced.ok() ? std::move(granted) : std::nullopt);
  });
}

absl::Status Coordinator::CompleteTaskUnsynced(absl::string_view worker_id,
                                               absl::string_view task_id,
                                               const storage::KvWriteBatch& outputs,
                                               int64_t compute_ms,
                                               const v1::TaskProfile& profile,
                                               std::optional<LeasedTask>* next, bool* ended) {
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  if (t->lease_workers(0) != worker_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("only rank 0 (", t->lease_workers(0), ") completes task ", task_id));
  }
  t->set_state(v1::TASK_DONE);
  t->set_lease_deadline_ms(0);
  t->set_error("");
  t->set_compute_ms(std::max<int64_t>(0, compute_ms));
  if (profile.phases_size() > 0) {
    *t->mutable_profile() = profile;
  } else {
    t->clear_profile();
  }
  ++counters_.tasks_completed;
  storage::KvWriteBatch batch = outputs;
  JobStore::AddDoneFingerprint(*t, &batch);
  std::vector<v1::TaskRecord*> changed = {t};
  std::vector<v1::JobEvent> events = {
      EventLocked(v1::EVENT_TASK_DONE, t->task_id(), std::string(worker_id))};
  MOEC_RETURN_IF_ERROR(AdvanceLocked(*job, &changed, &events, /*done=*/t));
  *ended = !job->Active();
  // One kBuffered log record: the task's outputs (staged in its factor transaction, if any),
  // its state, the tasks it made ready, the job record and the events — and the leases that
  // scheduling then grants (deferred into the same batch: one write instead of one per grant).
  std::shared_ptr<OutputStaging::Pending> out = staging_.Take(t->task_id());
  const absl::Time commit_start = absl::Now();
  absl::Status s;
  if (out == nullptr) {
    s = LogCompletionLocked(*job, std::move(changed), std::move(events), worker_id, next, batch,
                            [&](storage::Durability d) { return store_->Write(batch, d); });
  } else {
    absl::MutexLock out_lock(&out->mu);  // waits for a put of this task still in flight
    storage::FactorTransaction* txn = out->txn.get();
    txn->extra_writes().Append(batch);
    s = LogCompletionLocked(*job, std::move(changed), std::move(events), worker_id, next,
                            txn->extra_writes(),
                            [txn](storage::Durability d) { return txn->Commit(d); });
  }
  // The commit's time joins the profile after the commit: in memory only (TaskProfile).
  if (s.ok() && t->has_profile()) {
    t->mutable_profile()->set_commit_seconds(absl::ToDoubleSeconds(absl::Now() - commit_start));
  }
  return s;
}

absl::Status Coordinator::LogCompletionLocked(
    JobTasks& job, std::vector<v1::TaskRecord*> changed, std::vector<v1::JobEvent> events,
    absl::string_view worker_id, std::optional<LeasedTask>* next, storage::KvWriteBatch& all,
    const std::function<absl::Status(storage::Durability)>& write) {
  job.NoteChanged(changed);
  MOEC_RETURN_IF_ERROR(store_->PrepareCommit(job.record, changed, std::move(events), &all));
  deferred_batch_ = &all;
  deferred_sync_ = false;
  ServeCompleterLocked(worker_id, next);
  deferred_batch_ = nullptr;
  MOEC_RETURN_IF_ERROR(write(deferred_sync_ ? storage::Durability::kSync
                                            : storage::Durability::kBuffered));
  events_cv_.SignalAll();
  return absl::OkStatus();
}

void Coordinator::ServeCompleterLocked(absl::string_view worker_id, std::optional<LeasedTask>* next) {
  WakeWaitersLocked(worker_id, next != nullptr);
  if (next != nullptr) *next = workers_.TakeMail(worker_id, NowMs());
}

void Coordinator::WakeWaitersLocked(absl::string_view completer, bool completer_asks) {
  // Workers long-polling in LeaseTask get the tasks this change made ready at once (without
  // one, tasks wait for the next LeaseTask as before).
  if (workers_.long_polls() == 0 && !completer_asks) return;
  std::string preferred;
  if (workers_.Contains(completer)) {
    // The completer asks for its next task right after this call returns: count it as waiting
    // and serve it first, instead of waking a long-polling worker for the task it made ready.
    workers_.WaitUntil(completer, NowMs() + options_.poll_window_ms);
    preferred = std::string(completer);
  }
  if (absl::Status s = ScheduleLocked(preferred); !s.ok()) LOG(WARNING) << "schedule: " << s;
}

absl::Status Coordinator::FailTask(absl::string_view worker_id, absl::string_view task_id,
                                   const absl::Status& error, bool retriable) {
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  staging_.Discard(t->task_id());  // the attempt's staged outputs are discarded
  CorruptionRecovery::Changes changes;
  MOEC_ASSIGN_OR_RETURN(bool rerun, recovery_.Recover(*job, *t, error, NowMs(), &changes));
  if (rerun) {
    MOEC_RETURN_IF_ERROR(
        CommitLocked(*job, std::move(changes.tasks), std::move(changes.events), &changes.batch));
    WakeWaitersLocked();
    return absl::OkStatus();
  }
  return ApplyFailureLocked(*job, *t, worker_id, error, retriable);
}

absl::Status Coordinator::ApplyFailureLocked(JobTasks& job, v1::TaskRecord& t,
                                             absl::string_view worker_id,
                                             const absl::Status& error, bool retriable) {
  const bool final = ApplyFailure(t, error, retriable, NowMs(), options_.retry);
  ++(final ? counters_.tasks_failed : counters_.retries);
  std::vector<v1::JobEvent> events = {EventLocked(
      final ? v1::EVENT_TASK_FAILED : v1::EVENT_TASK_RETRY, t.task_id(), error.ToString())};
  if (final) job.record.set_error(absl::StrCat("task ", t.task_id(), ": ", error.ToString()));
  LOG(WARNING) << "job=" << job.record.job_id() << " task=" << t.task_id() << " worker=" << worker_id
               << (final ? " failed: " : " will retry: ") << error;
  std::vector<v1::TaskRecord*> changed = {&t};
  MOEC_RETURN_IF_ERROR(AdvanceLocked(job, &changed, &events));
  MOEC_RETURN_IF_ERROR(CommitLocked(job, std::move(changed), std::move(events)));
  WakeWaitersLocked();
  return absl::OkStatus();
}

absl::Status Coordinator::ReleaseTask(absl::string_view worker_id, absl::string_view task_id) {
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  staging_.Discard(t->task_id());
  t->clear_lease_workers();
  t->set_lease_deadline_ms(0);
  t->set_attempts(std::max(0, t->attempts() - 1));
  t->set_state(v1::TASK_READY);
  std::vector<v1::TaskRecord*> changed = {t};
  std::vector<v1::JobEvent> events = {
      EventLocked(v1::EVENT_TASK_RELEASED, t->task_id(),
                  absl::StrCat("worker ", worker_id, " stopped (preempted or shut down)"))};
  // Leases are buffered (GrantLocked's commit): so is giving one back.
  MOEC_RETURN_IF_ERROR(CommitLocked(*job, std::move(changed), std::move(events), /*extra=*/nullptr,
                                    storage::Durability::kBuffered));
  LOG(INFO) << "job=" << job->record.job_id() << " task=" << task_id << " worker=" << worker_id
            << " given back by its stopping worker";
  WakeWaitersLocked();
  return absl::OkStatus();
}

absl::Status Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const int64_t now = NowMs();
  for (const std::string& id : workers_.DropSilent(now, options_.worker_timeout_ms)) {
    LOG(WARNING) << "worker=" << id << " timed out";
  }
  for (auto& [id, job] : jobs_) {
    if (job.Active()) job.RebuildReady();
    std::vector<v1::TaskRecord*> expired = ExpireLeases(job.tasks, now, options_.retry);
    if (expired.empty()) continue;
    std::vector<v1::JobEvent> events;
    for (v1::TaskRecord* t : expired) {
      staging_.Discard(t->task_id());
      ++counters_.lease_expiries;
      const bool failed = t->state() == v1::TASK_FAILED;
      ++(failed ? counters_.tasks_failed : counters_.retries);
      events.push_back(EventLocked(failed ? v1::EVENT_TASK_FAILED : v1::EVENT_TASK_RETRY,
                                   t->task_id(), t->error()));
      if (failed) job.record.set_error(absl::StrCat("task ", t->task_id(), ": ", t->error()));
    }
    MOEC_RETURN_IF_ERROR(AdvanceLocked(job, &expired, &events));
    MOEC_RETURN_IF_ERROR(CommitLocked(job, std::move(expired), std::move(events)));
  }
  return absl::OkStatus();
}

std::vector<Coordinator::WorkerView> Coordinator::ListWorkers() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerView> out;
  for (const WorkerRegistry::View& w : workers_.List()) {
    WorkerView v{w.worker_id, w.info, w.last_seen_ms, {}};
    for (const auto& [jid, job] : jobs_) {
      for (const auto& t : job.tasks) {
        if (t.state() == v1::TASK_LEASED && HeldBy(t, w.worker_id)) v.tasks.push_back(t.task_id());
      }
    }
    out.push_back(std::move(v));
  }
  return out;
}

CoordinatorStats Coordinator::Stats() const {
  absl::MutexLock lock(&mu_);
  CoordinatorStats s = counters_;
  s.workers = static_cast<int64_t>(workers_.size());
  if (syncer_ != nullptr) {
    s.log_syncs = syncer_->syncs();
    s.log_sync_failures = syncer_->failures();
  }
  // Counted by enum value, named once per state: this runs under mu_ every metrics update
  // (moec-coordinator: twice a second) over every stored task.
  std::array<int64_t, v1::TaskState_ARRAYSIZE> by_state{};
  for (const auto& [id, job] : jobs_) {
    ++s.jobs_by_state[v1::JobState_Name(job.record.state())];
    for (const auto& t : job.tasks) {
      const int state = t.state();
      if (state >= 0 && state < v1::TaskState_ARRAYSIZE) {
        ++by_state[state];
      } else {
        ++s.tasks_by_state[v1::TaskState_Name(t.state())];  // a value this build does not know
      }
    }
  }
  for (int state = 0; state < v1::TaskState_ARRAYSIZE; ++state) {
    if (by_state[state] == 0) continue;
    s.tasks_by_state[v1::TaskState_Name(static_cast<v1::TaskState>(state))] += by_state[state];
  }
  return s;
}

absl::StatusOr<std::string> Coordinator::GroupNamespace(absl::string_view worker_id,
                                                        absl::string_view task_id, int attempt) {
  absl::MutexLock lock(&mu_);
  JobTasks* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  if (t->attempts() != attempt) {
    return absl::FailedPreconditionError(absl::StrCat("task ", task_id, " is at attempt ",
                                                      t->attempts(), ", not ", attempt));
  }
  return absl::StrCat(task_id, "#", attempt);
}

}  // namespace moec::coordinator
