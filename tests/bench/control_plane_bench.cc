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
#include "worker/coordinator_client.h"

extern char** environ;

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

std::string Join(const std::vector<double>& v) {
  return absl::StrJoin(v, " ", [](std::string* out, double x) { absl::StrAppend(out, x); });
}

// --- worker process -------------------------------------------------------------------------
// Reads commands from stdin, one per line, and answers each with one line on stdout:
//   rtt N      N bare Heartbeats back to back      -> "rtt <ms> <ms> ..."
//   run        lease and complete until told stop  -> "lat <ms> ...", "lease <ms> ...",
//                                                     "done <last completion, ns> <granted>"
//   stop       (read while idle in a run: the job ended)
// Errors: "error <message>" and exit 1.
int WorkerMain(const std::string& address, int index) {
  moec::SkipMutexDeadlockDetection();  // as moec-worker does
  moec::worker::GrpcClientOptions o;
  o.address = address;
  o.lease_wait_ms = std::atoi(std::getenv("BENCH_LEASE_WAIT_MS") ? std::getenv("BENCH_LEASE_WAIT_MS") : "1000");
  o.token = "bench";
  auto fail = [](absl::string_view what, const absl::Status& s) {
    std::printf("error %s: %s\n", std::string(what).c_str(), s.ToString().c_str());
    std::fflush(stdout);
    return 1;
  };
  auto client = moec::worker::NewGrpcCoordinatorClient(o);
  if (!client.ok()) return fail("client", client.status());
  auto id = (*client)->RegisterWorker(absl::StrCat("bench", index), false, 0);
  if (!id.ok()) return fail("RegisterWorker", id.status());
  std::printf("ready %s\n", id->c_str());
  std::fflush(stdout);
  const bool lease_next = !std::getenv("BENCH_LEASE_NEXT") || std::atoi(std::getenv("BENCH_LEASE_NEXT")) != 0;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (absl::StartsWith(line, "rtt ")) {
      const int n = std::atoi(line.c_str() + 4);
      std::vector<double> rtt;
      for (int i = 0; i < n; ++i) {
        auto r0 = Clock::now();
        if (auto s = (*client)->Heartbeat(*id, {}).status(); !s.ok()) return fail("Heartbeat", s);
        rtt.push_back(Ms(Clock::now() - r0));
      }
      std::printf("rtt %s\n", Join(rtt).c_str());
    } else if (line == "run") {
      std::vector<double> latency, lease_calls;
      std::optional<moec::worker::Lease> next;
      int granted = 0;
      auto leased_at = Clock::now(), finished = Clock::now();
      while (true) {
        if (!next.has_value()) {
          const auto asked = Clock::now();
          auto lease = (*client)->LeaseTask(*id);
          if (!lease.ok()) return fail("LeaseTask", lease.status());
          if (!lease->has_value()) {  // nothing ready now: stop if the job ended, else back off
            pollfd p{STDIN_FILENO, POLLIN, 0};
            if (poll(&p, 1, 0) == 1) break;  // "stop"
            std::this_thread::sleep_for(std::chrono::microseconds(500));  // as moec-worker does
            continue;
          }
          next = *std::move(lease);
          leased_at = Clock::now();
          lease_calls.push_back(Ms(leased_at - asked));
        }
        const std::string task_id = next->task.task_id();
        next.reset();
        if (absl::Status s = (*client)->CompleteTask(*id, task_id, 0, lease_next ? &next : nullptr); !s.ok()) {
          return fail("CompleteTask", s);
        }
        finished = Clock::now();
        latency.push_back(Ms(finished - leased_at));
        leased_at = finished;  // a task granted with the completion is in hand now
        if (next.has_value()) ++granted;
      }
      if (!std::getline(std::cin, line) || line != "stop") return fail("run", absl::InternalError("no stop"));
      std::printf("lat %s\nlease %s\ndone %lld %d\n", Join(latency).c_str(), Join(lease_calls).c_str(),
                  static_cast<long long>(finished.time_since_epoch().count()), granted);
    } else {
      return fail("command", absl::InvalidArgumentError(line));
    }
    std::fflush(stdout);
  }
  return 0;
}

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

int Main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--worker") return WorkerMain(argv[2], std::atoi(argv[3]));
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();  // as moec-coordinator does
  int chain = 500;
  if (argc == 3 && std::string(argv[1]) == "--tasks_per_chain") chain = std::atoi(argv[2]);
  const int kWorkers = std::getenv("BENCH_WORKERS") ? std::atoi(std::getenv("BENCH_WORKERS")) : 4;
  if (chain < 1 || kWorkers < 1 || kWorkers > 64) {
    std::fprintf(stderr, "usage: control_plane_bench [--tasks_per_chain N>=1]; BENCH_WORKERS 1-64\n");
    return 2;
  }
  const std::string dir = fs::temp_directory_path().string() + "/moec_cp_bench";
  fs::remove_all(dir);
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{\"num_hidden_layers\": " << chain << "}";

  moec::storage::RocksDbKvStoreOptions ko;
  ko.path = dir + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) ko.column_families.push_back({cf, false});
  auto kv = moec::storage::RocksDbKvStore::Open(ko);
  CHECK_OK(kv.status());
  // BENCH_STORE=memory: the JobStore on an InMemoryKvStore — the floor RocksDB is measured against.
  const bool in_memory = std::getenv("BENCH_STORE") && std::string(std::getenv("BENCH_STORE")) == "memory";
  moec::storage::InMemoryKvStore memory_kv(moec::coordinator::JobStoreColumnFamilies());
  moec::storage::KvStore* job_kv = in_memory ? static_cast<moec::storage::KvStore*>(&memory_kv) : kv->get();
  auto store = moec::coordinator::JobStore::Open(job_kv);
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

  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::unique_ptr<WorkerProcess>> workers;
  for (int i = 0; i < kWorkers; ++i) {
    auto w = WorkerProcess::Start(self, address, i);
    CHECK_OK(w.status());
    workers.push_back(*std::move(w));
  }
  for (auto& w : workers) CHECK_OK(w->Ready());  // they start at once (each loads its libraries)
  // Baseline: a bare authenticated unary round trip on the idle coordinator from worker 0,
  // 1,000 calls before the run and 1,000 after it (this VM's speed drifts; the median of both
  // is the unit).
  std::vector<double> rtt;
  auto measure_rtt = [&]() -> absl::Status {
    workers[0]->Send("rtt 1000");
    MOEC_ASSIGN_OR_RETURN(std::vector<double> v, workers[0]->ReadValues("rtt"));
    rtt.insert(rtt.end(), v.begin(), v.end());
    return absl::OkStatus();
  };
  CHECK_OK(measure_rtt());

  // The same bare round trip with every worker calling at once, back to back: what the
  // machine's cores (shared here by the workers and the coordinator) make of a call at this
  // concurrency, before any control-plane work.
  std::vector<double> loaded;
  for (auto& w : workers) w->Send("rtt 1000");
  for (auto& w : workers) {
    auto v = w->ReadValues("rtt");
    CHECK_OK(v.status());
    loaded.insert(loaded.end(), v->begin(), v->end());
  }

  std::string yaml = "name: bench\nmodel: m\noutput: out\nstages:\n";
  // Distinct salts: identical stages would share fingerprints and be reused, not run.
  for (int s = 0; s < kWorkers; ++s) {
    absl::StrAppend(&yaml, "  - {id: s", s, ", kind: noop, with: {salt: ", s, "}}\n");
  }
  auto job = (*core)->SubmitJob(yaml, dir + "/r.yaml", {});
  CHECK_OK(job.status());
  const std::string job_id = job->job.job_id();
  const int total = kWorkers * chain;

  // BENCH_LEASE_NEXT=0: the two-call protocol (LeaseTask, then CompleteTask) for every task;
  // default: as moec-worker does, the completing call also asks for the next task.
  const bool lease_next = !std::getenv("BENCH_LEASE_NEXT") || std::atoi(std::getenv("BENCH_LEASE_NEXT")) != 0;
  const auto t0 = Clock::now();
  for (auto& w : workers) w->Send("run");
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
  for (auto& w : workers) w->Send("stop");  // the job ended: each worker finds nothing more
  std::vector<double> all, leases;
  Clock::time_point finished = t0;
  int granted_with_completion = 0, completed = 0;
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
    finished = std::max(finished, Clock::time_point(Clock::duration(last_ns)));
    granted_with_completion += granted;
    completed += static_cast<int>(lat->size());
    all.insert(all.end(), lat->begin(), lat->end());
    leases.insert(leases.end(), lease->begin(), lease->end());
  }
  if (completed != total) {
    std::fprintf(stderr, "workers completed %d tasks, the job has %d\n", completed, total);
    return 1;
  }
  CHECK_OK(measure_rtt());
  const double seconds = Ms(finished - t0) / 1000;
  const int64_t log_syncs = (*kv)->log_syncs();
  const double log_sync_ms = (*kv)->log_sync_seconds() * 1000 / std::max<int64_t>(1, log_syncs);
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
  std::printf("control_plane_bench: %d noop tasks, %d worker processes, loopback gRPC, %s JobStore\n", total, kWorkers,
              in_memory ? "in-memory" : "RocksDB");
  std::printf("protocol              %s (%d of %d tasks granted with a completion)\n",
              lease_next ? "CompleteTask asks for the next task" : "LeaseTask + CompleteTask",
              granted_with_completion, total);
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
  workers.clear();  // EOF on their stdin: they exit
  server->Shutdown();
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
