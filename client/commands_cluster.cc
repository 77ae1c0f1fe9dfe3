// The cluster commands of `moec`: run, submit, watch, status, list, cancel, resume, report and
// workers (docs/cli.md).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/commands.h"
#include "client/embedded.h"
#include "client/job_progress.h"
#include "report/report.h"
#include "report/report_files.h"
#include "common/cli_util.h"
#include "common/recipe/recipe.h"
#include "nlohmann/json.hpp"

namespace moec::client::cli {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string Json(const google::protobuf::Message& m) { return report::MessageJson(m); }

// An RPC's error: kUnavailable when the coordinator could not be reached, else kUsage.
int RpcError(const absl::Status& s) {
  return Error(absl::IsUnavailable(s) ? kUnavailable : kUsage, s);
}

// Connect's error: kUnavailable when no coordinator answered in --connect-timeout, else kUsage
// (flags, files).
int ConnectError(const absl::Status& s) {
  return Error(absl::IsUnavailable(s) ? kUnavailable : kUsage, s);
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
  if (const std::string t = args.Get("connect-timeout"); !t.empty()) {
    double seconds = 0;
    if (!absl::SimpleAtod(t, &seconds) || !(seconds >= 0) || seconds > 3600) {
      return absl::InvalidArgumentError(
          absl::StrCat("--connect-timeout must be seconds in [0, 3600], got '", t, "'"));
    }
    o.connect_timeout_ms = static_cast<int64_t>(seconds * 1000);
  }
  for (auto [flag, out, what] : {std::make_tuple("tls-ca", &o.tls_ca, "TLS CA"),
                                 std::make_tuple("tls-cert", &o.tls_cert, "TLS certificate"),
                                 std::make_tuple("tls-key", &o.tls_key, "TLS key")}) {
    if (args.Get(flag).empty()) continue;
    absl::StatusOr<std::string> pem = ReadSecretFile(args.Get(flag), what);
    if (!pem.ok()) return pem.status();
    *out = *pem;
  }
  return MoecClient::Create(o);
}

int ExitCodeFor(v1::JobState s) {
  return s == v1::JOB_SUCCEEDED ? kOk : kJobFailed;
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

// The workers of `moec run`: --workers, else the recipe's.
absl::StatusOr<int> RunWorkers(const Args& args, const std::string& recipe_path) {
  int workers = 0;
  if (!args.Get("workers").empty() && (!absl::SimpleAtoi(args.Get("workers"), &workers) || workers < 1)) {
    return absl::InvalidArgumentError("--workers must be a positive integer");
  }
  if (workers == 0) {
    workers = recipe::LoadRecipeFile(recipe_path, args.All("set"))->workers;
  }
  return workers;
}

// The overrides `moec run` submits: --set, and the job's compute threads fixed to this
// machine's cores when the recipe leaves them to the workers, so that its bytes do not depend on
// --workers (docs/recipes.md `threads`).
std::vector<std::string> RunOverrides(const Args& args, const std::string& recipe_path) {
  std::vector<std::string> overrides = args.All("set");
  absl::StatusOr<recipe::Recipe> r = recipe::LoadRecipeFile(recipe_path, overrides);
  if (r.ok() && r->threads == 0) {
    const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    overrides.push_back(absl::StrCat("threads=", cores));
    std::printf("moec run: %d compute threads per task (this machine's cores; `threads` in the "
                "recipe sets them)\n", cores);
  }
  return overrides;
}

absl::StatusOr<std::unique_ptr<MoecClient>> ConnectEmbedded(const EmbeddedCluster& cluster) {
  ClientOptions co;
  co.address = cluster.address();
  co.token = cluster.token();
  return MoecClient::Create(co);
}

// Says which job `moec run` follows; an existing job that failed or was cancelled is resumed.
absl::Status StartOrResume(MoecClient& client, const v1::SubmitJobResponse& resp) {
  const v1::JobRecord& job = resp.job();
  if (!resp.existed()) {
    std::printf("submitted job %s\n", job.job_id().c_str());
    return absl::OkStatus();
  }
  std::printf("resuming job %s (%s)\n", job.job_id().c_str(), v1::JobState_Name(job.state()).c_str());
  if (job.state() == v1::JOB_FAILED || job.state() == v1::JOB_CANCELLED) {
    return client.Resume(job.job_id());
  }
  return absl::OkStatus();
}

// The job's report files, as the coordinator builds them (GetJobReport). Errors: those of the
// RPC; DataLoss when its report.json is not a JSON object.
absl::StatusOr<std::map<std::string, std::string>> ReportFiles(MoecClient& client,
                                                               const std::string& job_id) {
  absl::StatusOr<v1::GetJobReportResponse> resp = client.GetJobReport(job_id, /*include_files=*/true);
  if (!resp.ok()) return resp.status();
  std::map<std::string, std::string> files(resp->files().begin(), resp->files().end());
  files["report.json"] = resp->report_json();
  if (!nlohmann::json::parse(resp->report_json(), nullptr, false).is_object()) {
    return absl::DataLossError(absl::StrCat("the report of job ", job_id, " is not a JSON object"));
  }
  return files;
}

// The report of a job `moec run` saw succeed: on stdout (Markdown when something was evaluated;
// `json`: one object) and as files with figures under `data_dir`/reports/JOB (a failure to write
// them is only reported). Errors: those of ReportFiles.
absl::Status ShowRunReport(MoecClient& client, const std::string& job_id,
                           const std::string& data_dir, bool json) {
  absl::StatusOr<std::map<std::string, std::string>> files = ReportFiles(client, job_id);
  if (!files.ok()) return files.status();
  const nlohmann::json report = nlohmann::json::parse((*files)["report.json"]);
  if (json) {
    std::printf("%s\n", report.dump().c_str());
  } else {
    std::printf("\n%s\n", report::ReportMarkdown(report).c_str());  // evaluations, where the time went
  }
  const std::string dir = data_dir + "/reports/" + job_id;
  absl::Status written = report::WriteReportFiles(*files, dir);
  if (written.ok()) {
    std::fprintf(stderr, "report with figures: %s/report.md\n", dir.c_str());
  } else {
    std::fprintf(stderr, "report files not written: %s\n", written.ToString().c_str());
  }
  return absl::OkStatus();
}

// `moec status JOB`: the job's state, its tasks counted by state, the running ones.
int PrintJobStatus(MoecClient& client, const std::string& id, bool json) {
  auto job = client.GetJob(id, true);
  if (!job.ok()) return RpcError(job.status());
  if (json) {
    std::printf("%s\n", Json(*job).c_str());
    return kOk;
  }
  std::map<std::string, int> counts;
  for (const auto& t : job->tasks()) ++counts[v1::TaskState_Name(t.state())];
  std::printf("job %s (%s): %s\n", id.c_str(), job->job().name().c_str(),
              v1::JobState_Name(job->job().state()).c_str());
  for (const auto& [state, n] : counts) std::printf("  %-16s %d\n", state.c_str(), n);
  for (const auto& t : job->tasks()) {
    if (t.state() != v1::TASK_LEASED) continue;
    std::printf("  running %-40s %3.0f%% %s\n", t.task_id().c_str(), 100 * t.progress(),
                t.progress_message().c_str());
  }
  if (!job->job().error().empty()) std::printf("  error: %s\n", job->job().error().c_str());
  return kOk;
}

}  // namespace

int CmdSubmit(const Args& args) {
  auto recipe = ReadRecipe(args);
  if (!recipe.ok()) return Error(kUsage, recipe.status());
  auto client = Connect(args);
  if (!client.ok()) return ConnectError(client.status());
  auto resp = (*client)->Submit(recipe->second, recipe->first, args.All("set"), args.Has("overwrite"));
  if (!resp.ok()) return RpcError(resp.status());
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
  absl::StatusOr<int> workers = RunWorkers(args, recipe->first);
  if (!workers.ok()) return Error(kUsage, workers.status());
  EmbeddedOptions eo;
  eo.workers = *workers;
  eo.device = args.Get("device", "cpu");
  eo.data_dir = args.Get("data-dir", std::filesystem::path(recipe->first).parent_path().string() + "/.moec");
  std::printf("moec run: starting a coordinator and %d %s workers (state in %s)\n", *workers,
              eo.device == "cuda" ? "GPU" : "CPU", eo.data_dir.c_str());
  auto cluster = EmbeddedCluster::Start(eo);
  if (!cluster.ok()) return Error(kUnavailable, cluster.status());
  auto client = ConnectEmbedded(**cluster);
  if (!client.ok()) return Error(kUnavailable, client.status());
  auto resp = (*client)->Submit(recipe->second, recipe->first, RunOverrides(args, recipe->first),
                                args.Has("overwrite"));
  if (!resp.ok()) return RpcError(resp.status());
  if (absl::Status s = StartOrResume(**client, *resp); !s.ok()) return Error(kUnavailable, s);
  const std::string& job_id = resp->job().job_id();
  auto state = Follow(**client, job_id, args.Has("json"));
  if (!state.ok()) return Error(kUnavailable, state.status());
  (*cluster)->StopWorkers();  // they exit while the report is read and printed
  if (*state == v1::JOB_SUCCEEDED) {
    absl::Status s = ShowRunReport(**client, job_id, eo.data_dir, args.Has("json"));
    if (!s.ok()) return Error(kUnavailable, s);
  }
  std::printf("logs: %s\n", (*cluster)->log_dir().c_str());
  return ExitCodeFor(*state);
}

int CmdReport(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec report JOB"));
  auto client = Connect(args);
  if (!client.ok()) return ConnectError(client.status());
  absl::StatusOr<std::map<std::string, std::string>> files = ReportFiles(**client, args.positional[0]);
  if (!files.ok()) {
    return Error(absl::IsNotFound(files.status()) ? kUsage : kUnavailable, files.status());
  }
  const nlohmann::json report = nlohmann::json::parse((*files)["report.json"]);
  if (!args.Get("out").empty()) {
    absl::Status s = report::WriteReportFiles(*files, args.Get("out"));
    if (!s.ok()) return Error(kUnavailable, s);
    std::fprintf(stderr, "report files in %s (report.md, report.json, figures)\n", args.Get("out").c_str());
  }
  std::printf("%s\n", args.Has("json") ? report.dump().c_str() : report::ReportMarkdown(report).c_str());
  return kOk;
}

int CmdJob(const std::string& cmd, const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError(absl::StrCat("moec ", cmd, " JOB")));
  auto client = Connect(args);
  if (!client.ok()) return ConnectError(client.status());
  const std::string& id = args.positional[0];
  if (cmd == "watch") {
    auto state = Follow(**client, id, args.Has("json"));
    if (!state.ok()) return Error(kUnavailable, state.status());
    return ExitCodeFor(*state);
  }
  if (cmd == "cancel" || cmd == "resume") {
    absl::Status s = cmd == "cancel" ? (*client)->Cancel(id) : (*client)->Resume(id);
    if (!s.ok()) return RpcError(s);
    std::printf("%s %s\n", cmd == "cancel" ? "cancelled" : "resumed", id.c_str());
    return kOk;
  }
  return PrintJobStatus(**client, id, args.Has("json"));  // status
}

int CmdList(const std::string& cmd, const Args& args) {
  auto client = Connect(args);
  if (!client.ok()) return ConnectError(client.status());
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
    else if (w.gpu()) std::printf("%-32s gpu %6.1f GiB host, %6.1f GiB GPU  tasks=%d\n",
                                  w.worker_id().c_str(), static_cast<double>(w.memory_bytes()) / (1 << 30),
                                  static_cast<double>(w.device_memory_bytes()) / (1 << 30), w.tasks_size());
    else std::printf("%-32s cpu %6.1f GiB host  tasks=%d\n", w.worker_id().c_str(),
                     static_cast<double>(w.memory_bytes()) / (1 << 30), w.tasks_size());
  }
  return kOk;
}

}  // namespace moec::client::cli
