// Worker-facing half of the Coordinator: registration, heartbeats, leasing, task outputs,
// completion and failure, lease expiry. The job-facing half is in coordinator.cc.
#include <algorithm>
#include <array>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "glog/logging.h"

namespace moec::coordinator {

std::string Coordinator::RegisterWorker(const WorkerInfo& info) {
  absl::MutexLock lock(&mu_);
  std::string id = absl::StrCat("w", next_worker_++, "-", info.name);
  Worker w;
  w.info = info;
  w.last_seen_ms = NowMs();
  workers_.emplace(id, std::move(w));
  LOG(INFO) << "worker=" << id << " registered";
  return id;
}

absl::StatusOr<std::vector<std::string>> Coordinator::Heartbeat(
    absl::string_view worker_id, absl::Span<const std::string> running) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(std::string(worker_id));
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  const int64_t now = NowMs();
  it->second.last_seen_ms = now;
  std::vector<std::string> cancelled;
  for (const std::string& tid : running) {  // O(running), not O(stored tasks)
    auto job = jobs_.find(tid.substr(0, tid.find('/')));
    if (job == jobs_.end()) continue;
    auto at = job->second.index.find(tid);
    if (at == job->second.index.end()) continue;
    v1::TaskRecord& t = job->second.tasks[at->second];
    const bool held = std::find(t.lease_workers().begin(), t.lease_workers().end(),
                                worker_id) != t.lease_workers().end();
    if (!held) continue;
    if (t.state() == v1::TASK_LEASED) {
      t.set_lease_deadline_ms(now + options_.retry.lease_ms);  // in memory; re-derived on restart
    } else if (t.state() == v1::TASK_CANCELLED) {
      cancelled.push_back(t.task_id());
    }
  }
  return cancelled;
}

absl::Status Coordinator::ScheduleLocked(absl::string_view preferred) {
  const int64_t now = NowMs();
  std::vector<WorkerSlots> idle;
  for (const auto& [id, w] : workers_) {
    if (!w.mailbox.has_value() && w.waiting_until_ms >= now) idle.push_back({id, 1, id == preferred});
  }
  if (idle.empty()) return absl::OkStatus();
  std::vector<const v1::TaskRecord*> ready;
  for (const auto& id : job_order_) {
    Job& job = jobs_.at(id);
    if (job.record.state() != v1::JOB_PENDING && job.record.state() != v1::JOB_RUNNING) continue;
    for (auto it = job.ready.begin(); it != job.ready.end();) {
      const v1::TaskRecord& t = job.tasks[*it];
      if (t.state() != v1::TASK_READY) {
        it = job.ready.erase(it);  // stale entry
        continue;
      }
      ready.push_back(&t);
      ++it;
    }
  }
  for (const Assignment& a : Schedule(ready, idle, now, static_cast<int>(workers_.size()))) {
    Job& job = jobs_.at(std::string(a.task_id.substr(0, a.task_id.find('/'))));
    v1::TaskRecord& t = job.tasks[job.index.at(a.task_id)];
    GrantLease(t, a.workers, now, options_.retry);
    ++counters_.leases_granted;
    if (job.record.state() == v1::JOB_PENDING) job.record.set_state(v1::JOB_RUNNING);
    MOEC_RETURN_IF_ERROR(CommitLocked(
        job, {&t},
        {EventLocked("task_leased", t.task_id(),
                     absl::StrCat("attempt ", t.attempts(), " on ", absl::StrJoin(a.workers, ",")))},
        /*extra=*/nullptr, storage::Durability::kBuffered));
    // Inputs (stages/stage.h StageContext::inputs): the tasks of each stage a dependency
    // belongs to — all of them for a global task (after a per-layer stage it depends on the last
    // layer only, but reads all of them); for a per-layer task at layer l, the global ones and
    // layers l-1 and l of per-layer ones (a layer reads its own layer's results and the hidden
    // states entering it, nothing else), so a lease carries O(stages) inputs, not O(tasks).
    std::set<std::string> input_stages;
    for (const std::string& dep : t.deps()) {
      input_stages.insert(job.tasks[job.index.at(dep)].stage_id());
    }
    std::map<std::string, std::string> inputs;
    for (const std::string& s : input_stages) {
      const std::vector<size_t>& all = job.by_stage.at(s);
      const bool per_layer_pair = t.layer() >= 0 && job.tasks[all.front()].layer() >= 0;
      // A per-layer stage's tasks are in layer order: only positions l-1 and l are looked at.
      const size_t first = per_layer_pair ? static_cast<size_t>(std::max(0, t.layer() - 1)) : 0;
      const size_t last = per_layer_pair ? std::min(all.size(), static_cast<size_t>(t.layer()) + 1)
                                         : all.size();
      for (size_t k = first; k < last; ++k) {
        const v1::TaskRecord& other = job.tasks[all[k]];
        if (per_layer_pair && other.layer() != t.layer() && other.layer() != t.layer() - 1) continue;
        inputs[other.task_id()] = other.fingerprint();
      }
    }
    for (size_t rank = 0; rank < a.workers.size(); ++rank) {
      Worker& w = workers_.at(a.workers[rank]);
      w.waiting_until_ms = -1;
      w.mailbox = LeasedTask{t, static_cast<int>(rank), a.workers, job.record.recipe_json(), inputs};
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<LeasedTask>> Coordinator::LeaseTask(absl::string_view worker_id,
                                                                absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  const std::string id(worker_id);
  auto it = workers_.find(id);
  if (it == workers_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  const int64_t now = NowMs();
  it->second.last_seen_ms = now;
  if (!it->second.mailbox.has_value()) {
    it->second.waiting_until_ms = now + options_.poll_window_ms;
    MOEC_RETURN_IF_ERROR(ScheduleLocked());
  }
  if (!it->second.mailbox.has_value() && wait > absl::ZeroDuration()) {
    // Long poll: completions and submissions schedule (WakeWaitersLocked) while we wait.
    auto ready = [this, &id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto w = workers_.find(id);
      return w == workers_.end() || w->second.mailbox.has_value();
    };
    ++long_polls_;
    mu_.AwaitWithTimeout(absl::Condition(&ready), std::min(wait, absl::Seconds(2)));
    --long_polls_;
    it = workers_.find(id);
    if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("worker ", id, " timed out"));
  }
  std::optional<LeasedTask> out;
  TakeMailboxLocked(id, &out);
  return out;
}

absl::StatusOr<v1::TaskRecord*> Coordinator::HeldTaskLocked(absl::string_view worker_id,
                                                            absl::string_view task_id, Job** job) {
  const std::string tid(task_id);
  MOEC_ASSIGN_OR_RETURN(*job, FindJobLocked(tid.substr(0, tid.find('/'))));
  auto it = (*job)->index.find(tid);
  if (it == (*job)->index.end()) return absl::NotFoundError(absl::StrCat("no task ", task_id));
  v1::TaskRecord* t = &(*job)->tasks[it->second];
  const bool held = t->state() == v1::TASK_LEASED &&
                    std::find(t->lease_workers().begin(), t->lease_workers().end(), worker_id) !=
                        t->lease_workers().end();
  if (!held) {
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
  const std::string tid(task_id);
  MOEC_ASSIGN_OR_RETURN(Job * job, FindJobLocked(tid.substr(0, tid.find('/'))));
  auto it = job->index.find(tid);
  if (it == job->index.end()) return absl::NotFoundError(absl::StrCat("no task ", task_id));
  v1::TaskRecord& t = job->tasks[it->second];
  const bool holder = std::find(t.lease_workers().begin(), t.lease_workers().end(), worker_id) !=
                      t.lease_workers().end();
  if (holder && t.state() == v1::TASK_CANCELLED) return true;
  if (!holder || t.state() != v1::TASK_LEASED) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", worker_id, " does not hold task ", task_id));
  }
  t.set_progress(std::clamp(fraction, 0.0, 1.0));
  t.set_progress_message(std::string(message.substr(0, 256)));
  t.set_lease_deadline_ms(NowMs() + options_.retry.lease_ms);
  return false;
}

absl::Status Coordinator::CompleteTask(absl::string_view worker_id, absl::string_view task_id,
                                       const storage::KvWriteBatch& outputs, int64_t compute_ms,
                                       std::optional<LeasedTask>* next) {
  std::optional<LeasedTask> granted;  // *next is written last: task_id may point into it
  bool ended = false;
  absl::Status s = CompleteTaskUnsynced(worker_id, task_id, outputs, compute_ms,
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
                                    int64_t compute_ms, bool lease_next, CompletionDone done) {
  std::optional<LeasedTask> granted;
  bool ended = false;
  absl::Status s = CompleteTaskUnsynced(worker_id, task_id, {}, compute_ms,
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
                                               int64_t compute_ms, std::optional<LeasedTask>* next,
                                               bool* ended) {
  absl::MutexLock lock(&mu_);
  Job* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  if (t->lease_workers(0) != worker_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("only rank 0 (", t->lease_workers(0), ") completes task ", task_id));
  }
  t->set_state(v1::TASK_DONE);
  t->set_lease_deadline_ms(0);
  t->set_error("");
  t->set_compute_ms(std::max<int64_t>(0, compute_ms));
  ++counters_.tasks_completed;
  storage::KvWriteBatch batch = outputs;
  JobStore::AddDoneFingerprint(*t, &batch);
  std::vector<v1::TaskRecord*> changed = {t};
  std::vector<v1::JobEvent> events = {EventLocked("task_done", t->task_id(), std::string(worker_id))};
  MOEC_RETURN_IF_ERROR(AdvanceLocked(*job, &changed, &events, /*done=*/t));
  *ended = job->record.state() != v1::JOB_RUNNING && job->record.state() != v1::JOB_PENDING;
  // One kBuffered log record: the task's outputs (staged in its factor transaction, if any),
  // its state, the tasks it made ready, the job record and the events — and the leases that
  // scheduling then grants (deferred into the same batch: one write instead of one per grant).
  std::shared_ptr<PendingOutputs> out;
  if (auto pending = outputs_.find(std::string(task_id)); pending != outputs_.end()) {
    out = pending->second;
    outputs_.erase(pending);
  }
  std::optional<absl::MutexLock> out_lock;
  if (out != nullptr) out_lock.emplace(&out->mu);
  storage::KvWriteBatch& all = out != nullptr ? out->txn->extra_writes() : batch;
  if (out != nullptr) all.Append(batch);
  NoteChanged(*job, changed);
  MOEC_RETURN_IF_ERROR(store_->PrepareCommit(job->record, changed, std::move(events), &all));
  deferred_batch_ = &all;
  deferred_sync_ = false;
  ServeCompleterLocked(worker_id, next);
  deferred_batch_ = nullptr;
  const storage::Durability durability =
      deferred_sync_ ? storage::Durability::kSync : storage::Durability::kBuffered;
  MOEC_RETURN_IF_ERROR(out != nullptr ? out->txn->Commit(durability) : store_->Write(all, durability));
  events_cv_.SignalAll();
  return absl::OkStatus();
}

void Coordinator::ServeCompleterLocked(absl::string_view worker_id, std::optional<LeasedTask>* next) {
  WakeWaitersLocked(worker_id, next != nullptr);
  if (next != nullptr) TakeMailboxLocked(worker_id, next);
}

void Coordinator::TakeMailboxLocked(absl::string_view worker_id, std::optional<LeasedTask>* out) {
  auto it = workers_.find(std::string(worker_id));
  if (it == workers_.end()) return;
  it->second.last_seen_ms = NowMs();
  *out = std::move(it->second.mailbox);
  it->second.mailbox.reset();
}

void Coordinator::WakeWaitersLocked(absl::string_view completer, bool completer_asks) {
  // Workers long-polling in LeaseTask get the tasks this change made ready at once (without
  // one, tasks wait for the next LeaseTask as before).
  if (long_polls_ == 0 && !completer_asks) return;
  std::string preferred;
  if (auto it = workers_.find(std::string(completer)); it != workers_.end()) {
    // The completer asks for its next task right after this call returns: count it as waiting
    // and serve it first, instead of waking a long-polling worker for the task it made ready.
    if (!it->second.mailbox.has_value()) it->second.waiting_until_ms = NowMs() + options_.poll_window_ms;
    preferred = it->first;
  }
  if (absl::Status s = ScheduleLocked(preferred); !s.ok()) LOG(WARNING) << "schedule: " << s;
}

namespace {

absl::Status CheckOutputName(absl::string_view name) {
  bool ok = !name.empty() && name.size() <= 256 && name.find("..") == absl::string_view::npos;
  for (char c : name) {
    ok = ok && (isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '/');
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("output name '", name, "' must be 1-256 of [A-Za-z0-9._/-] without '..'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> Coordinator::PutTaskOutput(absl::string_view worker_id,
                                                       absl::string_view task_id,
                                                       absl::string_view name,
                                                       storage::DType dtype,
                                                       absl::Span<const int64_t> shape,
                                                       ChunkSource& source) {
  if (factors_ == nullptr) return absl::FailedPreconditionError("this coordinator has no factor store");
  MOEC_RETURN_IF_ERROR(CheckOutputName(name));
  std::shared_ptr<PendingOutputs> out;
  std::string key;
  {
    absl::MutexLock lock(&mu_);
    Job* job = nullptr;
    MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
    key = absl::StrCat(t->fingerprint(), "/", name);
    std::shared_ptr<PendingOutputs>& slot = outputs_[std::string(task_id)];
    if (slot == nullptr) {
      slot = std::make_shared<PendingOutputs>();
      absl::MutexLock out_lock(&slot->mu);
      slot->txn = factors_->NewTransaction();
    }
    out = slot;
  }
  // The bytes flow without the coordinator lock; only this task's puts wait on each other.
  absl::MutexLock out_lock(&out->mu);
  storage::FactorTransaction& txn = *out->txn;
  MOEC_RETURN_IF_ERROR(txn.Begin(key, dtype, shape));
  absl::Status s;
  std::string chunk;
  while (s.ok()) {
    absl::StatusOr<bool> more = source.Next(&chunk);
    if (!more.ok()) s = more.status();
    if (!s.ok() || !*more) break;
    s = txn.Append(chunk);
  }
  if (s.ok()) s = txn.End();
  if (!s.ok()) {
    txn.AbortCurrent();
    return s;
  }
  return key;
}

absl::Status Coordinator::FailTask(absl::string_view worker_id, absl::string_view task_id,
                                   const absl::Status& error, bool retriable) {
  absl::MutexLock lock(&mu_);
  Job* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  outputs_.erase(std::string(task_id));  // the attempt's staged outputs are discarded
  {
    std::vector<v1::TaskRecord*> changed;
    std::vector<v1::JobEvent> events;
    storage::KvWriteBatch batch;
    MOEC_ASSIGN_OR_RETURN(bool rerun,
                          RerunCorruptProducerLocked(*job, *t, error, &changed, &events, &batch));
    if (rerun) {
      MOEC_RETURN_IF_ERROR(CommitLocked(*job, std::move(changed), std::move(events), &batch));
      WakeWaitersLocked();
      return absl::OkStatus();
    }
  }
  const bool final = ApplyFailure(*t, error, retriable, NowMs(), options_.retry);
  ++(final ? counters_.tasks_failed : counters_.retries);
  std::vector<v1::JobEvent> events = {
      EventLocked(final ? "task_failed" : "task_retry", t->task_id(), error.ToString())};
  if (final) job->record.set_error(absl::StrCat("task ", t->task_id(), ": ", error.ToString()));
  LOG(WARNING) << "job=" << job->record.job_id() << " task=" << task_id << " worker=" << worker_id
               << (final ? " failed: " : " will retry: ") << error;
  std::vector<v1::TaskRecord*> changed = {t};
  MOEC_RETURN_IF_ERROR(AdvanceLocked(*job, &changed, &events));
  MOEC_RETURN_IF_ERROR(CommitLocked(*job, std::move(changed), std::move(events)));
  WakeWaitersLocked();
  return absl::OkStatus();
}

absl::Status Coordinator::ReleaseTask(absl::string_view worker_id, absl::string_view task_id) {
  absl::MutexLock lock(&mu_);
  Job* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  outputs_.erase(std::string(task_id));
  t->clear_lease_workers();
  t->set_lease_deadline_ms(0);
  t->set_attempts(std::max(0, t->attempts() - 1));
  t->set_state(v1::TASK_READY);
  std::vector<v1::TaskRecord*> changed = {t};
  std::vector<v1::JobEvent> events = {EventLocked(
      "task_released", t->task_id(), absl::StrCat("worker ", worker_id, " stopped before starting it"))};
  // Leases are buffered (GrantLease's commit): so is giving one back.
  MOEC_RETURN_IF_ERROR(CommitLocked(*job, std::move(changed), std::move(events), /*extra=*/nullptr,
                                    storage::Durability::kBuffered));
  LOG(INFO) << "job=" << job->record.job_id() << " task=" << task_id << " worker=" << worker_id
            << " released before starting";
  WakeWaitersLocked();
  return absl::OkStatus();
}

absl::StatusOr<bool> Coordinator::RerunCorruptProducerLocked(
    Job& job, v1::TaskRecord& failed, const absl::Status& error,
    std::vector<v1::TaskRecord*>* changed, std::vector<v1::JobEvent>* events,
    storage::KvWriteBatch* batch) {
  if (error.code() != absl::StatusCode::kDataLoss || factors_ == nullptr) return false;
  // The factor store's read errors name the key: "factor '<fingerprint>/<name>' ...".
  const absl::string_view message = error.message();
  const size_t at = message.find("factor '");
  if (at == absl::string_view::npos) return false;
  const size_t begin = at + 8;
  const size_t end = message.find('\'', begin);
  if (end == absl::string_view::npos) return false;
  const std::string key(message.substr(begin, end - begin));
  const std::string fp = key.substr(0, key.find('/'));
  v1::TaskRecord* producer = nullptr;
  for (v1::TaskRecord& t : job.tasks) {
    if (t.fingerprint() == fp && &t != &failed) producer = &t;
  }
  if (producer == nullptr) return false;
  if (producer->state() == v1::TASK_DONE) {
    int& reruns = corrupt_reruns_[producer->task_id()];
    if (reruns >= kMaxCorruptReruns) return false;
    ++reruns;
    // Its outputs go (the corrupt one and the rest: the re-run writes them all again).
    MOEC_ASSIGN_OR_RETURN(std::vector<std::string> keys, factors_->List(fp + "/"));
    for (const std::string& k : keys) MOEC_RETURN_IF_ERROR(factors_->Delete(k));
    JobStore::RemoveDoneFingerprint(fp, batch);
    producer->set_state(v1::TASK_READY);
    producer->set_reused(false);
    producer->set_attempts(0);
    producer->set_not_before_ms(0);
    producer->set_progress(0);
    producer->set_error(absl::StrCat("re-run: output ", key, " was corrupt"));
    changed->push_back(producer);
    events->push_back(EventLocked("factor_corrupt", failed.task_id(), error.ToString()));
    events->push_back(EventLocked("task_rerun", producer->task_id(),
                                  absl::StrCat("its output ", key, " was corrupt")));
    LOG(WARNING) << "job=" << job.record.job_id() << " task=" << failed.task_id()
                 << " read a corrupt factor " << key << "; re-running " << producer->task_id();
    // Tasks that need it and have not started wait for it again.
    for (size_t i : job.dependents[job.index.at(producer->task_id())]) {
      v1::TaskRecord& d = job.tasks[i];
      if (d.state() == v1::TASK_READY) {
        d.set_state(v1::TASK_BLOCKED);
        changed->push_back(&d);
      }
    }
  } else if (producer->state() != v1::TASK_READY && producer->state() != v1::TASK_LEASED) {
    return false;
  }
  // The failed attempt does not count: the task waits for the producer's new outputs (also when
  // it read them through another task, as stages after a restructure read pruned weights).
  std::vector<size_t>& waiting = job.dependents[job.index.at(producer->task_id())];
  const size_t me = job.index.at(failed.task_id());
  if (std::find(waiting.begin(), waiting.end(), me) == waiting.end()) waiting.push_back(me);
  failed.clear_lease_workers();
  failed.set_lease_deadline_ms(0);
  failed.set_attempts(std::max(0, failed.attempts() - 1));
  failed.set_error(error.ToString());
  failed.set_state(v1::TASK_BLOCKED);
  changed->push_back(&failed);
  return true;
}

absl::Status Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const int64_t now = NowMs();
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (now - it->second.last_seen_ms > options_.worker_timeout_ms) {
      LOG(WARNING) << "worker=" << it->first << " timed out";
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [id, job] : jobs_) {
    if (job.record.state() == v1::JOB_PENDING || job.record.state() == v1::JOB_RUNNING) {
      RebuildReady(job);
    }
    std::vector<v1::TaskRecord*> expired = ExpireLeases(job.tasks, now, options_.retry);
    if (expired.empty()) continue;
    std::vector<v1::JobEvent> events;
    for (v1::TaskRecord* t : expired) {
      outputs_.erase(t->task_id());
      ++counters_.lease_expiries;
      ++(t->state() == v1::TASK_FAILED ? counters_.tasks_failed : counters_.retries);
      events.push_back(EventLocked(t->state() == v1::TASK_FAILED ? "task_failed" : "task_retry",
                                   t->task_id(), t->error()));
      if (t->state() == v1::TASK_FAILED) {
        job.record.set_error(absl::StrCat("task ", t->task_id(), ": ", t->error()));
      }
    }
    MOEC_RETURN_IF_ERROR(AdvanceLocked(job, &expired, &events));
    MOEC_RETURN_IF_ERROR(CommitLocked(job, std::move(expired), std::move(events)));
  }
  return absl::OkStatus();
}

std::vector<Coordinator::WorkerView> Coordinator::ListWorkers() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerView> out;
  for (const auto& [id, w] : workers_) {
    WorkerView v{id, w.info, w.last_seen_ms, {}};
    for (const auto& [jid, job] : jobs_) {
      for (const auto& t : job.tasks) {
        if (t.state() == v1::TASK_LEASED &&
            std::find(t.lease_workers().begin(), t.lease_workers().end(), id) !=
                t.lease_workers().end()) {
          v.tasks.push_back(t.task_id());
        }
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

}  // namespace moec::coordinator

namespace moec::coordinator {

absl::StatusOr<std::string> Coordinator::GroupNamespace(absl::string_view worker_id,
                                                        absl::string_view task_id, int attempt) {
  absl::MutexLock lock(&mu_);
  Job* job = nullptr;
  MOEC_ASSIGN_OR_RETURN(v1::TaskRecord * t, HeldTaskLocked(worker_id, task_id, &job));
  if (t->attempts() != attempt) {
    return absl::FailedPreconditionError(absl::StrCat("task ", task_id, " is at attempt ",
                                                      t->attempts(), ", not ", attempt));
  }
  return absl::StrCat(task_id, "#", attempt);
}

absl::Status Coordinator::GroupStoreSet(absl::string_view worker_id, absl::string_view task_id,
                                        int attempt, const std::string& key, std::string value) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, GroupNamespace(worker_id, task_id, attempt));
  return group_store_.Set(ns, key, std::move(value));
}

absl::StatusOr<std::optional<std::string>> Coordinator::GroupStoreGet(
    absl::string_view worker_id, absl::string_view task_id, int attempt, const std::string& key,
    absl::Duration wait) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, GroupNamespace(worker_id, task_id, attempt));
  return group_store_.Get(ns, key, wait);
}

absl::StatusOr<int64_t> Coordinator::GroupStoreAdd(absl::string_view worker_id,
                                                   absl::string_view task_id, int attempt,
                                                   const std::string& key, int64_t delta) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, GroupNamespace(worker_id, task_id, attempt));
  return group_store_.Add(ns, key, delta);
}

}  // namespace moec::coordinator
