// moec-coordinator: schedules compression jobs over moec-worker daemons.
//
//   moec-coordinator --listen 127.0.0.1:7070 --data-dir /var/lib/moec --token-file /etc/moec/token
//                    [--tls-cert F --tls-key F [--tls-client-ca F]] [--allowed-root DIR]...
//
// State lives in RocksDB under --data-dir; a restart recovers every job. Flags are spelled with
// dashes (as above) or underscores.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/cli_util.h"
#include "common/process_tuning.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/factor_service.h"
#include "coordinator/job_store.h"
#include "coordinator/metrics.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "storage/rocksdb_kv_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "address to serve on (HOST:PORT)");
ABSL_FLAG(std::string, data_dir, "", "directory of the coordinator's RocksDB (required)");
ABSL_FLAG(std::string, token_file, "", "file holding the bearer token every RPC must carry (required)");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates (mutual TLS)");
ABSL_FLAG(std::vector<std::string>, allowed_root, {},
          "directories recipe paths must resolve inside (comma separated; default: anywhere)");
ABSL_FLAG(int64_t, lease_ms, 30000, "task lease length; heartbeats renew it");
ABSL_FLAG(int32_t, max_attempts, 3, "leases a task may get before it fails its job");
ABSL_FLAG(bool, durable_completions, false,
          "make every task completion wait for its log sync before the worker's call returns "
          "(default: completions are logged at once and synced in the background, see "
          "--log-sync-interval-ms; a machine crash may lose the last few, which then re-run)");
ABSL_FLAG(int64_t, log_sync_interval_ms, 5,
          "most time between a completion and the background sync that makes it survive a machine "
          "crash, 0-10000 (a crash of this process loses nothing either way)");
ABSL_FLAG(std::string, metrics_listen, "",
          "serve Prometheus metrics at http://HOST:PORT/metrics (empty: off)");

namespace {

absl::Notification* g_stop = nullptr;
void OnSignal(int) {
  if (g_stop != nullptr && !g_stop->HasBeenNotified()) g_stop->Notify();
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "moec-coordinator: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();
  absl::SetProgramUsageMessage(
      "schedules moec compression jobs over worker daemons.\n"
      "  moec-coordinator --listen HOST:PORT --data-dir DIR --token-file PATH\n"
      "                   [--tls-cert F --tls-key F [--tls-client-ca F]] [--allowed-root DIR]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "coordinator/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  std::vector<std::string> storage;
  std::vector<char*> args = moec::NormalizeDashedFlags(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;

  if (absl::GetFlag(FLAGS_data_dir).empty() || absl::GetFlag(FLAGS_token_file).empty()) {
    return Fail(absl::InvalidArgumentError("--data-dir and --token-file are required (see --help)"));
  }
  absl::StatusOr<std::string> token = moec::ReadSecretFile(absl::GetFlag(FLAGS_token_file), "token file");
  if (!token.ok()) return Fail(token.status());

  moec::storage::RocksDbKvStoreOptions kv_options;
  kv_options.path = absl::GetFlag(FLAGS_data_dir) + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) {
    kv_options.column_families.push_back({cf, false});
  }
  kv_options.column_families.push_back({"factors", true});
  auto kv = moec::storage::RocksDbKvStore::Open(kv_options);
  if (!kv.ok()) return Fail(kv.status());
  auto store = moec::coordinator::JobStore::Open(kv->get());
  if (!store.ok()) return Fail(store.status());
  moec::coordinator::CoordinatorOptions options;
  options.retry.lease_ms = absl::GetFlag(FLAGS_lease_ms);
  options.retry.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.allowed_roots = absl::GetFlag(FLAGS_allowed_root);
  options.durable_completions = absl::GetFlag(FLAGS_durable_completions);
  options.log_sync_interval_ms = absl::GetFlag(FLAGS_log_sync_interval_ms);
  auto factors = moec::storage::FactorStore::Open(kv->get());  // collects crash leftovers
  if (!factors.ok()) return Fail(factors.status());
  auto core = moec::coordinator::Coordinator::Create(store->get(), options, [] { return absl::Now(); },
                                                     factors->get());
  if (!core.ok()) return Fail(core.status());
  moec::coordinator::CoordinatorService service(core->get(), *token);
  moec::coordinator::FactorService factor_service(core->get(), *token);

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    auto cert = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_cert), "TLS certificate");
    auto key = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_key), "TLS key");
    if (!cert.ok()) return Fail(cert.status());
    if (!key.ok()) return Fail(key.status());
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
      auto ca = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_client_ca), "client CA");
      if (!ca.ok()) return Fail(ca.status());
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), creds, &port);
  moec::coordinator::ConfigureServerThreads(&builder);
  builder.SetMaxReceiveMessageSize(32 << 20);  // recipes are small; factor pieces up to 16 MiB
  builder.RegisterService(&service);
  builder.RegisterService(&factor_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", absl::GetFlag(FLAGS_listen))));
  }
  LOG(INFO) << "moec-coordinator listening on " << absl::GetFlag(FLAGS_listen) << " (port " << port
            << ")" << (absl::GetFlag(FLAGS_tls_cert).empty() ? ", no TLS" : ", TLS");
  std::printf("listening on port %d\n", port);
  std::fflush(stdout);

  std::unique_ptr<moec::coordinator::MetricsExporter> metrics;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto m = moec::coordinator::MetricsExporter::Start(absl::GetFlag(FLAGS_metrics_listen));
    if (!m.ok()) return Fail(m.status());
    metrics = *std::move(m);
    LOG(INFO) << "metrics on http://" << absl::GetFlag(FLAGS_metrics_listen) << "/metrics";
  }

  absl::Notification stop;
  g_stop = &stop;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::thread ticker([&] {
    while (!stop.WaitForNotificationWithTimeout(absl::Milliseconds(500))) {
      absl::Status s = (*core)->Tick();
      if (!s.ok()) LOG(ERROR) << "tick: " << s;
      if (metrics) metrics->Update((*core)->Stats());
    }
  });
  ticker.join();  // returns once a signal arrived
  LOG(INFO) << "shutting down";
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
