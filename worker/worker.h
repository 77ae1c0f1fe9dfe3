// Worker: the core of moec-worker. Registers with the coordinator, heartbeats, pulls tasks,
// runs each through StageRunner (a failing task never stops the worker) and reports the result;
// a task cancelled by the coordinator is signalled to its stage.
#ifndef MOEC_WORKER_WORKER_H_
#define MOEC_WORKER_WORKER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/device.h"
#include "stages/stage.h"
#include "worker/activation_store.h"
#include "worker/coordinator_client.h"

namespace moec::worker {

struct WorkerOptions {
  std::string name;                                 // shown by ListWorkers (default host:pid)
  absl::Duration poll_interval = absl::Milliseconds(200);  // between empty LeaseTask calls
  absl::Duration heartbeat_interval = absl::Seconds(2);
  // Address the other members of a gang reach this worker's collective (Gloo) connections on.
  std::string advertise_host = "127.0.0.1";
  // Rendezvous and per-collective timeout of gang tasks; a dead peer fails the task (retriable)
  // after at most this long.
  absl::Duration collective_timeout = absl::Seconds(120);
  // "gloo" (CPU, TCP) or "nccl" (GPU workers; builds with CUDA).
  std::string collectives = "gloo";
  // Where tasks compute (--device); every stage's tensors live there.
  ComputeDevice device;
  // Capabilities registered with the coordinator (shown by `moec workers`).
  int64_t memory_bytes = 0;         // physical memory of the host
  int64_t device_memory_bytes = 0;  // memory of the GPU (device.cuda)
  // What each task's profile is measured against (TaskProfile): the device's fp32 GEMM rate
  // (MeasureGemmGflops; 0: not measured) and the intra-op threads.
  double gemm_gflops = 0;
  int threads = 0;
  // Sets the compute threads (libtorch and OpenBLAS) before each task: the job's
  // (Recipe::threads) when it fixes them, else `threads`. Null: left as they are.
  std::function<void(int)> set_threads;
  // The worker's activation store and the address its ActivationServer serves it on, and the
  // reader of its peers' stores (not owned; null: no store, every output goes to the
  // coordinator). A tensor whose holders do not answer is waited for this long before the task
  // fails with DataLoss, which makes the coordinator re-run the task that produced it.
  ActivationStore* activations = nullptr;
  std::string data_address;
  PeerReader* peers = nullptr;
  absl::Duration holder_wait = absl::Seconds(30);
  absl::Status Validate() const;
};

// Thread-safe. Start() runs the loops in threads owned by the Worker; Stop() (or the destructor)
// joins them. The client and registry must outlive the Worker.
class Worker {
 public:
  Worker(CoordinatorClient* client, const stages::StageRegistry* registry, WorkerOptions options)
      : client_(client), registry_(registry), options_(std::move(options)) {}
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Registers and starts the loops. Errors: those of RegisterWorker.
  absl::Status Start();
  // Stops after the current task (its stage is asked to cancel); idempotent.
  void Stop();

  int64_t tasks_done() const { return tasks_done_.load(); }
  int64_t tasks_failed() const { return tasks_failed_.load(); }
  std::string worker_id() const;

 private:
  void LeaseLoop();
  void HeartbeatLoop();
  // Runs the task and reports it; returns the next task when the completing call granted one.
  std::optional<Lease> RunOne(const Lease& lease);
  // Reports the task's `result` (completion by rank 0, or failure unless it was `cancelled`) and
  // counts it; returns the next task when the completing call granted one.
  std::optional<Lease> Report(const Lease& lease, const std::string& id, const absl::Status& result,
                              int64_t compute_ms, const v1::TaskProfile& profile,
                              const std::atomic<bool>& cancelled);
  // Registers again after the coordinator said it does not know `failed_id` (the id the failed
  // call used), with that id as the previous one; nothing when the other thread already did.
  absl::Status Reregister(const std::string& failed_id);

  CoordinatorClient* const client_;             // Not owned.
  const stages::StageRegistry* const registry_;  // Not owned.
  const WorkerOptions options_;

  absl::Notification stop_;
  std::atomic<int64_t> tasks_done_{0};
  std::atomic<int64_t> tasks_failed_{0};
  absl::Mutex register_mu_;  // one registration at a time (heartbeat and lease threads)
  mutable absl::Mutex mu_;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  std::string current_task_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<std::atomic<bool>> current_cancelled_ ABSL_GUARDED_BY(mu_);
  // Threads last: joined before the members above are destroyed.
  std::thread lease_thread_;
  std::thread heartbeat_thread_;
};

}  // namespace moec::worker

#endif  // MOEC_WORKER_WORKER_H_
