// The Worker's tests against the real Coordinator core: an in-process CoordinatorClient over
// it (what the gRPC services would do) and a fixture with a coordinator and a tiny model.
#ifndef MOEC_WORKER_WORKER_TEST_FIXTURE_H_
#define MOEC_WORKER_WORKER_TEST_FIXTURE_H_

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "gtest/gtest.h"
#include "storage/in_memory_kv_store.h"
#include "tests/testing/temp_dir.h"
#include "worker/coordinator_client.h"
#include "worker/worker.h"

namespace moec::worker {

// The gang rendezvous through the Coordinator core, as CoordinatorService composes it.
inline absl::Status GroupSet(coordinator::Coordinator& c, const std::string& worker, const std::string& task,
                      int attempt, const std::string& key, const std::string& value) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, c.GroupNamespace(worker, task, attempt));
  return c.group_store().Set(ns, key, value);
}
inline absl::StatusOr<std::optional<std::string>> GroupGet(coordinator::Coordinator& c,
                                                    const std::string& worker,
                                                    const std::string& task, int attempt,
                                                    const std::string& key, absl::Duration wait) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, c.GroupNamespace(worker, task, attempt));
  return c.group_store().Get(ns, key, wait);
}
inline absl::StatusOr<int64_t> GroupAdd(coordinator::Coordinator& c, const std::string& worker,
                                 const std::string& task, int attempt, const std::string& key,
                                 int64_t delta) {
  MOEC_ASSIGN_OR_RETURN(std::string ns, c.GroupNamespace(worker, task, attempt));
  return c.group_store().Add(ns, key, delta);
}

// Calls the Coordinator core directly (what the gRPC service would do).
class LocalClient : public CoordinatorClient {
 public:
  explicit LocalClient(coordinator::Coordinator* core) : core_(core) {}
  absl::StatusOr<std::string> RegisterWorker(const Registration& r) override {
    return core_->RegisterWorker({r.name, r.gpu, r.memory_bytes, r.device_memory_bytes,
                                  r.previous_id, r.store_id, r.data_address});
  }
  absl::StatusOr<std::vector<std::string>> Heartbeat(const std::string& id,
                                                     const std::vector<std::string>& running) override {
    return core_->Heartbeat(id, running);
  }
  absl::StatusOr<std::optional<Lease>> LeaseTask(const std::string& id) override {
    auto l = core_->LeaseTask(id);
    if (!l.ok()) return l.status();
    return ToLease(*l);
  }
  static std::optional<Lease> ToLease(const std::optional<coordinator::LeasedTask>& l) {
    if (!l.has_value()) return std::nullopt;
    return Lease{l->task, l->rank, l->group, l->recipe_json, l->overwrite, l->input_fingerprints};
  }
  absl::StatusOr<bool> ReportProgress(const std::string& id, const std::string& task,
                                      double fraction, const std::string& message) override {
    ++progress_reports;
    return core_->ReportProgress(id, task, fraction, message);
  }
  std::atomic<int> progress_reports{0};
  absl::Status CompleteTask(const std::string& id, const std::string& task, int64_t compute_ms,
                            const v1::TaskProfile& profile, std::optional<Lease>* next) override {
    std::optional<coordinator::LeasedTask> granted;
    absl::Status s =
        core_->CompleteTask(id, task, {}, compute_ms, next ? &granted : nullptr, profile);
    if (s.ok() && next != nullptr) *next = ToLease(granted);
    if (granted.has_value()) ++granted_with_completion;
    return s;
  }
  std::atomic<int> granted_with_completion{0};
  absl::Status FailTask(const std::string& id, const std::string& task, const absl::Status& e,
                        bool retriable) override {
    return core_->FailTask(id, task, e, retriable);
  }
  absl::Status ReleaseTask(const std::string& id, const std::string& task) override {
    return core_->ReleaseTask(id, task);
  }
  absl::StatusOr<std::string> PutOutput(const std::string& id, const std::string& task,
                                        const std::string& name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    struct One : coordinator::ChunkSource {
      absl::string_view d;
      bool sent = false;
      absl::StatusOr<bool> Next(std::string* chunk) override {
        if (sent) return false;
        sent = true;
        chunk->assign(d.data(), d.size());
        return true;
      }
    } src;
    src.d = data;
    return core_->PutTaskOutput(id, task, name, dtype, shape, src);
  }
  absl::StatusOr<std::string> RecordOutput(const std::string& id, const std::string& task,
                                           const std::string& name, storage::DType dtype,
                                           absl::Span<const int64_t> shape, uint32_t crc32c,
                                           const std::string& store_id) override {
    return core_->RecordTaskOutput(id, task, name, dtype, shape, crc32c, store_id);
  }
  absl::StatusOr<storage::Factor> GetFactor(const std::string& key,
                                            std::vector<Holder>* holders) override {
    MOEC_ASSIGN_OR_RETURN(storage::FactorInfo info, core_->factors()->Stat(key));
    if (!info.held()) return core_->factors()->Get(key);
    if (holders != nullptr) {
      holders->clear();
      for (const auto& w : core_->HoldersOf(info.holders)) {
        holders->push_back({w.info.store_id, w.worker_id, w.info.data_address});
      }
    }
    return storage::Factor{std::move(info), {}};
  }
  absl::Status GroupStoreSet(const std::string& id, const std::string& task, int attempt,
                             const std::string& key, const std::string& value) override {
    return GroupSet(*core_, id, task, attempt, key, value);
  }
  absl::StatusOr<std::optional<std::string>> GroupStoreGet(const std::string& id,
                                                           const std::string& task, int attempt,
                                                           const std::string& key,
                                                           int64_t wait_ms) override {
    return GroupGet(*core_, id, task, attempt, key, absl::Milliseconds(wait_ms));
  }
  absl::StatusOr<int64_t> GroupStoreAdd(const std::string& id, const std::string& task,
                                        int attempt, const std::string& key,
                                        int64_t delta) override {
    return GroupAdd(*core_, id, task, attempt, key, delta);
  }

 private:
  coordinator::Coordinator* core_;
};

class WorkerTest : public ::testing::Test {
 protected:
  static std::vector<std::string> Families() {
    auto cfs = coordinator::JobStoreColumnFamilies();
    cfs.push_back("factors");
    return cfs;
  }
  WorkerTest() : kv_(Families()) {
    std::filesystem::create_directories(dir_.Join("m"));
    dir_.WriteFile("m/config.json", R"({"num_hidden_layers": 3})");
    store_ = *coordinator::JobStore::Open(&kv_);
    coordinator::CoordinatorOptions o;
    o.retry.base_backoff_ms = 1;
    factors_ = *storage::FactorStore::Open(&kv_);
    core_ = *coordinator::Coordinator::Create(store_.get(), o, [] { return absl::Now(); },
                                              factors_.get());
    client_ = std::make_unique<LocalClient>(core_.get());
  }
  std::string Submit(int sleep_ms, int output_bytes = 0, int workers = 1, int threads = 0) {
    std::string yaml = "name: w\nmodel: m\noutput: out\nworkers: " + std::to_string(workers) +
                       (threads > 0 ? "\nthreads: " + std::to_string(threads) : "") +
                       "\nstages:\n"
                       "  - {id: a, kind: noop, with: {sleep_ms: " + std::to_string(sleep_ms) +
                       ", output_bytes: " + std::to_string(output_bytes) + "}}\n";
    auto r = core_->SubmitJob(yaml, dir_.Join("r.yaml"), {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r->job.job_id();
  }
  v1::JobState WaitForEnd(const std::string& job) {
    for (int i = 0; i < 1000; ++i) {
      v1::JobState s = core_->GetJob(job)->state();
      if (s == v1::JOB_SUCCEEDED || s == v1::JOB_FAILED) return s;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return core_->GetJob(job)->state();
  }
  WorkerOptions Fast() {
    WorkerOptions o;
    o.name = "test";
    o.poll_interval = absl::Milliseconds(5);
    o.heartbeat_interval = absl::Milliseconds(50);
    return o;
  }

  ::moec::testing::TempDir dir_;
  storage::InMemoryKvStore kv_;
  std::unique_ptr<coordinator::JobStore> store_;
  std::unique_ptr<storage::FactorStore> factors_;
  std::unique_ptr<coordinator::Coordinator> core_;
  std::unique_ptr<LocalClient> client_;
};

}  // namespace moec::worker

#endif  // MOEC_WORKER_WORKER_TEST_FIXTURE_H_
