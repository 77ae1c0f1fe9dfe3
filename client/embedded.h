// `moec run`'s embedded cluster: a moec-coordinator and N moec-worker processes on 127.0.0.1
// with a generated token, the same binaries and protocol as a multi-node cluster.
#ifndef MOEC_CLIENT_EMBEDDED_H_
#define MOEC_CLIENT_EMBEDDED_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moec::client {

struct EmbeddedOptions {
  std::string data_dir;  // coordinator state, token, logs/ (kept: a re-run resumes from it)
  int workers = 2;
  std::string bin_dir;   // where moec-coordinator / moec-worker are; empty: next to this binary
  // "cpu", or "cuda": worker i computes on GPU i (each GPU runs one worker, one task at a time).
  std::string device = "cpu";
};

// Owns the processes; the destructor stops them (SIGTERM, then SIGKILL after 5 s).
class EmbeddedCluster {
 public:
  // Errors: NotFound when a binary is missing; Unavailable when the coordinator does not start
  // (its log is named in the message).
  static absl::StatusOr<std::unique_ptr<EmbeddedCluster>> Start(const EmbeddedOptions& options);
  ~EmbeddedCluster();
  EmbeddedCluster(const EmbeddedCluster&) = delete;
  EmbeddedCluster& operator=(const EmbeddedCluster&) = delete;

  const std::string& address() const { return address_; }
  const std::string& token() const { return token_; }
  const std::string& log_dir() const { return log_dir_; }
  // Asks the workers to stop (SIGTERM) without waiting: a finished job's report needs only the
  // coordinator, and the workers exit meanwhile. The destructor waits for them.
  void StopWorkers();

 private:
  EmbeddedCluster() = default;
  std::string address_;
  std::string token_;
  std::string log_dir_;
  pid_t coordinator_ = -1;
  int coordinator_stdout_ = -1;
  std::vector<pid_t> workers_;
  bool workers_stopping_ = false;
  std::vector<pid_t> stopping_;  // workers signalled and not yet reaped
};

// Finds `name` next to the running binary, in the build tree's sibling folders, or on PATH.
absl::StatusOr<std::string> FindMoecBinary(const std::string& name, const std::string& bin_dir);

}  // namespace moec::client

#endif  // MOEC_CLIENT_EMBEDDED_H_
