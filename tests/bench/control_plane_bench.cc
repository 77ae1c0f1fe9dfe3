// Control-plane throughput: 2,000 noop tasks over 4 workers on loopback gRPC, against a bare
// unary round trip measured in the same run.
//
// A real CoordinatorService (RocksDB JobStore; completions logged, and synced by the background
// syncer as moec-coordinator does by default) listens on 127.0.0.1; 4 worker
// threads, each with its own channel, loop as moec-worker does: (noop) -> CompleteTask, which
// also asks for the next task, and LeaseTask (long poll) only when the completion brought none.
// The job is 4 independent noop stages over a 500-layer model: 4 chains of 500 tasks. Prints
// tasks/s, the p50/p99 of lease-to-complete latency (task in hand -> CompleteTask returned) and
// the p50 of a bare round trip (Heartbeat on an idle coordinator, before and after the run), and
// their ratio; also that round trip with every worker calling at once.
// BENCH_LEASE_NEXT=0 measures the two-call protocol (LeaseTask, then CompleteTask, per task);
// BENCH_DURABLE=1 makes every completion wait for its log sync (--durable-completions);
// BENCH_LOG_SYNC_MS sets the background syncer's interval (--log-sync-interval-ms).
//
// Usage: control_plane_bench [--tasks_per_chain N]
// Targets (issue #4): >= 1,000 tasks/s; p50 overhead <= 5 round trips.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/process_tuning.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_service.h"
#include "grpcpp/grpcpp.h"
#include "storage/rocksdb_kv_store.h"
#include "worker/coordinator_client.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

#define CHECK_OK(expr)                                                          \
  do {                                                                          \
    auto s_ = (expr);                                                           \
    if (!s_.ok()) {                                                             \
      std::fprintf(stderr, "%s: %s\n", #expr, std::string(s_.message()).c_str()); \
      return 1;                                                                 \
    }                                                                           \
  } while (0)

int Main(int argc, char** argv) {
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();  // as moec-coordinator does
  int chain = 500;
  if (argc == 3 && std::string(argv[1]) == "--tasks_per_chain") chain = std::atoi(argv[2]);
  const int kWorkers = std::getenv("BENCH_WORKERS") ? std::atoi(std::getenv("BENCH_WORKERS")) : 4;
  const std::string dir = fs::temp_directory_path().string() + "/moec_cp_bench";
  fs::remove_all(dir);
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{\"num_hidden_layers\": " << chain << "}";

  moec::storage::RocksDbKvStoreOptions ko;
  ko.path = dir + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) ko.column_families.push_back({cf, false});
  auto kv = moec::storage::RocksDbKvStore::Open(ko);
  CHECK_OK(kv.status());
  auto store = moec::coordinator::JobStore::Open(kv->get());
  CHECK_OK(store.status());
  moec::coordinator::CoordinatorOptions copts;
  copts.durable_completions = std::getenv("BENCH_DURABLE") && std::atoi(std::getenv("BENCH_DURABLE")) != 0;
  if (std::getenv("BENCH_LOG_SYNC_MS")) copts.log_sync_interval_ms = std::atoi(std::getenv("BENCH_LOG_SYNC_MS"));
  auto core = moec::coordinator::Coordinator::Create(store->get(), copts, [] { return absl::Now(); });
  CHECK_OK(core.status());
  moec::coordinator::CoordinatorService service(core->get(), "bench");
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  moec::coordinator::ConfigureServerThreads(&builder);  // as moec-coordinator does
  auto server = builder.BuildAndStart();
  const std::string address = absl::StrCat("127.0.0.1:", port);

  std::vector<std::unique_ptr<moec::worker::CoordinatorClient>> clients;
  std::vector<std::string> ids;
  for (int i = 0; i < kWorkers; ++i) {
    moec::worker::GrpcClientOptions o;
    o.address = address;
    o.lease_wait_ms = std::atoi(std::getenv("BENCH_LEASE_WAIT_MS") ? std::getenv("BENCH_LEASE_WAIT_MS") : "1000");
    o.token = "bench";
    auto c = moec::worker::NewGrpcCoordinatorClient(o);
    CHECK_OK(c.status());
    auto id = (*c)->RegisterWorker(absl::StrCat("bench", i), false, 0);
    CHECK_OK(id.status());
    ids.push_back(*id);
    clients.push_back(*std::move(c));
  }
  // Baseline: a bare authenticated unary round trip on the idle coordinator, 1,000 calls
  // before the run and 1,000 after it (this VM's speed drifts; the median of both is the unit).
  std::vector<double> rtt;
  auto measure_rtt = [&]() -> absl::Status {
    for (int i = 0; i < 1000; ++i) {
      auto r0 = Clock::now();
      MOEC_RETURN_IF_ERROR(clients[0]->Heartbeat(ids[0], {}).status());
      rtt.push_back(Ms(Clock::now() - r0));
    }
    return absl::OkStatus();
  };
  CHECK_OK(measure_rtt());

  // The same bare round trip with every worker calling at once, back to back: what the
  // machine's cores (shared here by the workers and the coordinator) make of a call at this
  // concurrency, before any control-plane work.
  std::vector<std::vector<double>> loaded_rtt(kWorkers);
  {
    std::vector<std::thread> callers;
    for (int w = 0; w < kWorkers; ++w) {
      callers.emplace_back([&, w] {
        for (int i = 0; i < 1000; ++i) {
          auto c0 = Clock::now();
          if (!clients[w]->Heartbeat(ids[w], {}).ok()) return;
          loaded_rtt[w].push_back(Ms(Clock::now() - c0));
        }
      });
    }
    for (auto& t : callers) t.join();
  }
  std::vector<double> loaded;
  for (auto& v : loaded_rtt) loaded.insert(loaded.end(), v.begin(), v.end());

  std::string yaml = "name: bench\nmodel: m\noutput: out\nstages:\n";
  // Distinct salts: identical stages would share fingerprints and be reused, not run.
  for (int s = 0; s < kWorkers; ++s) {
    absl::StrAppend(&yaml, "  - {id: s", s, ", kind: noop, with: {salt: ", s, "}}\n");
  }
  auto job = (*core)->SubmitJob(yaml, dir + "/r.yaml", {});
  CHECK_OK(job.status());
  const int total = kWorkers * chain;

  // BENCH_LEASE_NEXT=0: the two-call protocol (LeaseTask, then CompleteTask) for every task;
  // default: as moec-worker does, the completing call also asks for the next task.
  const bool lease_next = !std::getenv("BENCH_LEASE_NEXT") || std::atoi(std::getenv("BENCH_LEASE_NEXT")) != 0;
  std::atomic<int> done{0}, granted_with_completion{0};
  std::vector<std::vector<double>> latency(kWorkers), lease_calls(kWorkers);
  std::atomic<bool> failed{false};
  // Each worker's last completion: the job ends at the latest (a worker's final long poll, which
  // finds nothing, is not part of it).
  std::vector<Clock::time_point> finished(kWorkers);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      std::optional<moec::worker::Lease> next;
      auto leased_at = Clock::now();
      while (done.load() < total && !failed.load()) {
        if (!next.has_value()) {
          const auto asked = Clock::now();
          auto lease = clients[w]->LeaseTask(ids[w]);
          if (!lease.ok()) {
            std::fprintf(stderr, "LeaseTask: %s\n", lease.status().ToString().c_str());
            failed = true;
            return;
          }
          if (!lease->has_value()) {  // nothing ready now: back off briefly, as moec-worker does
            std::this_thread::sleep_for(std::chrono::microseconds(500));
            continue;
          }
          next = *std::move(lease);
          leased_at = Clock::now();
          lease_calls[w].push_back(Ms(leased_at - asked));
        }
        const std::string task_id = next->task.task_id();
        next.reset();
        if (absl::Status s = clients[w]->CompleteTask(ids[w], task_id, 0, lease_next ? &next : nullptr);
            !s.ok()) {
          std::fprintf(stderr, "CompleteTask: %s\n", s.ToString().c_str());
          failed = true;
          return;
        }
        finished[w] = Clock::now();
        latency[w].push_back(Ms(finished[w] - leased_at));
        leased_at = finished[w];  // a task granted with the completion is in hand now
        if (next.has_value()) ++granted_with_completion;
        ++done;
      }
    });
  }
  while (done.load() < total && !failed.load()) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    std::fprintf(stderr, "  %d/%d tasks\n", done.load(), total);
  }
  for (auto& t : threads) t.join();
  if (!failed.load()) CHECK_OK(measure_rtt());
  const double seconds = Ms(*std::max_element(finished.begin(), finished.end()) - t0) / 1000;
  const int64_t log_syncs = (*kv)->log_syncs();
  const double log_sync_ms = (*kv)->log_sync_seconds() * 1000 / std::max<int64_t>(1, log_syncs);
  if (failed.load()) {
    std::fprintf(stderr, "a worker RPC failed\n");
    return 1;
  }
  std::vector<double> all, leases;
  for (auto& v : latency) all.insert(all.end(), v.begin(), v.end());
  for (auto& v : lease_calls) leases.insert(leases.end(), v.begin(), v.end());
  const double rtt50 = Percentile(rtt, 0.5);
  // The disk's cost of one durable commit: a small append + fdatasync, as the WAL does.
  std::vector<double> fsyncs;
  {
    FILE* f = std::fopen((dir + "/fsync_probe").c_str(), "w");
    for (int i = 0; i < 200 && f != nullptr; ++i) {
      auto s0 = Clock::now();
      std::fwrite("0123456789abcdef", 1, 16, f);
      std::fflush(f);
      fdatasync(fileno(f));
      fsyncs.push_back(Ms(Clock::now() - s0));
    }
    if (f != nullptr) std::fclose(f);
  }
  const double fsync50 = Percentile(fsyncs, 0.5);
  // The same store's cost of one durable commit of a completion's size (1 KiB), alone.
  std::vector<double> synced_writes;
  for (int i = 0; i < 200; ++i) {
    moec::storage::KvWriteBatch b;
    b.Put(moec::coordinator::JobStoreColumnFamilies()[0], absl::StrCat("probe", i), std::string(1024, 'x'));
    auto s0 = Clock::now();
    CHECK_OK((*kv)->Write(b, moec::storage::Durability::kSync));
    synced_writes.push_back(Ms(Clock::now() - s0));
  }
  // The same store's cost of a buffered commit of a completion's shape (8 puts, 2 KiB), alone.
  std::vector<double> buffered_writes;
  for (int i = 0; i < 2000; ++i) {
    moec::storage::KvWriteBatch b;
    const std::vector<std::string> cfs = moec::coordinator::JobStoreColumnFamilies();
    for (int k = 0; k < 8; ++k) {
      b.Put(cfs[k % cfs.size()], absl::StrCat("probe/", i * 7919 % 2000, "/", k), std::string(256, 'x'));
    }
    auto s0 = Clock::now();
    CHECK_OK((*kv)->Write(b, moec::storage::Durability::kBuffered));
    buffered_writes.push_back(Ms(Clock::now() - s0));
  }
  std::printf("control_plane_bench: %d noop tasks, %d workers, loopback gRPC, RocksDB JobStore\n", total, kWorkers);
  std::printf("protocol              %s (%d of %d tasks granted with a completion)\n",
              lease_next ? "CompleteTask asks for the next task" : "LeaseTask + CompleteTask",
              granted_with_completion.load(), total);
  std::printf("log syncs             %8lld         (%.2f completions per sync: group commit; %.3f ms each)\n",
              static_cast<long long>(log_syncs), static_cast<double>(total) / std::max<int64_t>(1, log_syncs),
              log_sync_ms);
  std::printf("throughput            %8.0f tasks/s   (target >= 1000)\n", total / seconds);
  std::printf("lease->complete p50   %8.3f ms\n", Percentile(all, 0.5));
  std::printf("lease->complete p99   %8.3f ms\n", Percentile(all, 0.99));
  std::printf("LeaseTask call p50    %8.3f ms   (p90 %.3f; asking -> a task in hand)\n",
              Percentile(leases, 0.5), Percentile(leases, 0.9));
  std::printf("bare round trip p50   %8.3f ms\n", rtt50);
  std::printf("loaded round trip p50 %8.3f ms   (%d workers calling at once: %.2f round trips)\n",
              Percentile(loaded, 0.5), kWorkers, Percentile(loaded, 0.5) / rtt50);
  std::printf("fdatasync p50         %8.3f ms   (one synced commit per completion)\n", fsync50);
  std::printf("RocksDB synced commit %8.3f ms p50 (1 KiB batch, alone)\n", Percentile(synced_writes, 0.5));
  std::printf("RocksDB logged commit %8.3f ms p50 (8 puts, 2 KiB, unsynced, alone)\n",
              Percentile(buffered_writes, 0.5));
  std::printf("RESULT tasks_per_s=%.0f p50_ms=%.3f p99_ms=%.3f rtt_p50_ms=%.3f fsync_p50_ms=%.3f "
              "commit_p50_ms=%.3f lease_call_p50_ms=%.3f "
              "p50_in_round_trips=%.2f p50_minus_fsync_in_round_trips=%.2f loaded_rtt_in_round_trips=%.2f\n",
              total / seconds, Percentile(all, 0.5), Percentile(all, 0.99), rtt50, fsync50,
              Percentile(synced_writes, 0.5), Percentile(leases, 0.5),
              Percentile(all, 0.5) / rtt50, (Percentile(all, 0.5) - fsync50) / rtt50,
              Percentile(loaded, 0.5) / rtt50);
  server->Shutdown();
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
