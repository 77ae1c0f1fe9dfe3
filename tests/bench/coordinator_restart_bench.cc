// Coordinator restart: time from opening the RocksDB JobStore to the first lease, with 100 jobs
// of 200 tasks (20,000 tasks) stored. Target (issue #4): < 2 s.
//
// Usage: coordinator_restart_bench [--jobs N] [--layers L]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator.h"
#include "storage/rocksdb_kv_store.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

moec::storage::RocksDbKvStoreOptions Options(const std::string& dir) {
  moec::storage::RocksDbKvStoreOptions o;
  o.path = dir + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) o.column_families.push_back({cf, false});
  return o;
}

int Main(int argc, char** argv) {
  int jobs = 100, layers = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--jobs") jobs = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--layers") layers = std::atoi(argv[i + 1]);
  }
  const std::string dir = fs::temp_directory_path().string() + "/moec_restart_bench";
  fs::remove_all(dir);
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{\"num_hidden_layers\": " << layers << "}";
  {
    auto kv = moec::storage::RocksDbKvStore::Open(Options(dir));
    auto store = moec::coordinator::JobStore::Open(kv->get());
    auto core = moec::coordinator::Coordinator::Create(store->get(), {}, [] { return absl::Now(); });
    if (!core.ok()) return 1;
    for (int j = 0; j < jobs; ++j) {
      std::string yaml = absl::StrCat("name: j", j, "\nmodel: m\noutput: out\nstages:\n",
                                       "  - {id: a, kind: noop, with: {salt: ", j, "}}\n");
      auto r = (*core)->SubmitJob(yaml, dir + "/r.yaml", {});
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        return 1;
      }
    }
  }
  auto t0 = Clock::now();
  auto kv = moec::storage::RocksDbKvStore::Open(Options(dir));
  auto store = moec::coordinator::JobStore::Open(kv->get());
  auto core = moec::coordinator::Coordinator::Create(store->get(), {}, [] { return absl::Now(); });
  if (!core.ok()) return 1;
  auto t1 = Clock::now();
  std::string w = (*core)->RegisterWorker({"bench"});
  auto lease = (*core)->LeaseTask(w);
  auto t2 = Clock::now();
  if (!lease.ok() || !lease->has_value()) return 1;
  size_t recovered = 0;
  for (const auto& job : (*core)->ListJobs()) recovered += (*core)->GetTasks(job.job_id())->size();
  if (recovered != static_cast<size_t>(jobs) * layers) {
    std::fprintf(stderr, "recovered %zu tasks, expected %d\n", recovered, jobs * layers);
    return 1;
  }
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf("coordinator_restart_bench: %d jobs x %d tasks stored, %zu recovered\n", jobs,
              layers, recovered);
  std::printf("open + recover  %8.1f ms\nfirst lease     %8.1f ms\n", ms(t1 - t0), ms(t2 - t1));
  std::printf("RESULT restart_to_first_lease_ms=%.1f (target < 2000)\n", ms(t2 - t0));
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
