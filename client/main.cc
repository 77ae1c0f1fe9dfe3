// moec: submit, watch and manage compression jobs; `moec run` does it all on one machine.
// Commands and exit codes: docs/cli.md. The commands: client/commands.h.
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "client/args.h"
#include "client/commands.h"
#include "common/process_tuning.h"
#include "glog/logging.h"

namespace moec::client::cli {
namespace {

const char kUsageText[] = R"(moec — compress Mixture-of-Experts models (docs/cli.md)

usage: moec COMMAND [ARGS]

  run RECIPE [--workers N] [--data-dir DIR] [--set K=V]... [--overwrite] [--device cpu|cuda]
                         run a job on this machine (embedded coordinator + N workers);
                         run it again after an interruption and it resumes;
                         --device cuda puts worker i on GPU i (every stage runs there)
  plan RECIPE [--set K=V]... [--workers N] [--json]
                         dry run, no coordinator: the stage DAG, tasks per stage, and
                         estimates of memory per worker, factor-store bytes and output size
  submit RECIPE [--set K=V]... [--watch] [--overwrite]
                         validate and submit a recipe to a coordinator; an existing output
                         is refused unless this job wrote it or --overwrite is given
  watch JOB              follow a job's events until it ends
  status JOB             a job's state and task counts
  list                   all jobs
  cancel JOB             cancel a job
  resume JOB             re-run the failed or cancelled tasks of a job
  report JOB [--out DIR] what the job's evaluate stages measured (perplexity, size, bits),
                         as Markdown (--json: one object); --out also writes report.md,
                         report.json and SVG figures (expert usage, bit allocation, GPTQ
                         error, kept experts, similarities, perplexity against size)
  workers                the workers a coordinator knows
  inspect MODEL          what a model directory holds: architecture, experts, parameter
                         counts, dtypes, shards, moec overrides (--json: one object)
  eval MODEL --text FILE [--seqlen N] [--max-windows K] [--dtype fp32|bf16] [--text-field F]
                         perplexity on a local text (.jsonl, .json, .txt) by the GPTQ protocol:
                         the text is tokenized once and cut into non-overlapping windows
                         (default seqlen 2048, all windows); layers stream from disk
  make-tiny-model DIR --arch ARCH [--layers N] [--experts E] [--dtype F32|BF16|F16] [--seed S]
                  [--hidden H] [--heads N] [--kv-heads N] [--expert-width F] [--top-k K]
                         write a random checkpoint (mixtral, deepseek, qwen2_moe, olmoe,
                         qwen3_moe) with config.json and tokenizer; tiny by default, the
                         shape flags make mid-size ones (up to 2^30 parameters) for benches
  make-tiny-model DIR --arch mixtral|deepseek --trained [--steps N] [--corpus FILE]...
                         train a tiny model and its BPE tokenizer on local English text
                         (default /usr/share/common-licenses) in a few minutes; reused when
                         DIR already holds the same training

Cluster commands reach a coordinator with --coordinator HOST:PORT and --token-file PATH
(or MOEC_COORDINATOR, MOEC_TOKEN_FILE), a client token (docs/operations.md, roles); --tls-ca
FILE for TLS, and --tls-cert FILE --tls-key FILE for mutual TLS (a certificate the coordinator
lists as a client identity needs no token). --connect-timeout SECONDS waits that long for a
coordinator that is still starting (default: fail at once). --json prints data as JSON.
Exit codes: 0 success, 1 job failed or cancelled, 2 usage or recipe error, 3 coordinator
unreachable or RPC error.
)";

// The flags `cmd` takes: with a value (`values`) and without (`bools`).
void CommandFlags(const std::string& cmd, std::set<std::string>* values,
                  std::set<std::string>* bools) {
  const std::set<std::string> conn = {"coordinator", "token-file", "tls-ca", "tls-cert", "tls-key",
                                      "connect-timeout"};
  *values = conn;
  *bools = {"json", "help"};
  if (cmd == "run") {
    *values = {"workers", "data-dir", "set", "device"};
    bools->insert("overwrite");
  }
  if (cmd == "plan") *values = {"workers", "set"};
  if (cmd == "submit") {
    values->insert("set");
    bools->insert("watch");
    bools->insert("overwrite");
  }
  if (cmd == "inspect") *values = {};
  if (cmd == "eval") *values = {"text", "seqlen", "max-windows", "dtype", "text-field"};
  if (cmd == "make-tiny-model") {
    *values = {"arch",   "layers", "experts",  "dtype",        "seed",  "steps",
               "corpus", "hidden", "heads", "kv-heads", "expert-width", "top-k"};
    bools->insert("trained");
  }
}

int Dispatch(const std::string& cmd, const Args& args) {
  if (cmd == "run") return CmdRun(args);
  if (cmd == "submit") return CmdSubmit(args);
  if (cmd == "plan") return CmdPlan(args);
  if (cmd == "list" || cmd == "workers") return CmdList(cmd, args);
  if (cmd == "inspect") return CmdInspect(args);
  if (cmd == "report") return CmdReport(args);
  if (cmd == "eval") return CmdEval(args);
  if (cmd == "make-tiny-model") return CmdMakeTinyModel(args);
  return CmdJob(cmd, args);
}

int Main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty() || all[0] == "--help" || all[0] == "help" || all[0] == "-h") {
    std::fputs(kUsageText, all.empty() ? stderr : stdout);
    return all.empty() ? kUsage : kOk;
  }
  const std::string cmd = all[0];
  std::vector<std::string> rest(all.begin() + 1, all.end());
  std::set<std::string> values, bools;
  CommandFlags(cmd, &values, &bools);
  static const std::set<std::string> kCommands = {"run",     "plan",    "submit",  "watch",
                                                  "status",  "list",    "cancel",
                                                  "resume",  "workers", "inspect",
                                                  "eval",    "make-tiny-model", "report"};
  if (!kCommands.count(cmd)) {
    std::fprintf(stderr, "moec: unknown command '%s'\n\n%s", cmd.c_str(), kUsageText);
    return kUsage;
  }
  absl::StatusOr<Args> args = ParseArgs(rest, cmd, values, bools);
  if (!args.ok()) return Error(kUsage, args.status());
  if (args->Has("help")) {
    std::fputs(kUsageText, stdout);
    return kOk;
  }
  return Dispatch(cmd, *args);
}

}  // namespace
}  // namespace moec::client::cli

int main(int argc, char** argv) {
  // Only the commands that compute in this process pay for the re-exec (a second start-up).
  if (argc > 1 && (std::string(argv[1]) == "eval" || std::string(argv[1]) == "make-tiny-model")) {
    moec::UsePassiveThreadWait(argv);
  }
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();
  google::InitGoogleLogging(argv[0]);
  return moec::client::cli::Main(argc, argv);
}
