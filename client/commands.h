// The commands of the `moec` CLI (docs/cli.md), which client/main.cc dispatches to. Each takes
// its parsed command line, prints what the command shows and returns the process's exit code.
#ifndef MOEC_CLIENT_COMMANDS_H_
#define MOEC_CLIENT_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "client/args.h"

namespace moec::client::cli {

// Exit codes.
constexpr int kOk = 0;          // command done; job succeeded
constexpr int kJobFailed = 1;   // the job failed or was cancelled
constexpr int kUsage = 2;       // bad command line or recipe
constexpr int kUnavailable = 3; // coordinator unreachable or an RPC failed

// Prints "moec: MESSAGE" on stderr and returns `code`.
inline int Error(int code, const absl::Status& s) {
  std::fprintf(stderr, "moec: %s\n", std::string(s.message()).c_str());
  return code;
}

// Cluster commands (client/commands_cluster.cc): they reach a coordinator (--coordinator,
// --token-file, --tls-ca), except `run`, which starts its own.
int CmdRun(const Args& args);
int CmdSubmit(const Args& args);
int CmdReport(const Args& args);
// `watch`, `status`, `cancel` and `resume` (`cmd`) of one JOB.
int CmdJob(const std::string& cmd, const Args& args);
// `list` or `workers` (`cmd`).
int CmdList(const std::string& cmd, const Args& args);

// Local commands (client/commands_local.cc): no coordinator.
int CmdPlan(const Args& args);
int CmdInspect(const Args& args);
int CmdEval(const Args& args);
int CmdMakeTinyModel(const Args& args);

// The numeric flags of make-tiny-model; 0 where not given.
struct TinyModelFlags {
  int64_t layers = 0, experts = 0, steps = 0;
  // Shape of a random model (benchmarks write mid-size ones: tests/bench/job_bench.sh).
  int64_t hidden = 0, heads = 0, kv_heads = 0, expert_width = 0, top_k = 0;
  uint64_t seed = 0;
};

// make-tiny-model --trained: trains a tiny model and its tokenizer into `dir` (or reuses the same
// training found there).
int MakeTrainedTinyModel(const Args& args, const std::string& dir, const TinyModelFlags& f);

}  // namespace moec::client::cli

#endif  // MOEC_CLIENT_COMMANDS_H_
