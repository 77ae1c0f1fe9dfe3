// moec: submit, watch and manage compression jobs; `moec run` does it all on one machine.
// Commands and exit codes: docs/cli.md.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/args.h"
#include "client/client.h"
#include "client/embedded.h"
#include "common/cli_util.h"
#include "common/process_tuning.h"
#include "common/recipe/recipe.h"
#include "glog/logging.h"
#include "google/protobuf/util/json_util.h"

namespace moec::client {
namespace {

// Exit codes.
constexpr int kOk = 0;          // command done; job succeeded
constexpr int kJobFailed = 1;   // the job failed or was cancelled
constexpr int kUsage = 2;       // bad command line or recipe
constexpr int kUnavailable = 3; // coordinator unreachable or an RPC failed

const char kUsageText[] = R"(moec — compress Mixture-of-Experts models (docs/cli.md)

usage: moec COMMAND [ARGS]

  run RECIPE [--workers N] [--data-dir DIR] [--set K=V]...
                         run a job on this machine (embedded coordinator + N workers);
                         run it again after an interruption and it resumes
  submit RECIPE [--set K=V]... [--watch]
                         validate and submit a recipe to a coordinator
  watch JOB              follow a job's events until it ends
  status JOB             a job's state and task counts
  list                   all jobs
  cancel JOB             cancel a job
  resume JOB             re-run the failed or cancelled tasks of a job
  workers                the workers a coordinator knows

Cluster commands reach a coordinator with --coordinator HOST:PORT and --token-file PATH
(or MOEC_COORDINATOR, MOEC_TOKEN_FILE); --tls-ca FILE for TLS. --json prints data as JSON.
Exit codes: 0 success, 1 job failed or cancelled, 2 usage or recipe error, 3 coordinator
unreachable or RPC error.
)";

int Error(int code, const absl::Status& s) {
  std::fprintf(stderr, "moec: %s\n", std::string(s.message()).c_str());
  return code;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

absl::StatusOr<std::unique_ptr<MoecClient>> Connect(const Args& args) {
  ClientOptions o;
  o.address = args.Get("coordinator", Env("MOEC_COORDINATOR"));
  std::string token_file = args.Get("token-file", Env("MOEC_TOKEN_FILE"));
  if (!token_file.empty()) {
    absl::StatusOr<std::string> token = ReadSecretFile(token_file, "token file");
    if (!token.ok()) return token.status();
    o.token = *token;
  }
  if (!args.Get("tls-ca").empty()) {
    absl::StatusOr<std::string> ca = ReadSecretFile(args.Get("tls-ca"), "TLS CA");
    if (!ca.ok()) return ca.status();
    o.tls_ca = *ca;
  }
  return MoecClient::Create(o);
}

int ExitCodeFor(v1::JobState s) {
  return s == v1::JOB_SUCCEEDED ? kOk : kJobFailed;
}

// Prints events as they come, with a done/total counter; returns the final job state.
absl::StatusOr<v1::JobState> Follow(MoecClient& client, const std::string& job_id, bool json) {
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, true, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  int total = job->tasks_size(), done = 0;
  for (const auto& t : job->tasks()) done += t.state() == v1::TASK_DONE;
  absl::Status s = client.Watch(job_id, 1, [&](const v1::JobEvent& e) {
    if (e.kind() == "task_done" || e.kind() == "task_reused") ++done;
    if (json) {
      std::printf("%s\n", Json(e).c_str());
    } else {
      std::printf("%s  %-14s %-40s %s%s\n",
                  absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(e.time_ms()), absl::LocalTimeZone()).c_str(),
                  e.kind().c_str(), e.task_id().c_str(), e.message().c_str(),
                  e.kind().rfind("task_", 0) == 0 ? absl::StrFormat("  [%d/%d]", std::min(done, total), total).c_str() : "");
    }
    std::fflush(stdout);
  });
  if (!s.ok()) return s;
  job = client.GetJob(job_id, false, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  if (!json) {
    std::printf("job %s: %s%s\n", job_id.c_str(), v1::JobState_Name(job->job().state()).c_str(),
                job->job().error().empty() ? "" : (" — " + job->job().error()).c_str());
  }
  return job->job().state();
}

absl::StatusOr<std::pair<std::string, std::string>> ReadRecipe(const Args& args) {
  if (args.positional.size() != 1) return absl::InvalidArgumentError("expected one RECIPE file");
  const std::string path = std::filesystem::absolute(args.positional[0]).string();
  // Validate here first, for errors before anything is started or sent.
  absl::StatusOr<recipe::Recipe> r = recipe::LoadRecipeFile(path, args.All("set"));
  if (!r.ok()) return r.status();
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return std::make_pair(path, buf.str());
}

int CmdSubmit(const Args& args) {
  auto recipe = ReadRecipe(args);
  if (!recipe.ok()) return Error(kUsage, recipe.status());
  auto client = Connect(args);
  if (!client.ok()) return Error(kUsage, client.status());
  auto resp = (*client)->Submit(recipe->second, recipe->first, args.All("set"));
  if (!resp.ok()) return Error(absl::IsUnavailable(resp.status()) ? kUnavailable : kUsage, resp.status());
  if (args.Has("json")) {
    std::printf("%s\n", Json(*resp).c_str());
  } else {
    std::printf("%s %s\n", resp->existed() ? "existing job" : "submitted", resp->job().job_id().c_str());
  }
  if (!args.Has("watch")) return kOk;
  auto state = Follow(**client, resp->job().job_id(), args.Has("json"));
  if (!state.ok()) return Error(kUnavailable, state.status());
  return ExitCodeFor(*state);
}

int CmdRun(const Args& args) {
  auto recipe = ReadRecipe(args);
  if (!recipe.ok()) return Error(kUsage, recipe.status());
  int workers = 0;
  if (!args.Get("workers").empty() && (!absl::SimpleAtoi(args.Get("workers"), &workers) || workers < 1)) {
    return Error(kUsage, absl::InvalidArgumentError("--workers must be a positive integer"));
  }
  if (workers == 0) {
    workers = recipe::LoadRecipeFile(recipe->first, args.All("set"))->workers;
  }
  EmbeddedOptions eo;
  eo.workers = workers;
  eo.data_dir = args.Get("data-dir", std::filesystem::path(recipe->first).parent_path().string() + "/.moec");
  std::printf("moec run: starting a coordinator and %d workers (state in %s)\n", workers, eo.data_dir.c_str());
  auto cluster = EmbeddedCluster::Start(eo);
  if (!cluster.ok()) return Error(kUnavailable, cluster.status());
  ClientOptions co;
  co.address = (*cluster)->address();
  co.token = (*cluster)->token();
  auto client = MoecClient::Create(co);
  if (!client.ok()) return Error(kUnavailable, client.status());
  auto resp = (*client)->Submit(recipe->second, recipe->first, args.All("set"));
  if (!resp.ok()) return Error(absl::IsUnavailable(resp.status()) ? kUnavailable : kUsage, resp.status());
  const v1::JobRecord& job = resp->job();
  if (resp->existed()) {
    std::printf("resuming job %s (%s)\n", job.job_id().c_str(), v1::JobState_Name(job.state()).c_str());
    if (job.state() == v1::JOB_FAILED || job.state() == v1::JOB_CANCELLED) {
      absl::Status s = (*client)->Resume(job.job_id());
      if (!s.ok()) return Error(kUnavailable, s);
    }
  } else {
    std::printf("submitted job %s\n", job.job_id().c_str());
  }
  auto state = Follow(**client, job.job_id(), args.Has("json"));
  if (!state.ok()) return Error(kUnavailable, state.status());
  std::printf("logs: %s\n", (*cluster)->log_dir().c_str());
  return ExitCodeFor(*state);
}

int CmdJob(const std::string& cmd, const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError(absl::StrCat("moec ", cmd, " JOB")));
  auto client = Connect(args);
  if (!client.ok()) return Error(kUsage, client.status());
  const std::string& id = args.positional[0];
  if (cmd == "watch") {
    auto state = Follow(**client, id, args.Has("json"));
    if (!state.ok()) return Error(kUnavailable, state.status());
    return ExitCodeFor(*state);
  }
  if (cmd == "cancel" || cmd == "resume") {
    absl::Status s = cmd == "cancel" ? (*client)->Cancel(id) : (*client)->Resume(id);
    if (!s.ok()) return Error(absl::IsUnavailable(s) ? kUnavailable : kUsage, s);
    std::printf("%s %s\n", cmd == "cancel" ? "cancelled" : "resumed", id.c_str());
    return kOk;
  }
  auto job = (*client)->GetJob(id, true);  // status
  if (!job.ok()) return Error(absl::IsUnavailable(job.status()) ? kUnavailable : kUsage, job.status());
  if (args.Has("json")) {
    std::printf("%s\n", Json(*job).c_str());
    return kOk;
  }
  std::map<std::string, int> counts;
  for (const auto& t : job->tasks()) ++counts[v1::TaskState_Name(t.state())];
  std::printf("job %s (%s): %s\n", id.c_str(), job->job().name().c_str(),
              v1::JobState_Name(job->job().state()).c_str());
  for (const auto& [state, n] : counts) std::printf("  %-16s %d\n", state.c_str(), n);
  if (!job->job().error().empty()) std::printf("  error: %s\n", job->job().error().c_str());
  return kOk;
}

int CmdList(const std::string& cmd, const Args& args) {
  auto client = Connect(args);
  if (!client.ok()) return Error(kUsage, client.status());
  if (cmd == "list") {
    auto jobs = (*client)->ListJobs();
    if (!jobs.ok()) return Error(kUnavailable, jobs.status());
    for (const auto& j : *jobs) {
      if (args.Has("json")) std::printf("%s\n", Json(j).c_str());
      else std::printf("%-32s %-16s %s\n", j.job_id().c_str(), v1::JobState_Name(j.state()).c_str(), j.name().c_str());
    }
    return kOk;
  }
  auto workers = (*client)->ListWorkers();
  if (!workers.ok()) return Error(kUnavailable, workers.status());
  for (const auto& w : *workers) {
    if (args.Has("json")) std::printf("%s\n", Json(w).c_str());
    else std::printf("%-32s tasks=%d\n", w.worker_id().c_str(), w.tasks_size());
  }
  return kOk;
}

int Main(int argc, char** argv) {
  std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty() || all[0] == "--help" || all[0] == "help" || all[0] == "-h") {
    std::fputs(kUsageText, all.empty() ? stderr : stdout);
    return all.empty() ? kUsage : kOk;
  }
  const std::string cmd = all[0];
  std::vector<std::string> rest(all.begin() + 1, all.end());
  const std::set<std::string> conn = {"coordinator", "token-file", "tls-ca"};
  std::set<std::string> values = conn;
  std::set<std::string> bools = {"json", "help"};
  if (cmd == "run") values = {"workers", "data-dir", "set"};
  if (cmd == "submit") {
    values.insert("set");
    bools.insert("watch");
  }
  static const std::set<std::string> kCommands = {"run", "submit", "watch", "status", "list",
                                                  "cancel", "resume", "workers"};
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
  if (cmd == "run") return CmdRun(*args);
  if (cmd == "submit") return CmdSubmit(*args);
  if (cmd == "list" || cmd == "workers") return CmdList(cmd, *args);
  return CmdJob(cmd, *args);
}

}  // namespace
}  // namespace moec::client

int main(int argc, char** argv) {
  moec::TuneMallocForLargeBuffers();
  google::InitGoogleLogging(argv[0]);
  return moec::client::Main(argc, argv);
}
