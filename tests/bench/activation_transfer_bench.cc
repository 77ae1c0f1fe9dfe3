// The activation chain's transfer rates (docs/data_plane.md, "Scaling model"): the hidden-state
// chunks of a layer written and read back (a) through the coordinator, as before issue #22:
// PutFactor streamed over TCP into its RocksDB factor store and committed with the task, then
// GetFactor; (b) in a worker's activation store: written locally (synced), read back locally,
// and read by a peer over TCP from its ActivationServer. All on this machine, over loopback,
// in the same run; real RocksDB directories under --dir.
//
// Usage: activation_transfer_bench [--dir DIR] [--chunks N] [--chunk_mib M]
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/process_tuning.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/factor_service.h"
#include "grpcpp/grpcpp.h"
#include "storage/rocksdb_kv_store.h"
#include "worker/activation_store.h"
#include "worker/coordinator_client.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) { return s.status(); }
const absl::Status& StatusOf(const absl::Status& s) { return s; }

#define CHECK_OK(expr)                                                                  \
  do {                                                                                  \
    const auto& s_ = (expr);                                                            \
    if (!s_.ok()) {                                                                     \
      std::fprintf(stderr, "%s: %s\n", #expr, std::string(StatusOf(s_).message()).c_str()); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

struct Args {
  std::string dir = "/tmp/activation_transfer_bench";
  int chunks = 16;
  int chunk_mib = 32;
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--dir") a.dir = argv[i + 1];
    if (k == "--chunks") a.chunks = std::atoi(argv[i + 1]);
    if (k == "--chunk_mib") a.chunk_mib = std::atoi(argv[i + 1]);
  }
  return a;
}

// A coordinator (RocksDB job and factor stores, its gRPC services on a loopback port) holding one
// leased task of a noop job, and a worker's gRPC client of it.
struct Coordinator {
  std::unique_ptr<moec::storage::RocksDbKvStore> kv;
  std::unique_ptr<moec::coordinator::JobStore> store;
  std::unique_ptr<moec::storage::FactorStore> factors;
  std::unique_ptr<moec::coordinator::Coordinator> core;
  std::unique_ptr<moec::coordinator::CoordinatorService> service;
  std::unique_ptr<moec::coordinator::FactorService> factor_service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<moec::worker::CoordinatorClient> client;
  std::string worker, task;
};

std::unique_ptr<Coordinator> StartCoordinator(const std::string& dir) {
  auto c = std::make_unique<Coordinator>();
  moec::storage::RocksDbKvStoreOptions ko;
  ko.path = dir + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) ko.column_families.push_back({cf, false});
  ko.column_families.push_back({"factors", true});
  auto kv = moec::storage::RocksDbKvStore::Open(ko);
  CHECK_OK(kv);
  c->kv = std::move(*kv);
  auto store = moec::coordinator::JobStore::Open(c->kv.get());
  CHECK_OK(store);
  c->store = std::move(*store);
  auto factors = moec::storage::FactorStore::Open(c->kv.get());
  CHECK_OK(factors);
  c->factors = std::move(*factors);
  auto core = moec::coordinator::Coordinator::Create(c->store.get(), {}, [] { return absl::Now(); },
                                                    c->factors.get());
  CHECK_OK(core);
  c->core = std::move(*core);
  c->service = std::make_unique<moec::coordinator::CoordinatorService>(c->core.get(), "bench");
  c->factor_service = std::make_unique<moec::coordinator::FactorService>(c->core.get(), "bench");
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.SetMaxReceiveMessageSize(32 << 20);
  b.RegisterService(c->service.get());
  b.RegisterService(c->factor_service.get());
  c->server = b.BuildAndStart();
  fs::create_directories(dir + "/m");
  std::FILE* f = std::fopen((dir + "/m/config.json").c_str(), "w");
  std::fputs(R"({"model_type": "mixtral", "num_hidden_layers": 1})", f);
  std::fclose(f);
  const std::string recipe = "name: t\nmodel: m\noutput: out\nstages:\n  - {id: s, kind: noop}\n";
  CHECK_OK(c->core->SubmitJob(recipe, dir + "/r.yaml", {}));
  moec::worker::GrpcClientOptions o;
  o.address = absl::StrCat("127.0.0.1:", port);
  o.token = "bench";
  o.rpc_timeout_ms = 600000;
  auto client = moec::worker::NewGrpcCoordinatorClient(o);
  CHECK_OK(client);
  c->client = std::move(*client);
  auto id = c->client->RegisterWorker({"bench"});
  CHECK_OK(id);
  c->worker = *id;
  auto lease = c->client->LeaseTask(c->worker);
  CHECK_OK(lease);
  if (!lease->has_value()) std::exit(1);
  c->task = (*lease)->task.task_id();
  return c;
}

// Seconds to write and to read back `chunks` copies of `data` through the coordinator.
std::pair<double, double> ThroughCoordinator(const Args& a, const std::string& data) {
  std::unique_ptr<Coordinator> c = StartCoordinator(a.dir + "/coordinator");
  const int64_t n = static_cast<int64_t>(data.size());
  std::vector<std::string> keys;
  Clock::time_point t = Clock::now();
  for (int i = 0; i < a.chunks; ++i) {
    auto key = c->client->PutOutput(c->worker, c->task, absl::StrCat("hidden.c", i),
                                    moec::storage::DType::kU8, {n}, data);
    CHECK_OK(key);
    keys.push_back(*key);
  }
  CHECK_OK(c->client->CompleteTask(c->worker, c->task, 0, {}, nullptr));
  const double write = Seconds(t);
  t = Clock::now();
  for (const std::string& k : keys) CHECK_OK(c->client->GetFactor(k));
  return {write, Seconds(t)};
}

// Seconds to write, read back locally, and read from a peer `chunks` copies of `data` in a
// worker's activation store.
std::array<double, 3> InActivationStore(const Args& a, const std::string& data) {
  auto store = moec::worker::ActivationStore::Open(a.dir + "/worker");
  CHECK_OK(store);
  const int64_t n = static_cast<int64_t>(data.size());
  auto key = [](int i) { return absl::StrCat("fp/hidden.c", i); };
  moec::storage::FactorInfo info;
  info.dtype = moec::storage::DType::kU8;
  info.shape = {n};
  info.byte_size = n;
  Clock::time_point t = Clock::now();
  for (int i = 0; i < a.chunks; ++i) {
    auto crc = (*store)->Put(key(i), moec::storage::DType::kU8, {n}, data);
    CHECK_OK(crc);
    info.crc32c = *crc;
  }
  const double write = Seconds(t);
  t = Clock::now();
  for (int i = 0; i < a.chunks; ++i) CHECK_OK((*store)->GetIfPresent(key(i)));
  const double read = Seconds(t);
  moec::worker::ActivationServerOptions so;
  so.token = "bench";
  auto server = moec::worker::ActivationServer::Start(store->get(), so);
  CHECK_OK(server);
  moec::worker::PeerReader peer({"bench"});
  t = Clock::now();
  for (int i = 0; i < a.chunks; ++i) CHECK_OK(peer.Get((*server)->address(), key(i), info));
  return {write, read, Seconds(t)};
}

}  // namespace

int main(int argc, char** argv) {
  moec::TuneMallocForLargeBuffers();
  const Args a = Parse(argc, argv);
  fs::remove_all(a.dir);
  fs::create_directories(a.dir);
  const int64_t n = static_cast<int64_t>(a.chunk_mib) << 20;
  std::string data(n, '\0');
  for (int64_t i = 0; i < n; i += 4096) data[i] = static_cast<char>(i / 4096);
  const double mib = static_cast<double>(a.chunks) * a.chunk_mib;
  const auto [coord_write, coord_read] = ThroughCoordinator(a, data);
  const auto [local_write, local_read, peer_read] = InActivationStore(a, data);
  std::printf("%d chunks of %d MiB (%.0f MiB), loopback, RocksDB under %s\n", a.chunks,
              a.chunk_mib, mib, a.dir.c_str());
  std::printf("| path | write MiB/s | read MiB/s |\n|---|---:|---:|\n");
  std::printf("| through the coordinator (PutFactor + commit, GetFactor) | %.0f | %.0f |\n",
              mib / coord_write, mib / coord_read);
  std::printf("| activation store, local (synced put, read) | %.0f | %.0f |\n", mib / local_write,
              mib / local_read);
  std::printf("| activation store, read by a peer (GetFactor over TCP) | — | %.0f |\n",
              mib / peer_read);
  fs::remove_all(a.dir);
  return 0;
}
