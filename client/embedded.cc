#include "client/embedded.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/cli_util.h"
#include "common/process_tuning.h"
#include "common/status_macros.h"
#include "openssl/rand.h"

namespace moec::client {
namespace {

namespace fs = std::filesystem;

// Starts `argv` with stdout to `stdout_fd` (or a log) and stderr to `log`, in this process's
// environment plus the passive thread-wait settings it lacks (the binaries then start once).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log,
                            int stdout_fd) {
  // Built before fork: the child of a threaded process may only call async-signal-safe functions.
  std::vector<std::string> added = PassiveThreadWaitEnvironment();
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  for (std::string& e : added) env.push_back(e.data());
  env.push_back(nullptr);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDERR_FILENO);
      ::dup2(stdout_fd >= 0 ? stdout_fd : fd, STDOUT_FILENO);
    }
    ::execve(args[0], args.data(), env.data());
    _exit(127);
  }
  return pid;
}

absl::StatusOr<std::string> TokenFile(const std::string& dir) {
  const std::string path = dir + "/token";
  if (fs::exists(path)) return path;
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return absl::InternalError("RAND_bytes failed");
  std::string hex;
  for (unsigned char b : bytes) absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", path));
  bool ok = ::write(fd, hex.data(), hex.size()) == static_cast<ssize_t>(hex.size());
  ::close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path));
  return path;
}

// Stops the processes together: SIGTERM to all, then each gets 5 s from then to exit before
// SIGKILL.
// Sends SIGTERM to the live processes among `pids`; returns those.
std::vector<pid_t> Signal(const std::vector<pid_t>& pids) {
  std::vector<pid_t> live;
  for (pid_t pid : pids) {
    if (pid > 0 && ::kill(pid, SIGTERM) == 0) live.push_back(pid);
  }
  return live;
}

// Waits up to 5 s for `live` to exit, then kills what is left.
void Reap(std::vector<pid_t> live) {
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (!live.empty() && absl::Now() < deadline) {
    live.erase(std::remove_if(live.begin(), live.end(),
                              [](pid_t pid) { return ::waitpid(pid, nullptr, WNOHANG) == pid; }),
               live.end());
    if (!live.empty()) absl::SleepFor(absl::Milliseconds(10));
  }
  for (pid_t pid : live) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
}

}  // namespace

absl::StatusOr<std::string> FindMoecBinary(const std::string& name, const std::string& bin_dir) {
  std::vector<fs::path> candidates;
  fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  for (const fs::path& dir : {fs::path(bin_dir), self, self / "../coordinator", self / "../worker"}) {
    if (!dir.empty()) candidates.push_back(dir / name);
  }
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view d : absl::StrSplit(path, ':')) candidates.push_back(fs::path(std::string(d)) / name);
  }
  for (const auto& c : candidates) {
    if (::access(c.c_str(), X_OK) == 0) return fs::weakly_canonical(c).string();
  }
  return absl::NotFoundError(absl::StrCat("cannot find ", name, " next to ", self.string(), " or on PATH"));
}

absl::StatusOr<std::unique_ptr<EmbeddedCluster>> EmbeddedCluster::Start(const EmbeddedOptions& o) {
  if (o.workers < 1) return absl::InvalidArgumentError("--workers must be >= 1");
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda (worker i on GPU i), not '", o.device, "'"));
  }
  MOEC_ASSIGN_OR_RETURN(std::string coord_bin, FindMoecBinary("moec-coordinator", o.bin_dir));
  MOEC_ASSIGN_OR_RETURN(std::string worker_bin, FindMoecBinary("moec-worker", o.bin_dir));
  std::error_code ec;
  fs::create_directories(o.data_dir + "/logs", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.data_dir, ": ", ec.message()));
  auto c = std::unique_ptr<EmbeddedCluster>(new EmbeddedCluster());
  c->log_dir_ = o.data_dir + "/logs";
  MOEC_ASSIGN_OR_RETURN(std::string token_file, TokenFile(o.data_dir));
  MOEC_ASSIGN_OR_RETURN(c->token_, ReadSecretFile(token_file, "token file"));

  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return absl::InternalError("pipe failed");
  const std::string coord_log = c->log_dir_ + "/coordinator.log";
  absl::StatusOr<pid_t> pid = Spawn({coord_bin, "--listen=127.0.0.1:0", "--data-dir=" + o.data_dir,
                                     "--token-file=" + token_file},
                                    coord_log, pipe_fds[1]);
  ::close(pipe_fds[1]);
  if (!pid.ok()) {
    ::close(pipe_fds[0]);
    return pid.status();
  }
  c->coordinator_ = *pid;
  c->coordinator_stdout_ = pipe_fds[0];  // kept open: the coordinator may write to it later
  // The coordinator prints "listening on port N" once it serves.
  std::string line;
  char ch;
  while (line.size() < 256 && ::read(pipe_fds[0], &ch, 1) == 1 && ch != '\n') line.push_back(ch);
  int port = 0;
  absl::string_view rest = line;
  if (!absl::ConsumePrefix(&rest, "listening on port ") || !absl::SimpleAtoi(rest, &port) || port <= 0) {
    return absl::UnavailableError(absl::StrCat("moec-coordinator did not start; see ", coord_log));
  }
  c->address_ = absl::StrCat("127.0.0.1:", port);
  for (int i = 0; i < o.workers; ++i) {
    // The host's cores shared between the local workers (BLAS and libtorch pools both sized).
    const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / o.workers);
    const std::string device = o.device == "cuda" ? absl::StrCat("cuda:", i) : "cpu";
    MOEC_ASSIGN_OR_RETURN(pid_t w, Spawn({worker_bin, "--coordinator=" + c->address_,
                                          "--token-file=" + token_file,
                                          absl::StrCat("--name=local", i),
                                          absl::StrCat("--threads=", threads),
                                          "--device=" + device,
                                          // Its activation store: the hidden states of its tasks.
                                          absl::StrCat("--scratch=", o.data_dir, "/worker", i)},
                                         absl::StrCat(c->log_dir_, "/worker", i, ".log"), -1));
    c->workers_.push_back(w);
  }
  return c;
}

void EmbeddedCluster::StopWorkers() {
  if (!workers_stopping_) stopping_ = Signal(workers_);
  workers_stopping_ = true;
}

EmbeddedCluster::~EmbeddedCluster() {
  StopWorkers();  // first: a worker stopping mid-task still reports to the coordinator
  Reap(stopping_);
  Reap(Signal({coordinator_}));
  if (coordinator_stdout_ >= 0) ::close(coordinator_stdout_);
}

}  // namespace moec::client
