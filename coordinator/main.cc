// moec-coordinator: schedules compression jobs over moec-worker daemons.
//
//   moec-coordinator --listen 127.0.0.1:7070 --data-dir /var/lib/moec --token-file /etc/moec/token
//                    [--tls-cert F --tls-key F [--tls-client-ca F]] [--allowed-root DIR]...
//
// Roles (coordinator/auth.h): --client-token-file and --worker-token-file instead of
// --token-file give clients and workers different tokens; under mutual TLS,
// --tls-client-identities / --tls-worker-identities let certificates stand for the roles.
//
// State lives in RocksDB under --data-dir; a restart recovers every job. Flags are spelled with
// dashes (as above) or underscores.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/cli_util.h"
#include "common/daemon.h"
#include "common/process_tuning.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/factor_service.h"
#include "coordinator/job_store.h"
#include "coordinator/dashboard.h"
#include "coordinator/metrics.h"
#include "glog/logging.h"
#include "grpcpp/grpcpp.h"
#include "storage/rocksdb_kv_store.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "address to serve on (HOST:PORT)");
ABSL_FLAG(std::string, data_dir, "", "directory of the coordinator's RocksDB (required)");
ABSL_FLAG(std::string, token_file, "",
          "file holding the bearer token of both roles, client and worker (or the two below)");
ABSL_FLAG(std::string, client_token_file, "",
          "file holding the client role's token: jobs, workers' listing, reports' outputs");
ABSL_FLAG(std::string, worker_token_file, "",
          "file holding the worker role's token: registration, leases, group store, factors");
ABSL_FLAG(std::vector<std::string>, tls_client_identities, {},
          "with --tls-client-ca: client-certificate identities (subject CN or SAN) that act as "
          "clients without a token");
ABSL_FLAG(std::vector<std::string>, tls_worker_identities, {},
          "with --tls-client-ca: client-certificate identities that act as workers without a "
          "token");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (enables TLS with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates (mutual TLS)");
ABSL_FLAG(std::vector<std::string>, allowed_root, {},
          "directories recipe paths must resolve inside (comma separated; default: anywhere)");
ABSL_FLAG(int64_t, lease_ms, 30000, "task lease length; heartbeats renew it");
ABSL_FLAG(int32_t, max_attempts, 3, "failed attempts a task may have before it fails its job");
ABSL_FLAG(int32_t, max_lost_leases, 10,
          "expired leases (dead or silent workers) a task may have before it fails its job; they "
          "do not count as attempts");
ABSL_FLAG(bool, durable_completions, false,
          "make every task completion wait for its log sync before the worker's call returns "
          "(default: completions are logged at once and synced in the background, see "
          "--log-sync-interval-ms; a machine crash may lose the last few, which then re-run)");
ABSL_FLAG(int64_t, log_sync_interval_ms, 5,
          "most time between a completion and the background sync that makes it survive a machine "
          "crash, 0-10000 (a crash of this process loses nothing either way)");
ABSL_FLAG(std::string, http_listen, "",
          "serve the read-only web dashboard at http://IP:PORT/ (empty: off); it asks for the "
          "client token. Keep it on 127.0.0.1 and reach it through an SSH tunnel or a port-forward "
          "(docs/operations.md \"Dashboard\"): it speaks plain HTTP");
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

void SetUsage() {
  absl::SetProgramUsageMessage(
      "schedules moec compression jobs over worker daemons.\n"
      "  moec-coordinator --listen HOST:PORT --data-dir DIR\n"
      "                   (--token-file PATH | --client-token-file P --worker-token-file P)\n"
      "                   [--tls-cert F --tls-key F [--tls-client-ca F\n"
      "                    [--tls-client-identities A,B] [--tls-worker-identities C,D]]]\n"
      "                   [--allowed-root DIR] [--http-listen 127.0.0.1:PORT]\n"
      "                   [--metrics-listen HOST:PORT]\n"
      "--http-listen serves a read-only web dashboard of jobs, tasks, workers and reports; it\n"
      "asks for the client token (docs/operations.md \"Dashboard\").\n"
      "roles (docs/operations.md): a client token submits, watches, cancels and resumes jobs and\n"
      "reads reports; a worker token registers workers, leases tasks and moves factors.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "coordinator/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
}

moec::coordinator::CoordinatorOptions OptionsFromFlags() {
  moec::coordinator::CoordinatorOptions options;
  options.retry.lease_ms = absl::GetFlag(FLAGS_lease_ms);
  options.retry.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.retry.max_lost_leases = absl::GetFlag(FLAGS_max_lost_leases);
  options.allowed_roots = absl::GetFlag(FLAGS_allowed_root);
  options.durable_completions = absl::GetFlag(FLAGS_durable_completions);
  options.log_sync_interval_ms = absl::GetFlag(FLAGS_log_sync_interval_ms);
  return options;
}

// What the coordinator keeps under --data-dir, and its core over it (members destroyed in
// reverse order: the core first).
struct State {
  std::unique_ptr<moec::storage::RocksDbKvStore> kv;
  std::unique_ptr<moec::coordinator::JobStore> store;
  std::unique_ptr<moec::storage::FactorStore> factors;
  std::unique_ptr<moec::coordinator::Coordinator> core;
};

// Opens the RocksDB under --data-dir, the job store and the factor store in it, and the
// coordinator core over them.
absl::Status OpenState(State* state) {
  moec::storage::RocksDbKvStoreOptions kv_options;
  kv_options.path = absl::GetFlag(FLAGS_data_dir) + "/db";
  for (const auto& cf : moec::coordinator::JobStoreColumnFamilies()) {
    kv_options.column_families.push_back({cf, false});
  }
  kv_options.column_families.push_back({"factors", true});
  MOEC_ASSIGN_OR_RETURN(state->kv, moec::storage::RocksDbKvStore::Open(kv_options));
  MOEC_ASSIGN_OR_RETURN(state->store, moec::coordinator::JobStore::Open(state->kv.get()));
  const moec::coordinator::CoordinatorOptions options = OptionsFromFlags();
  // Opening the factor store collects crash leftovers.
  MOEC_ASSIGN_OR_RETURN(state->factors, moec::storage::FactorStore::Open(state->kv.get()));
  MOEC_ASSIGN_OR_RETURN(state->core,
                        moec::coordinator::Coordinator::Create(state->store.get(), options,
                                                               [] { return absl::Now(); },
                                                               state->factors.get()));
  return absl::OkStatus();
}

// The roles' tokens and certificate identities: --token-file for both roles, or a file per
// role; identities only with client certificates (--tls-client-ca). Every role needs one.
absl::StatusOr<moec::coordinator::Authenticator> AuthenticatorFromFlags() {
  moec::coordinator::RoleCredentials c;
  const std::string both = absl::GetFlag(FLAGS_token_file);
  const std::string client = absl::GetFlag(FLAGS_client_token_file);
  const std::string worker = absl::GetFlag(FLAGS_worker_token_file);
  if (!both.empty() && (!client.empty() || !worker.empty())) {
    return absl::InvalidArgumentError(
        "--token-file means both roles: give it, or --client-token-file and --worker-token-file");
  }
  for (auto [path, out, what] : {std::make_tuple(both, &c.client_token, "token file"),
                                 std::make_tuple(client, &c.client_token, "client token file"),
                                 std::make_tuple(worker, &c.worker_token, "worker token file")}) {
    if (path.empty()) continue;
    MOEC_ASSIGN_OR_RETURN(*out, moec::ReadSecretFile(path, what));
  }
  if (!both.empty()) c.worker_token = c.client_token;
  if (!client.empty() && !worker.empty() && c.client_token == c.worker_token) {
    return absl::InvalidArgumentError(
        "--client-token-file and --worker-token-file hold the same token (use --token-file)");
  }
  c.client_identities = absl::GetFlag(FLAGS_tls_client_identities);
  c.worker_identities = absl::GetFlag(FLAGS_tls_worker_identities);
  if ((!c.client_identities.empty() || !c.worker_identities.empty()) &&
      absl::GetFlag(FLAGS_tls_client_ca).empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-identities and --tls-worker-identities need client certificates "
        "(--tls-client-ca)");
  }
  absl::StatusOr<moec::coordinator::Authenticator> auth =
      moec::coordinator::Authenticator::Create(std::move(c));
  if (!auth.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        auth.status().message(),
        ": give --token-file, or --client-token-file and --worker-token-file (see --help)"));
  }
  return auth;
}

// Plain text, or TLS with --tls-cert and --tls-key (and client certificates required with
// --tls-client-ca).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFromFlags() {
  if (absl::GetFlag(FLAGS_tls_cert).empty()) return grpc::InsecureServerCredentials();
  auto cert = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_cert), "TLS certificate");
  auto key = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_key), "TLS key");
  if (!cert.ok()) return cert.status();
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
    auto ca = moec::ReadSecretFile(absl::GetFlag(FLAGS_tls_client_ca), "client CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// The Prometheus exporter of --metrics-listen; null when that is empty.
absl::StatusOr<std::unique_ptr<moec::coordinator::MetricsExporter>> StartMetrics() {
  if (absl::GetFlag(FLAGS_metrics_listen).empty()) {
    return std::unique_ptr<moec::coordinator::MetricsExporter>();
  }
  const std::string listen = absl::GetFlag(FLAGS_metrics_listen);
  MOEC_ASSIGN_OR_RETURN(auto metrics, moec::coordinator::MetricsExporter::Start(listen));
  LOG(INFO) << "metrics on http://" << absl::GetFlag(FLAGS_metrics_listen) << "/metrics";
  return metrics;
}

// The dashboard of --http-listen; null when that is empty.
absl::StatusOr<std::unique_ptr<moec::coordinator::DashboardServer>> StartDashboard(
    moec::coordinator::Coordinator* core, const moec::coordinator::Authenticator& auth) {
  const std::string listen = absl::GetFlag(FLAGS_http_listen);
  if (listen.empty()) return std::unique_ptr<moec::coordinator::DashboardServer>();
  MOEC_ASSIGN_OR_RETURN(
      auto server, moec::coordinator::DashboardServer::Start(
                       listen,
                       std::make_unique<moec::coordinator::DashboardApi>(
                           core, absl::GetFlag(FLAGS_data_dir) + "/db", absl::Now()),
                       auth));
  LOG(INFO) << "dashboard on http://" << listen << "/ (port " << server->port() << ")";
  if (!absl::StartsWith(listen, "127.") && !absl::StartsWith(listen, "[::1]")) {
    LOG(WARNING) << "the dashboard listens on " << listen << " over plain HTTP: its login "
                 << "token crosses the network in clear; prefer 127.0.0.1 and a tunnel";
  }
  return server;
}

// Ticks the core every 500 ms (updating `metrics`, when given) until `stop` is notified.
void TickUntil(absl::Notification& stop, moec::coordinator::Coordinator& core,
               moec::coordinator::MetricsExporter* metrics) {
  std::thread ticker([&] {
    while (!stop.WaitForNotificationWithTimeout(absl::Milliseconds(500))) {
      absl::Status s = core.Tick();
      if (!s.ok()) LOG(ERROR) << "tick: " << s;
      if (metrics) metrics->Update(core.Stats());
    }
  });
  ticker.join();  // returns once a signal arrived
}

}  // namespace

int main(int argc, char** argv) {
  SetUsage();
  moec::InitDaemon(argc, argv, moec::ThreadWait::kDefault);

  if (absl::GetFlag(FLAGS_data_dir).empty()) {
    return Fail(absl::InvalidArgumentError("--data-dir is required (see --help)"));
  }
  absl::StatusOr<moec::coordinator::Authenticator> auth = AuthenticatorFromFlags();
  if (!auth.ok()) return Fail(auth.status());

  State state;
  if (absl::Status s = OpenState(&state); !s.ok()) return Fail(s);
  moec::coordinator::CoordinatorService service(state.core.get(), *auth);
  moec::coordinator::FactorService factor_service(state.core.get(), *auth);

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = ServerCredentialsFromFlags();
  if (!creds.ok()) return Fail(creds.status());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *creds, &port);
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

  absl::StatusOr<std::unique_ptr<moec::coordinator::MetricsExporter>> metrics = StartMetrics();
  if (!metrics.ok()) return Fail(metrics.status());
  absl::StatusOr<std::unique_ptr<moec::coordinator::DashboardServer>> dashboard =
      StartDashboard(state.core.get(), *auth);
  if (!dashboard.ok()) return Fail(dashboard.status());
  if (*dashboard != nullptr) {
    std::printf("dashboard on port %d\n", (*dashboard)->port());
    std::fflush(stdout);
  }

  absl::Notification stop;
  g_stop = &stop;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  TickUntil(stop, *state.core, metrics->get());
  LOG(INFO) << "shutting down";
  dashboard->reset();  // before the core it reads
  state.core->EndLongPolls();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
