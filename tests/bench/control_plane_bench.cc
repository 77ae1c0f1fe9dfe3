// Control-plane throughput: 2,000 noop tasks over 4 worker processes on loopback gRPC, against
// a bare unary round trip measured in the same run.
//
// This process runs a real CoordinatorService (RocksDB JobStore; completions logged, and synced
// by the background syncer as moec-coordinator does by default) on 127.0.0.1 and starts 4
// worker processes (this binary with --worker), each with its own channel, as a cluster of
// moec-worker daemons is: (noop) -> CompleteTask, which also asks for the next task, and
// LeaseTask (long poll) only when the completion brought none. The job is 4 independent noop
// stages over a 500-layer model: 4 chains of 500 tasks. Prints tasks/s, the p50/p99 of
// lease-to-complete latency (task in hand -> CompleteTask returned) and the p50 of a bare round
// trip (Heartbeat from worker 0 while everything else is idle, before and after the run), and
// their ratio; also that round trip with every worker calling at once.
// BENCH_LEASE_NEXT=0 measures the two-call protocol (LeaseTask, then CompleteTask, per task);
// BENCH_DURABLE=1 makes every completion wait for its log sync (--durable-completions);
// BENCH_LOG_SYNC_MS sets the background syncer's interval (--log-sync-interval-ms);
// BENCH_STORE=memory keeps the JobStore in memory (no RocksDB: the floor of the rest);
// BENCH_WORKERS sets the number of worker processes (default 4).
//
// Usage: control_plane_bench [--tasks_per_chain N]
// Targets (issue #4): >= 1,000 tasks/s; p50 overhead <= 5 round trips.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/process_tuning.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_service.h"
#include "grpcpp/grpcpp.h"
#include "storage/in_memory_kv_store.h"
#include "storage/rocksdb_kv_store.h"
#include "tests/bench/control_plane_bench.h"

extern char** environ;

namespace control_plane_bench {
namespace {

namespace fs = std::filesystem;

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

// --- coordinator process: the workers, seen from here -------------------------------------
class WorkerProcess {
 public:
  // Starts `self --worker address index`, its stdin and stdout piped to this process.
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const std::string& self,
                                                              const std::string& address, int index) {
    int in[2], out[2];
    // Close-on-exec: a later worker must not inherit this one's pipe ends (it would hold its
    // stdin open past our EOF). dup2 onto stdin/stdout clears the flag in the child.
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    const std::string idx = std::to_string(index);
    std::vector<char*> args = {const_cast<char*>(self.c_str()), const_cast<char*>("--worker"),
                               const_cast<char*>(address.c_str()), const_cast<char*>(idx.c_str()), nullptr};
    auto p = std::unique_ptr<WorkerProcess>(new WorkerProcess);
    const int rc = posix_spawn(&p->pid_, self.c_str(), &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    p->to_ = fdopen(in[1], "w");
    p->from_ = fdopen(out[0], "r");
    if (rc != 0) return absl::InternalError(absl::StrCat("posix_spawn ", self, ": ", strerror(rc)));
    return p;
  }
  // Waits for the worker to have registered.
  absl::Status Ready() { return Read("ready").status(); }
  ~WorkerProcess() {
    if (to_ != nullptr) std::fclose(to_);  // EOF: the worker exits
    if (from_ != nullptr) std::fclose(from_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }

  void Send(const std::string& command) {
    std::fprintf(to_, "%s\n", command.c_str());
    std::fflush(to_);
  }
  // The rest of the next answer line, which must start with `tag`.
  absl::StatusOr<std::string> Read(absl::string_view tag) {
    std::string line;
    char buf[1 << 16];
    while (std::fgets(buf, sizeof(buf), from_) != nullptr) {
      line += buf;
      if (!line.empty() && line.back() == '\n') break;
    }
    if (!line.empty() && line.back() == '\n') line.pop_back();
    if (!absl::StartsWith(line, absl::StrCat(tag, " ")) && line != tag) {
      return absl::InternalError(absl::StrCat("worker ", pid_, " answered '", line.substr(0, 200),
                                              "' (expected ", tag, ")"));
    }
    return line.substr(std::min(line.size(), tag.size() + 1));
  }
  absl::StatusOr<std::vector<double>> ReadValues(absl::string_view tag) {
    MOEC_ASSIGN_OR_RETURN(std::string rest, Read(tag));
    std::vector<double> v;
    for (absl::string_view x : absl::StrSplit(rest, ' ', absl::SkipEmpty())) v.push_back(std::atof(std::string(x).c_str()));
    return v;
  }

 private:
  WorkerProcess() = default;
  pid_t pid_ = -1;
  FILE* to_ = nullptr;
  FILE* from_ = nullptr;
};

// --- coordinator process ---------------------------------------------------------------------

// BENCH_WORKERS and --tasks_per_chain; 2 (after printing the usage) when out of range.
int ParseSettings(int argc, char** argv, int* chain, int* workers) {
  if (argc == 3 && std::string(argv[1]) == "--tasks_per_chain") *chain = std::atoi(argv[2]);
  *workers = std::getenv("BENCH_WORKERS") ? std::atoi(std::getenv("BENCH_WORKERS")) : 4;
  if (*chain < 1 || *workers < 1 || *workers > 64) {
    std::fprintf(stderr, "usage: control_plane_bench [--tasks_per_chain N>=1]; BENCH_WORKERS 1-64\n");
    return 2;
  }
  return 0;
}

// This process's coordinator: its stores, core and gRPC server (members destroyed in reverse
// order: the server first).
struct CoordinatorSide {
  absl::StatusOr<std::unique_ptr<moec::storage::RocksDbKvStore>> kv;
  bool in_memory = false;
  std::unique_ptr<moec::storage::InMemoryKvStore> memory_kv;
  absl::StatusOr<std::unique_ptr<moec::coordinator::JobStore>> store;
  absl::StatusOr<std::unique_ptr<moec::coordinator::Coordinator>> core;
  std::unique_ptr<moec::coordinator::CoordinatorService> service;
  grpc::ServerBuilder builder;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

// A real CoordinatorService on 127.0.0.1 (RocksDB JobStore in dir/db, or BENCH_STORE=memory).
int StartCoordinator(const std::string& dir, CoordinatorSide* c) {
  moec::storage::RocksDbKvStoreOptions ko;
  ko.path = dir + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) ko.column_families.push_back({cf, false});
  c->kv = moec::storage::RocksDbKvStore::Open(ko);
  auto& kv = c->kv;
  CHECK_OK(kv.status());
  // BENCH_STORE=memory: the JobStore on an InMemoryKvStore — the floor RocksDB is measured against.
  c->in_memory = std::getenv("BENCH_STORE") && std::string(std::getenv("BENCH_STORE")) == "memory";
  c->memory_kv =
      std::make_unique<moec::storage::InMemoryKvStore>(moec::coordinator::JobStoreColumnFamilies());
  moec::storage::KvStore* job_kv =
      c->in_memory ? static_cast<moec::storage::KvStore*>(c->memory_kv.get()) : kv->get();
  c->store = moec::coordinator::JobStore::Open(job_kv);
  auto& store = c->store;
  CHECK_OK(store.status());
  moec::coordinator::CoordinatorOptions copts;
  copts.durable_completions = std::getenv("BENCH_DURABLE") && std::atoi(std::getenv("BENCH_DURABLE")) != 0;
  if (std::getenv("BENCH_LOG_SYNC_MS")) copts.log_sync_interval_ms = std::atoi(std::getenv("BENCH_LOG_SYNC_MS"));
  c->core = moec::coordinator::Coordinator::Create(store->get(), copts, [] { return absl::Now(); });
  auto& core = c->core;
  CHECK_OK(core.status());
  c->service = std::make_unique<moec::coordinator::CoordinatorService>(core->get(), "bench");
  grpc::ServerBuilder& builder = c->builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &c->port);
  builder.RegisterService(c->service.get());
  moec::coordinator::ConfigureServerThreads(&builder);  // as moec-coordinator does
  c->server = builder.BuildAndStart();
  c->address = absl::StrCat("127.0.0.1:", c->port);
  return 0;
}

// Starts the worker processes and waits for them to have registered.
int StartWorkers(const std::string& address, int n,
                 std::vector<std::unique_ptr<WorkerProcess>>* workers) {
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  for (int i = 0; i < n; ++i) {
    auto w = WorkerProcess::Start(self, address, i);
    CHECK_OK(w.status());
    workers->push_back(*std::move(w));
  }
  for (auto& w : *workers) CHECK_OK(w->Ready());  // they start at once (each loads its libraries)
  return 0;
}

// The same bare round trip with every worker calling at once, back to back: what the
// machine's cores (shared here by the workers and the coordinator) make of a call at this
// concurrency, before any control-plane work.
int MeasureLoadedRtt(std::vector<std::unique_ptr<WorkerProcess>>& workers,
                     std::vector<double>* loaded) {
  for (auto& w : workers) w->Send("rtt 1000");
  for (auto& w : workers) {
    auto v = w->ReadValues("rtt");
    CHECK_OK(v.status());
    loaded->insert(loaded->end(), v->begin(), v->end());
  }
  return 0;
}

// What the workers report of the run.
struct RunResult {
  Clock::time_point t0, finished;  // the workers were told to run; the last completion
  std::vector<double> all, leases;  // lease->complete latencies, LeaseTask calls (ms)
  int granted_with_completion = 0, completed = 0;
};

// The job: kWorkers independent noop stages over the model, i.e. chains of its layers.
int SubmitJob(absl::StatusOr<std::unique_ptr<moec::coordinator::Coordinator>>& core,
              const std::string& dir, int workers, std::string* job_id) {
  std::string yaml = "name: bench\nmodel: m\noutput: out\nstages:\n";
  // Distinct salts: identical stages would share fingerprints and be reused, not run.
  for (int s = 0; s < workers; ++s) {
    absl::StrAppend(&yaml, "  - {id: s", s, ", kind: noop, with: {salt: ", s, "}}\n");
  }
  auto job = (*core)->SubmitJob(yaml, dir + "/r.yaml", {});
  CHECK_OK(job.status());
  *job_id = job->job.job_id();
  return 0;
}

// Waits for the job to end; 1 unless it succeeded.
int WaitForJob(absl::StatusOr<std::unique_ptr<moec::coordinator::Coordinator>>& core,
               const std::string& job_id, Clock::time_point t0) {
  auto last_progress = t0;
  while (true) {
    auto j = (*core)->GetJob(job_id);
    CHECK_OK(j.status());
    if (j->state() != moec::v1::JOB_PENDING && j->state() != moec::v1::JOB_RUNNING) {
      if (j->state() != moec::v1::JOB_SUCCEEDED) {
        std::fprintf(stderr, "job %s ended %s: %s\n", job_id.c_str(), moec::v1::JobState_Name(j->state()).c_str(),
                     j->error().c_str());
        return 1;
      }
      break;
    }
    if (Clock::now() - last_progress > std::chrono::seconds(1)) {
      last_progress = Clock::now();
      std::fprintf(stderr, "  %.0f s: job running\n", Ms(last_progress - t0) / 1000);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return 0;
}

// Reads each worker's report of the run (after "stop").
int CollectReports(std::vector<std::unique_ptr<WorkerProcess>>& workers, RunResult* r) {
  for (auto& w : workers) {
    auto lat = w->ReadValues("lat");
    CHECK_OK(lat.status());
    auto lease = w->ReadValues("lease");
    CHECK_OK(lease.status());
    auto done = w->Read("done");
    CHECK_OK(done.status());
    long long last_ns = 0;
    int granted = 0;
    std::sscanf(done->c_str(), "%lld %d", &last_ns, &granted);
    // Each worker's last completion: the job ends at the latest (a worker's final long poll,
    // which finds nothing, is not part of it). steady_clock is CLOCK_MONOTONIC: one clock for
    // all processes of this machine.
    r->finished = std::max(r->finished, Clock::time_point(Clock::duration(last_ns)));
    r->granted_with_completion += granted;
    r->completed += static_cast<int>(lat->size());
    r->all.insert(r->all.end(), lat->begin(), lat->end());
    r->leases.insert(r->leases.end(), lease->begin(), lease->end());
  }
  return 0;
}

// Runs the job (chain tasks per worker) to its end.
int RunJob(absl::StatusOr<std::unique_ptr<moec::coordinator::Coordinator>>& core,
           const std::string& dir, int chain, std::vector<std::unique_ptr<WorkerProcess>>& workers,
           RunResult* r) {
  const int num_workers = static_cast<int>(workers.size());
  std::string job_id;
  if (const int rc = SubmitJob(core, dir, num_workers, &job_id); rc != 0) return rc;
  const int total = num_workers * chain;
  r->t0 = Clock::now();
  for (auto& w : workers) w->Send("run");
  if (const int rc = WaitForJob(core, job_id, r->t0); rc != 0) return rc;
  for (auto& w : workers) w->Send("stop");  // the job ended: each worker finds nothing more
  r->finished = r->t0;
  if (const int rc = CollectReports(workers, r); rc != 0) return rc;
  if (r->completed != total) {
    std::fprintf(stderr, "workers completed %d tasks, the job has %d\n", r->completed, total);
    return 1;
  }
  return 0;
}

// The figures the run is compared with.
struct Baselines {
  std::vector<double> rtt;     // bare round trips from worker 0 on the idle coordinator
  std::vector<double> loaded;  // the same with every worker calling at once
  int64_t log_syncs = 0;       // the store's log syncs during the run, and their mean time
  double log_sync_ms = 0;
  std::vector<double> fsyncs, synced_writes, buffered_writes;  // commit costs, alone
};

// The disk's cost of one durable commit: a small append + fdatasync, as the WAL does.
std::vector<double> FsyncProbe(const std::string& dir) {
  std::vector<double> fsyncs;
  FILE* f = std::fopen((dir + "/fsync_probe").c_str(), "w");
  for (int i = 0; i < 200 && f != nullptr; ++i) {
    auto s0 = Clock::now();
    std::fwrite("0123456789abcdef", 1, 16, f);
    std::fflush(f);
    fdatasync(fileno(f));
    fsyncs.push_back(Ms(Clock::now() - s0));
  }
  if (f != nullptr) std::fclose(f);
  return fsyncs;
}

int MeasureCommits(absl::StatusOr<std::unique_ptr<moec::storage::RocksDbKvStore>>& kv,
                   Baselines* out) {
  // The same store's cost of one durable commit of a completion's size (1 KiB), alone.
  for (int i = 0; i < 200; ++i) {
    moec::storage::KvWriteBatch b;
    b.Put(moec::coordinator::JobStoreColumnFamilies()[0], absl::StrCat("probe", i), std::string(1024, 'x'));
    auto s0 = Clock::now();
    CHECK_OK((*kv)->Write(b, moec::storage::Durability::kSync));
    out->synced_writes.push_back(Ms(Clock::now() - s0));
  }
  // The same store's cost of a buffered commit of a completion's shape (8 puts, 2 KiB), alone.
  for (int i = 0; i < 2000; ++i) {
    moec::storage::KvWriteBatch b;
    const std::vector<std::string> cfs = moec::coordinator::JobStoreColumnFamilies();
    for (int k = 0; k < 8; ++k) {
      b.Put(cfs[k % cfs.size()], absl::StrCat("probe/", i * 7919 % 2000, "/", k), std::string(256, 'x'));
    }
    auto s0 = Clock::now();
    CHECK_OK((*kv)->Write(b, moec::storage::Durability::kBuffered));
    out->buffered_writes.push_back(Ms(Clock::now() - s0));
  }
  return 0;
}

void PrintReport(int kWorkers, int total, bool in_memory, const RunResult& run,
                 const Baselines& b) {
  const bool lease_next = LeaseNext();
  const double seconds = Ms(run.finished - run.t0) / 1000;
  const int64_t log_syncs = b.log_syncs;
  const double rtt50 = Percentile(b.rtt, 0.5);
  const double fsync50 = Percentile(b.fsyncs, 0.5);
  const std::vector<double>& all = run.all;
  const std::vector<double>& leases = run.leases;
  const std::vector<double>& loaded = b.loaded;
  std::printf("control_plane_bench: %d noop tasks, %d worker processes, loopback gRPC, %s JobStore\n", total, kWorkers,
              in_memory ? "in-memory" : "RocksDB");
  std::printf("protocol              %s (%d of %d tasks granted with a completion)\n",
              lease_next ? "CompleteTask asks for the next task" : "LeaseTask + CompleteTask",
              run.granted_with_completion, total);
  std::printf("log syncs             %8lld         (%.2f completions per sync: group commit; %.3f ms each)\n",
              static_cast<long long>(log_syncs), static_cast<double>(total) / std::max<int64_t>(1, log_syncs),
              b.log_sync_ms);
  std::printf("throughput            %8.0f tasks/s   (target >= 1000)\n", total / seconds);
  std::printf("lease->complete p50   %8.3f ms\n", Percentile(all, 0.5));
  std::printf("lease->complete p99   %8.3f ms\n", Percentile(all, 0.99));
  std::printf("LeaseTask call p50    %8.3f ms   (p90 %.3f; asking -> a task in hand)\n",
              Percentile(leases, 0.5), Percentile(leases, 0.9));
  std::printf("bare round trip p50   %8.3f ms\n", rtt50);
  std::printf("loaded round trip p50 %8.3f ms   (%d workers calling at once: %.2f round trips)\n",
              Percentile(loaded, 0.5), kWorkers, Percentile(loaded, 0.5) / rtt50);
  std::printf("fdatasync p50         %8.3f ms   (one synced commit per completion)\n", fsync50);
  std::printf("RocksDB synced commit %8.3f ms p50 (1 KiB batch, alone)\n", Percentile(b.synced_writes, 0.5));
  std::printf("RocksDB logged commit %8.3f ms p50 (8 puts, 2 KiB, unsynced, alone)\n",
              Percentile(b.buffered_writes, 0.5));
  std::printf("RESULT tasks_per_s=%.0f p50_ms=%.3f p99_ms=%.3f rtt_p50_ms=%.3f fsync_p50_ms=%.3f "
              "commit_p50_ms=%.3f lease_call_p50_ms=%.3f "
              "p50_in_round_trips=%.2f p50_minus_fsync_in_round_trips=%.2f loaded_rtt_in_round_trips=%.2f\n",
              total / seconds, Percentile(all, 0.5), Percentile(all, 0.99), rtt50, fsync50,
              Percentile(b.synced_writes, 0.5), Percentile(leases, 0.5),
              Percentile(all, 0.5) / rtt50, (Percentile(all, 0.5) - fsync50) / rtt50,
              Percentile(loaded, 0.5) / rtt50);
}

int Main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") return WorkerMain(argv[2], std::atoi(argv[3]));
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();  // as moec-coordinator does
  int chain = 500, kWorkers = 4;
  if (const int rc = ParseSettings(argc, argv, &chain, &kWorkers); rc != 0) return rc;
  const std::string dir = fs::temp_directory_path().string() + "/moec_cp_bench";
  fs::remove_all(dir);
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{\"num_hidden_layers\": " << chain << "}";

  CoordinatorSide c;
  if (const int rc = StartCoordinator(dir, &c); rc != 0) return rc;
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  if (const int rc = StartWorkers(c.address, kWorkers, &workers); rc != 0) return rc;
  // Baseline: a bare authenticated unary round trip on the idle coordinator from worker 0,
  // 1,000 calls before the run and 1,000 after it (this VM's speed drifts; the median of both
  // is the unit).
  Baselines b;
  auto measure_rtt = [&]() -> absl::Status {
    workers[0]->Send("rtt 1000");
    MOEC_ASSIGN_OR_RETURN(std::vector<double> v, workers[0]->ReadValues("rtt"));
    b.rtt.insert(b.rtt.end(), v.begin(), v.end());
    return absl::OkStatus();
  };
  CHECK_OK(measure_rtt());
  if (const int rc = MeasureLoadedRtt(workers, &b.loaded); rc != 0) return rc;

  RunResult run;
  if (const int rc = RunJob(c.core, dir, chain, workers, &run); rc != 0) return rc;
  CHECK_OK(measure_rtt());
  b.log_syncs = (*c.kv)->log_syncs();
  b.log_sync_ms = (*c.kv)->log_sync_seconds() * 1000 / std::max<int64_t>(1, b.log_syncs);
  b.fsyncs = FsyncProbe(dir);
  if (const int rc = MeasureCommits(c.kv, &b); rc != 0) return rc;
  PrintReport(kWorkers, kWorkers * chain, c.in_memory, run, b);
  workers.clear();  // EOF on their stdin: they exit
  c.server->Shutdown();
  fs::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace control_plane_bench

int main(int argc, char** argv) { return control_plane_bench::Main(argc, argv); }
