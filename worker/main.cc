// moec-worker: runs compression tasks for a moec-coordinator.
//
//   moec-worker --coordinator HOST:PORT --token-file PATH [--name NAME] [--advertise-host HOST]
//               [--collectives gloo|nccl] [--collective-timeout-s N] [--threads N]
//               [--tls-ca F [--tls-cert F --tls-key F]]
//
// Stops cleanly on SIGINT/SIGTERM (the current task's stage is asked to cancel).
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <dlfcn.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/cli_util.h"
#include "common/daemon.h"
#include "common/device.h"
#include "common/process_tuning.h"
#include "common/status_macros.h"
#include "glog/logging.h"
#include "kernels/device_info.h"
#include "kernels/kernels.h"
#include "stages/builtin_stages.h"
#include "worker/coordinator_client.h"
#include "worker/gemm_rate.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, coordinator, "", "coordinator address HOST:PORT (or $MOEC_COORDINATOR)");
ABSL_FLAG(std::string, token_file, "", "bearer token file (or $MOEC_TOKEN_FILE)");
ABSL_FLAG(std::string, name, "", "name shown by `moec workers` (default host:pid)");
ABSL_FLAG(std::string, tls_ca, "", "PEM roots to verify the coordinator (enables TLS)");
ABSL_FLAG(std::string, tls_cert, "", "client certificate for mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "key of --tls-cert");
ABSL_FLAG(std::string, advertise_host, "",
          "address other workers of a gang reach this worker's collectives (Gloo TCP) on (or "
          "$MOEC_ADVERTISE_HOST; default 127.0.0.1 when the coordinator is on loopback, else this "
          "host's name)");
ABSL_FLAG(int, threads, 0,
          "compute threads of this worker's tasks (libtorch and OpenBLAS); 0: all cores. Give "
          "each of N workers on one host cores/N");
ABSL_FLAG(std::string, collectives, "",
          "collectives of gang tasks: gloo (CPU, TCP between workers) or nccl (GPU workers); "
          "default: nccl with --device cuda:N, else gloo");
ABSL_FLAG(std::string, device, "cpu",
          "where this worker computes: cpu, or cuda:N (GPU N: every stage runs there, the worker "
          "registers the GPU's memory and one task at a time; needs a build with CUDA)");
ABSL_FLAG(std::string, scratch, "",
          "local directory of this worker (created if missing, must be writable): its activation "
          "store, which keeps the hidden states its tasks produce and serves them to the other "
          "workers (the coordinator records only where they are), and its stages' TMPDIR. "
          "Without it, activations go through the coordinator and temporary files to $TMPDIR");
ABSL_FLAG(std::string, data_listen, "",
          "HOST:PORT the activation store is served on (with --scratch); default: the advertise "
          "host's loopback or all interfaces, on a free port. Peers dial --advertise-host:PORT");
ABSL_FLAG(int, collective_timeout_s, 120,
          "seconds a gang waits for a missing member (rendezvous and each collective) before the "
          "task fails and is retried");

namespace {

absl::Notification* g_stop = nullptr;
void OnSignal(int) {
  if (g_stop != nullptr && !g_stop->HasBeenNotified()) g_stop->Notify();
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "moec-worker: %s\n", s.ToString().c_str());
  return 1;
}

std::string FlagOrEnv(const std::string& flag, const char* env) {
  if (!flag.empty()) return flag;
  const char* v = std::getenv(env);
  return v == nullptr ? "" : v;
}

void SetUsage() {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view f) { return absl::StrContains(f, "worker/main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "runs moec compression tasks for a coordinator.\n"
      "  moec-worker --coordinator HOST:PORT (--token-file PATH | --tls-cert F --tls-key F)\n"
      "              [--tls-ca F] [--device cpu|cuda:N] [--scratch DIR] [--name NAME]\n"
      "              [--advertise-host HOST] [--data-listen HOST:PORT]\n"
      "The token is the coordinator's worker token; under mutual TLS a certificate the coordinator\n"
      "lists as a worker identity stands for it (docs/operations.md, \"Tokens and roles\").");
}

// The coordinator's address, the token and the TLS files, from the flags (or the environment).
absl::StatusOr<moec::worker::GrpcClientOptions> ClientOptionsFromFlags() {
  moec::worker::GrpcClientOptions client_options;
  client_options.address = FlagOrEnv(absl::GetFlag(FLAGS_coordinator), "MOEC_COORDINATOR");
  const std::string token_file = FlagOrEnv(absl::GetFlag(FLAGS_token_file), "MOEC_TOKEN_FILE");
  if (client_options.address.empty()) {
    return absl::InvalidArgumentError("--coordinator is required (see --help)");
  }
  if (token_file.empty() && absl::GetFlag(FLAGS_tls_cert).empty()) {
    return absl::InvalidArgumentError(
        "--token-file is required, unless a client certificate the coordinator lists as a "
        "worker identity (--tls-cert, --tls-key) stands for the role (see --help)");
  }
  if (!token_file.empty()) {
    auto token = moec::ReadSecretFile(token_file, "token file");
    if (!token.ok()) return token.status();
    client_options.token = *token;
  }
  for (auto [flag, out, what] : {std::make_tuple(absl::GetFlag(FLAGS_tls_ca), &client_options.tls_ca, "TLS CA"),
                                 std::make_tuple(absl::GetFlag(FLAGS_tls_cert), &client_options.tls_cert, "TLS certificate"),
                                 std::make_tuple(absl::GetFlag(FLAGS_tls_key), &client_options.tls_key, "TLS key")}) {
    if (flag.empty()) continue;
    auto v = moec::ReadSecretFile(flag, what);
    if (!v.ok()) return v.status();
    *out = *v;
  }
  return client_options;
}

// --advertise-host (or $MOEC_ADVERTISE_HOST); else 127.0.0.1 when the coordinator is on loopback,
// else `host`.
std::string AdvertiseHost(const std::string& coordinator, const char* host) {
  const std::string flag = FlagOrEnv(absl::GetFlag(FLAGS_advertise_host), "MOEC_ADVERTISE_HOST");
  if (!flag.empty()) return flag;
  const std::string& a = coordinator;
  const bool loopback = absl::StartsWith(a, "127.") || absl::StartsWith(a, "localhost:") ||
                        absl::StartsWith(a, "[::1]");
  return loopback ? "127.0.0.1" : host;
}

// --device cpu | cuda:N, checked against what this process sees; a GPU worker registers its
// memory and uses NCCL for gangs unless --collectives says otherwise.
absl::Status ApplyDevice(moec::worker::WorkerOptions* options) {
  MOEC_ASSIGN_OR_RETURN(options->device, moec::ComputeDevice::Parse(absl::GetFlag(FLAGS_device)));
  std::string collectives = absl::GetFlag(FLAGS_collectives);
  if (collectives.empty()) collectives = options->device.cuda ? "nccl" : "gloo";
  options->collectives = collectives;
  if (!options->device.cuda) return absl::OkStatus();
  const std::string device = options->device.ToString();
  if (!moec::kernels::BuiltWithCuda() || !at::detail::getCUDAHooks().hasCUDA()) {
    const int n = moec::kernels::CudaDeviceCount();
    return absl::FailedPreconditionError(absl::StrCat(
        "--device ", device, ": ",
        !moec::kernels::BuiltWithCuda() ? "this moec-worker was built without CUDA"
        : n == 0 ? "no CUDA GPU is visible to this process (driver, CUDA_VISIBLE_DEVICES?)"
                 : "its libtorch has no CUDA",
        "; run it with --device cpu"));
  }
  MOEC_ASSIGN_OR_RETURN(moec::kernels::DeviceMemory memory,
                        moec::kernels::CudaDeviceMemory(options->device.index));
  options->device_memory_bytes = memory.total_bytes;
  LOG(INFO) << "device " << device << ": " << memory.name << ", "
            << memory.total_bytes / (1 << 20) << " MiB (" << memory.free_bytes / (1 << 20)
            << " MiB free)";
  return absl::OkStatus();
}

// --scratch: checked now, so that a bad disk is a start-up error rather than a task failure.
absl::Status UseScratch() {
  if (const std::string scratch = absl::GetFlag(FLAGS_scratch); !scratch.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(scratch, ec);
    const std::string probe = scratch + "/.moec-worker-probe-" + std::to_string(getpid());
    if (ec || !std::ofstream(probe).put('x').good()) {
      return absl::PermissionDeniedError(
          absl::StrCat("--scratch ", scratch, " is not a writable directory"));
    }
    std::filesystem::remove(probe, ec);
    setenv("TMPDIR", scratch.c_str(), 1);
  }
  return absl::OkStatus();
}

// The activation store under --scratch and its server (null without --scratch, or under TLS
// without a certificate to serve it with).
struct DataPlane {
  std::unique_ptr<moec::worker::ActivationStore> store;
  std::unique_ptr<moec::worker::ActivationServer> server;
  std::unique_ptr<moec::worker::PeerReader> peers;
};

absl::Status StartDataPlane(const moec::worker::GrpcClientOptions& client,
                            moec::worker::WorkerOptions* options, DataPlane* plane) {
  const std::string scratch = absl::GetFlag(FLAGS_scratch);
  if (scratch.empty()) return absl::OkStatus();
  if (!client.tls_ca.empty() && client.tls_cert.empty()) {
    LOG(WARNING) << "activations go through the coordinator: serving them to peers under TLS "
                    "needs --tls-cert and --tls-key";
    return absl::OkStatus();
  }
  MOEC_ASSIGN_OR_RETURN(plane->store, moec::worker::ActivationStore::Open(scratch));
  moec::worker::ActivationServerOptions o;
  const bool loopback = absl::StartsWith(options->advertise_host, "127.");
  o.listen = absl::GetFlag(FLAGS_data_listen);
  if (o.listen.empty()) o.listen = loopback ? "127.0.0.1:0" : "0.0.0.0:0";
  o.advertise_host = options->advertise_host;
  o.token = client.token;
  o.tls_cert = client.tls_cert;
  o.tls_key = client.tls_key;
  o.tls_ca = client.tls_ca;
  MOEC_ASSIGN_OR_RETURN(plane->server, moec::worker::ActivationServer::Start(plane->store.get(), o));
  plane->peers = std::make_unique<moec::worker::PeerReader>(
      moec::worker::PeerReaderOptions{client.token, client.tls_ca, client.tls_cert, client.tls_key});
  options->activations = plane->store.get();
  options->data_address = plane->server->address();
  options->peers = plane->peers.get();
  LOG(INFO) << "activation store " << plane->store->id() << " in " << scratch
            << "/activations, served on " << plane->server->address();
  return absl::OkStatus();
}

// The worker's options from the flags; `coordinator`: the coordinator's address.
absl::StatusOr<moec::worker::WorkerOptions> WorkerOptionsFromFlags(const std::string& coordinator) {
  moec::worker::WorkerOptions options;
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  options.name = absl::GetFlag(FLAGS_name).empty() ? absl::StrCat(host, ":", getpid())
                                                   : absl::GetFlag(FLAGS_name);
  options.advertise_host = AdvertiseHost(coordinator, host);
  if (absl::GetFlag(FLAGS_collective_timeout_s) < 1) {
    return absl::InvalidArgumentError("--collective-timeout-s must be at least 1");
  }
  options.collective_timeout = absl::Seconds(absl::GetFlag(FLAGS_collective_timeout_s));
  MOEC_RETURN_IF_ERROR(ApplyDevice(&options));
  options.memory_bytes = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  MOEC_RETURN_IF_ERROR(UseScratch());
  MOEC_RETURN_IF_ERROR(options.Validate());
  return options;
}

// Compute threads of libtorch and OpenBLAS (OpenBLAS's pthread build keeps its own pool, which
// libtorch does not size).
void SetThreads(int threads) {
  if (at::get_num_threads() != threads) at::set_num_threads(threads);
  using SetBlasThreads = void (*)(int);
  static const auto set_blas =
      reinterpret_cast<SetBlasThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_blas != nullptr) set_blas(threads);
}

// --threads (0: leave them at all cores).
absl::Status SetComputeThreads() {
  if (const int threads = absl::GetFlag(FLAGS_threads); threads > 0) {
    SetThreads(threads);
  } else if (absl::GetFlag(FLAGS_threads) < 0) {
    return absl::InvalidArgumentError("--threads must be >= 0");
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  SetUsage();
  moec::InitDaemon(argc, argv, moec::ThreadWait::kPassive);

  absl::StatusOr<moec::worker::GrpcClientOptions> client_options = ClientOptionsFromFlags();
  if (!client_options.ok()) return Fail(client_options.status());
  auto client = moec::worker::NewGrpcCoordinatorClient(*client_options);
  if (!client.ok()) return Fail(client.status());

  moec::stages::StageRegistry registry;
  moec::stages::RegisterBuiltinStages(&registry);
  absl::StatusOr<moec::worker::WorkerOptions> options =
      WorkerOptionsFromFlags(client_options->address);
  if (!options.ok()) return Fail(options.status());
  if (absl::Status s = SetComputeThreads(); !s.ok()) return Fail(s);
  DataPlane plane;
  if (absl::Status s = StartDataPlane(*client_options, &*options, &plane); !s.ok()) return Fail(s);
  // What every task's profile is measured against (docs/cli.md "report").
  absl::StatusOr<double> gemm = moec::worker::MeasureGemmGflops(options->device);
  if (!gemm.ok()) return Fail(gemm.status());
  options->gemm_gflops = *gemm;
  options->threads = at::get_num_threads();
  options->set_threads = SetThreads;  // per task: the job's thread count, or this default
  LOG(INFO) << "fp32 GEMM rate " << *gemm << " GFLOP/s on " << options->device.ToString()
            << " with " << options->threads << " threads";
  if (dlsym(RTLD_DEFAULT, "openblas_get_config") == nullptr) {
    LOG(WARNING) << "liblapack.so.3 is not OpenBLAS's: GPTQ's factorisation runs on the reference "
                    "LAPACK, 5-20x slower (install libopenblas0-pthread; deploy/setup-debian.sh does)";
  }
  moec::worker::Worker worker(client->get(), &registry, *options);
  absl::Notification stop;
  g_stop = &stop;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  // Registration retries until the coordinator answers (it may start after the worker).
  absl::Status started;
  while (!(started = worker.Start()).ok()) {
    LOG(WARNING) << "cannot register with " << client_options->address << ": " << started;
    if (stop.WaitForNotificationWithTimeout(absl::Seconds(1))) return 0;
  }
  stop.WaitForNotification();
  LOG(INFO) << "stopping; tasks done " << worker.tasks_done() << ", failed " << worker.tasks_failed();
  if (plane.peers != nullptr) {
    LOG(INFO) << "read " << plane.peers->reads() << " tensors (" << plane.peers->bytes()
              << " bytes) from other workers' activation stores";
  }
  worker.Stop();
  return 0;
}
