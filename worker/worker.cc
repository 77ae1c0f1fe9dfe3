#include "worker/worker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/crc32c.h"
#include "common/status_payloads.h"
#include "comm/communicator.h"
#include "common/recipe/recipe.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "worker/stage_runner.h"

namespace moec::worker {

absl::Status WorkerOptions::Validate() const {
  if (poll_interval <= absl::ZeroDuration() || heartbeat_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("worker intervals must be positive");
  }
  if (collectives != "gloo" && collectives != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("collectives must be gloo or nccl, not '", collectives, "'"));
  }
  if (collectives == "nccl" && !device.cuda) {
    return absl::InvalidArgumentError("NCCL collectives need a GPU worker (--device cuda:N)");
  }
  return absl::OkStatus();
}

Worker::~Worker() { Stop(); }

std::string Worker::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

absl::Status Worker::Reregister(const std::string& failed_id) {
  absl::MutexLock registering(&register_mu_);
  if (worker_id() != failed_id) return absl::OkStatus();  // the other thread registered again
  // Again with the id it had: a restarted coordinator gives it back, and the task this worker
  // runs keeps its lease (no attempt is lost to the restart).
  Registration r{options_.name, options_.device.cuda, options_.memory_bytes,
                 options_.device_memory_bytes, failed_id};
  if (options_.activations != nullptr) {
    r.store_id = options_.activations->id();
    r.data_address = options_.data_address;
  }
  absl::StatusOr<std::string> id = client_->RegisterWorker(r);
  if (!id.ok()) return id.status();
  absl::MutexLock lock(&mu_);
  worker_id_ = *id;
  LOG(INFO) << "worker=" << *id << " registered" << (*id == failed_id ? " again with its id" : "");
  return absl::OkStatus();
}

absl::Status Worker::Start() {
  if (absl::Status s = options_.Validate(); !s.ok()) return s;
  if (absl::Status s = Reregister(""); !s.ok()) return s;
  lease_thread_ = std::thread([this] { LeaseLoop(); });
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  return absl::OkStatus();
}

void Worker::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  client_->CancelWaits();  // the lease loop's long poll ends now
  {
    absl::MutexLock lock(&mu_);
    if (current_cancelled_) current_cancelled_->store(true);
  }
  if (lease_thread_.joinable()) lease_thread_.join();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

void Worker::HeartbeatLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.heartbeat_interval)) {
    std::vector<std::string> running;
    {
      absl::MutexLock lock(&mu_);
      if (!current_task_.empty()) running.push_back(current_task_);
    }
    const std::string id = worker_id();
    absl::StatusOr<std::vector<std::string>> cancelled = client_->Heartbeat(id, running);
    if (absl::IsNotFound(cancelled.status())) {
      // The coordinator restarted or dropped us: register again, asking for the same id.
      Reregister(id).IgnoreError();  // retried at the next beat
      continue;
    }
    if (!cancelled.ok()) {
      LOG(WARNING) << "worker=" << worker_id() << " heartbeat: " << cancelled.status();
      continue;
    }
    absl::MutexLock lock(&mu_);
    for (const auto& id : *cancelled) {
      if (id == current_task_ && current_cancelled_) current_cancelled_->store(true);
    }
  }
}

void Worker::LeaseLoop() {
  std::optional<Lease> next;  // granted with the last completion
  while (!stop_.HasBeenNotified()) {
    if (next.has_value()) {
      Lease lease = *std::move(next);
      next = RunOne(lease);
      continue;
    }
    const absl::Time asked = absl::Now();
    const std::string id = worker_id();
    absl::StatusOr<std::optional<Lease>> lease = client_->LeaseTask(id);
    if (!lease.ok() && stop_.HasBeenNotified()) break;
    if (!lease.ok()) {
      if (absl::IsNotFound(lease.status())) Reregister(id).IgnoreError();  // retried next loop
      else LOG(WARNING) << "worker=" << worker_id() << " lease: " << lease.status();
      stop_.WaitForNotificationWithTimeout(options_.poll_interval);
      continue;
    }
    if (!lease->has_value()) {
      // A coordinator that long-polled already waited; one that answered at once is asked again
      // after the poll interval.
      if (absl::Now() - asked < options_.poll_interval / 2) {
        stop_.WaitForNotificationWithTimeout(options_.poll_interval);
      }
      continue;
    }
    next = RunOne(**lease);
  }
  if (next.has_value()) {
    // Stopping with a task granted but not started: give it back at once (the attempt is not
    // counted against it) instead of leaving it to wait for its lease to expire.
    const std::string id = worker_id();
    if (absl::Status s = client_->ReleaseTask(id, next->task.task_id()); !s.ok()) {
      LOG(WARNING) << "worker=" << id << " task=" << next->task.task_id()
                   << " release: " << s;  // its lease expires instead
    }
  }
}

namespace {

// What the task's profile records: its phases (all of them, in Phase order, so that reports
// line up) and what they are measured against.
v1::TaskProfile ProfileRecord(const profile::TaskProfile& p, const WorkerOptions& options,
                              int threads) {
  v1::TaskProfile r;
  const auto totals = p.Snapshot();
  for (int i = 0; i < static_cast<int>(profile::Phase::kCount); ++i) {
    v1::TaskPhase* phase = r.add_phases();
    phase->set_name(profile::PhaseName(static_cast<profile::Phase>(i)));
    phase->set_seconds(totals[i].seconds);
    phase->set_flops(totals[i].flops);
  }
  r.set_gemm_gflops(options.gemm_gflops);
  r.set_device(options.device.ToString());
  r.set_threads(threads);
  return r;
}

// The stage's context of `lease` but for its I/O, communicator and progress; returns the
// recipe as parsed (checked against the stage catalog once per lease: stages read typed fields,
// never raw JSON), bound to ctx when it parsed.
absl::StatusOr<recipe::Recipe> ContextOf(const Lease& lease, const WorkerOptions& options,
                                         const std::atomic<bool>* cancelled,
                                         stages::StageContext* ctx) {
  ctx->task = &lease.task;
  absl::StatusOr<recipe::Recipe> parsed = recipe::Recipe::FromCanonicalJson(lease.recipe_json);
  if (parsed.ok()) {
    ctx->SetRecipe(std::make_shared<const recipe::Recipe>(*parsed), lease.task.stage_id());
  }
  ctx->overwrite = lease.overwrite;
  ctx->device = options.device;
  ctx->rank = lease.rank;
  ctx->group = lease.group;
  ctx->inputs = lease.input_fingerprints;
  ctx->cancelled = cancelled;
  return parsed;
}

// The running task's view of the factor store: through the coordinator client, and for the
// activation chain the worker's own activation store and its peers' (when it has one).
class ClientFactorIo : public stages::FactorIo {
 public:
  ClientFactorIo(CoordinatorClient* client, const WorkerOptions& options, std::string worker_id,
                 const v1::TaskRecord& task, const std::atomic<bool>* cancelled)
      : client_(client), options_(options), worker_id_(std::move(worker_id)), task_(task),
        cancelled_(cancelled) {}
  absl::StatusOr<std::string> PutOutput(absl::string_view name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    profile::ScopedPhase phase(profile::Phase::kFactorIo);
    return client_->PutOutput(worker_id_, task_.task_id(), std::string(name), dtype, shape, data);
  }
  // Into the task's transaction on the worker's activation store (committed by Commit, before
  // the task completes), and recorded with the coordinator.
  absl::StatusOr<std::string> PutBulk(absl::string_view name, storage::DType dtype,
                                      absl::Span<const int64_t> shape,
                                      absl::string_view data) override {
    if (options_.activations == nullptr) return PutOutput(name, dtype, shape, data);
    profile::ScopedPhase phase(profile::Phase::kFactorIo);
    if (txn_ == nullptr) txn_ = options_.activations->factors().NewTransaction();
    MOEC_RETURN_IF_ERROR(txn_->Put(absl::StrCat(task_.fingerprint(), "/", name), dtype, shape, data));
    return client_->RecordOutput(worker_id_, task_.task_id(), std::string(name), dtype, shape,
                                 crc32c::Value(data), options_.activations->id());
  }
  // Makes this rank's bulk outputs durable in its activation store (one flush and synced batch
  // per task); an uncommitted attempt's are discarded with it.
  absl::Status Commit() {
    if (txn_ == nullptr) return absl::OkStatus();
    profile::ScopedPhase phase(profile::Phase::kFactorIo);
    absl::Status s = txn_->Commit(storage::Durability::kSync);
    txn_.reset();
    return s;
  }
  absl::StatusOr<storage::Factor> Get(absl::string_view key) override {
    profile::ScopedPhase phase(profile::Phase::kFactorIo);
    const std::string k(key);
    if (options_.activations != nullptr) {
      absl::StatusOr<std::optional<storage::Factor>> local = options_.activations->GetIfPresent(k);
      if (local.ok() && local->has_value()) return std::move(**local);
      if (!local.ok()) {
        // A corrupt local copy goes; the bytes come from elsewhere, or its producer runs again.
        LOG(WARNING) << "worker=" << worker_id_ << " dropping its copy of " << k << ": "
                     << local.status();
        options_.activations->factors().Delete(k).IgnoreError();
      }
    }
    std::vector<Holder> holders;
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, client_->GetFactor(k, &holders));
    if (!f.info.held()) return f;
    return FromHolders(k, std::move(f.info), std::move(holders));
  }

 private:
  // Reads `key` from a holder, asking the coordinator again for the holders registered while
  // none answers (a restarted worker comes back with its store), for up to holder_wait. No
  // holder left, or none answering in time: DataLoss carrying the key, so that the coordinator
  // re-runs the task that produced it (lineage).
  absl::StatusOr<storage::Factor> FromHolders(const std::string& key, storage::FactorInfo info,
                                              std::vector<Holder> holders) {
    const absl::Time deadline = absl::Now() + options_.holder_wait;
    std::string tried;
    while (true) {
      bool retry = false;
      for (const Holder& h : holders) {
        if (options_.peers == nullptr || h.address.empty()) continue;
        absl::StatusOr<storage::Factor> f = options_.peers->Get(h.address, key, info);
        if (f.ok()) return f;
        absl::StrAppend(&tried, tried.empty() ? "" : "; ", h.worker_id, " at ", h.address, ": ",
                        f.status().ToString());
        retry = retry || absl::IsUnavailable(f.status()) || absl::IsDeadlineExceeded(f.status());
      }
      if (!retry || absl::Now() >= deadline || (cancelled_ != nullptr && cancelled_->load())) break;
      absl::SleepFor(absl::Seconds(1));
      MOEC_ASSIGN_OR_RETURN(storage::Factor again, client_->GetFactor(key, &holders));
      if (!again.info.held()) return again;
    }
    return WithFactorKey(
        absl::DataLossError(absl::StrCat(
            "factor '", key, "': no worker holding it (", absl::StrJoin(info.holders, ","),
            ") could serve it", tried.empty() ? " (none is registered)" : ": " + tried)),
        key);
  }

  CoordinatorClient* client_;
  const WorkerOptions& options_;
  const std::string worker_id_;
  const v1::TaskRecord& task_;
  const std::atomic<bool>* cancelled_;
  std::unique_ptr<storage::FactorTransaction> txn_;
};

// The gang's rendezvous store: the coordinator's GroupStore of this attempt of the task. Get polls
// in waits the coordinator bounds (2 s) until the caller's timeout.
class CoordinatorRendezvous : public comm::RendezvousStore {
 public:
  CoordinatorRendezvous(CoordinatorClient* client, std::string worker_id, std::string task_id,
                        int attempt, const std::atomic<bool>* cancelled)
      : client_(client), worker_id_(std::move(worker_id)), task_id_(std::move(task_id)),
        attempt_(attempt), cancelled_(cancelled) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    return client_->GroupStoreSet(worker_id_, task_id_, attempt_, key, value);
  }
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    do {
      if (cancelled_->load()) return absl::CancelledError("task cancelled during rendezvous");
      const int64_t wait = std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()),
                                               0, 1000);
      absl::StatusOr<std::optional<std::string>> v =
          client_->GroupStoreGet(worker_id_, task_id_, attempt_, key, wait);
      if (!v.ok()) return v.status();
      if (v->has_value()) return **v;
    } while (absl::Now() < deadline);
    return absl::DeadlineExceededError(absl::StrCat("rendezvous of task ", task_id_, ": key ", key,
                                                    " not set in time (a gang member is missing)"));
  }
  absl::StatusOr<int64_t> Add(const std::string& key, int64_t delta) override {
    return client_->GroupStoreAdd(worker_id_, task_id_, attempt_, key, delta);
  }

 private:
  CoordinatorClient* client_;
  const std::string worker_id_, task_id_;
  const int attempt_;
  const std::atomic<bool>* cancelled_;
};

// The communicator of a gang task's rank (`size` 1: a single rank needs no peers): NCCL or
// Gloo as the worker's options say, rendezvousing through the coordinator.
absl::StatusOr<std::unique_ptr<comm::Communicator>> NewGangCommunicator(
    CoordinatorClient* client, const WorkerOptions& options, const std::string& worker_id,
    const Lease& lease, int size, const std::atomic<bool>* cancelled) {
  if (size == 1) return comm::NewSingleRankCommunicator();
  auto store = std::make_shared<CoordinatorRendezvous>(client, worker_id, lease.task.task_id(),
                                                       lease.task.attempts(), cancelled);
  if (options.collectives == "nccl") {
    comm::NcclOptions n;
    n.rank = lease.rank;
    n.size = size;
    n.device = options.device.index;
    n.timeout = options.collective_timeout;
    return comm::NewNcclCommunicator(std::move(store), n);
  }
  comm::GlooOptions o;
  o.rank = lease.rank;
  o.size = size;
  o.host = options.advertise_host;
  o.timeout = options.collective_timeout;
  return comm::NewGlooCommunicator(std::move(store), o);
}

}  // namespace

std::optional<Lease> Worker::RunOne(const Lease& lease) {
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  const std::string id = worker_id();
  {
    absl::MutexLock lock(&mu_);
    current_task_ = lease.task.task_id();
    current_cancelled_ = cancelled;
  }
  stages::StageContext ctx;
  absl::StatusOr<recipe::Recipe> parsed = ContextOf(lease, options_, cancelled.get(), &ctx);
  ClientFactorIo io(client_, options_, id, lease.task, cancelled.get());
  ctx.io = &io;
  const int size = std::max<int>(1, static_cast<int>(lease.group.size()));
  comm::LazyCommunicator communicator(
      lease.rank, size, [&]() -> absl::StatusOr<std::unique_ptr<comm::Communicator>> {
        return NewGangCommunicator(client_, options_, id, lease, size, cancelled.get());
      });
  ctx.comm = &communicator;
  // Progress goes to the coordinator at most once a second (and at the end); the answer also
  // carries cancellation.
  absl::Time last_report = absl::InfinitePast();
  ctx.progress = [&](double fraction, const std::string& message) {
    const absl::Time now = absl::Now();
    if (fraction < 1.0 && now - last_report < absl::Seconds(1)) return;
    last_report = now;
    absl::StatusOr<bool> stop = client_->ReportProgress(id, lease.task.task_id(), fraction, message);
    if (stop.ok() && *stop) cancelled->store(true);
  };
  // The job's thread count when it fixes one (its bytes depend on it), else the worker's.
  const int threads = parsed.ok() && parsed->threads > 0 ? parsed->threads : options_.threads;
  if (options_.set_threads && threads > 0) options_.set_threads(threads);
  const absl::Time started = absl::Now();
  profile::TaskProfile profile;
  absl::Status result = [&] {
    profile::BindToThread bind(&profile);
    if (!parsed.ok()) return Annotate(parsed.status(), "the job's recipe");
    if (ctx.stage == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("the job's recipe has no stage '", lease.task.stage_id(), "'"));
    }
    MOEC_RETURN_IF_ERROR(RunStage(*registry_, ctx));
    // Every rank's bulk outputs are durable before rank 0 completes the task (which commits
    // their records on the coordinator): a gang that formed its group meets once more.
    MOEC_RETURN_IF_ERROR(io.Commit());
    if (communicator.connected()) MOEC_RETURN_IF_ERROR(communicator.Barrier());
    return absl::OkStatus();
  }();
  const v1::TaskProfile record = ProfileRecord(profile, options_, threads);  // its phases within compute_ms
  const int64_t compute_ms = absl::ToInt64Milliseconds(absl::Now() - started);
  std::optional<Lease> next = Report(lease, id, result, compute_ms, record, *cancelled);
  {
    // Only now: heartbeats keep naming the task (renewing its lease) while its report is in
    // flight, which for large outputs includes their commit.
    absl::MutexLock lock(&mu_);
    current_task_.clear();
    current_cancelled_.reset();
  }
  return next;
}

std::optional<Lease> Worker::Report(const Lease& lease, const std::string& id,
                                    const absl::Status& result, int64_t compute_ms,
                                    const v1::TaskProfile& profile,
                                    const std::atomic<bool>& cancelled) {
  absl::Status reported;
  std::optional<Lease> next;
  if (result.ok()) {
    ++tasks_done_;
    // Rank 0 asks for its next task in the completing call (one round trip per task in a
    // chain), unless it is stopping.
    if (lease.rank == 0) {
      reported = client_->CompleteTask(id, lease.task.task_id(), compute_ms, profile,
                                       stop_.HasBeenNotified() ? nullptr : &next);
    }
  } else {
    ++tasks_failed_;
    LOG(WARNING) << "worker=" << id << " task=" << lease.task.task_id() << " failed: " << result;
    if (!cancelled.load()) {
      reported = client_->FailTask(id, lease.task.task_id(), result, IsRetriable(result));
    } else if (stop_.HasBeenNotified()) {
      // Preempted (SIGTERM): the task goes back at once, its attempt not counted, instead of
      // waiting for its lease to expire. (A job cancellation leaves nothing to give back.)
      reported = client_->ReleaseTask(id, lease.task.task_id());
    }
  }
  if (!reported.ok()) {
    LOG(WARNING) << "worker=" << id << " task=" << lease.task.task_id()
                 << " report: " << reported;  // the lease will expire and the task re-run
  }
  return next;
}

}  // namespace moec::worker
