// moec: submit, watch and manage compression jobs; `moec run` does it all on one machine.
// Commands and exit codes: docs/cli.md.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/args.h"
#include "client/client.h"
#include "client/embedded.h"
#include "client/eval.h"
#include "client/inspect.h"
#include "client/job_progress.h"
#include "client/plan.h"
#include "client/report.h"
#include "client/report_files.h"
#include "common/cli_util.h"
#include "common/process_tuning.h"
#include "common/recipe/recipe.h"
#include "glog/logging.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "tools/tiny_model.h"
#include "tools/trainer.h"

namespace moec::client {
namespace {

// Exit codes.
constexpr int kOk = 0;          // command done; job succeeded
constexpr int kJobFailed = 1;   // the job failed or was cancelled
constexpr int kUsage = 2;       // bad command line or recipe
constexpr int kUnavailable = 3; // coordinator unreachable or an RPC failed

const char kUsageText[] = R"(moec — compress Mixture-of-Experts models (docs/cli.md)

usage: moec COMMAND [ARGS]

  run RECIPE [--workers N] [--data-dir DIR] [--set K=V]... [--overwrite]
                         run a job on this machine (embedded coordinator + N workers);
                         run it again after an interruption and it resumes
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
                         write a tiny random checkpoint (mixtral, deepseek, qwen2_moe, olmoe,
                         qwen3_moe) with config.json and tokenizer
  make-tiny-model DIR --arch mixtral|deepseek --trained [--steps N] [--corpus FILE]...
                         train a tiny model and its BPE tokenizer on local English text
                         (default /usr/share/common-licenses) in a few minutes; reused when
                         DIR already holds the same training

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

std::string Json(const google::protobuf::Message& m) { return MessageJson(m); }

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

int CmdPlan(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec plan RECIPE"));
  std::vector<std::string> overrides = args.All("set");
  if (!args.Get("workers").empty()) overrides.push_back("workers=" + args.Get("workers"));
  absl::StatusOr<recipe::Recipe> r = recipe::LoadRecipeFile(args.positional[0], overrides);
  if (!r.ok()) return Error(kUsage, r.status());
  absl::StatusOr<JobPlan> plan = PlanRecipe(*r);
  if (!plan.ok()) return Error(kUsage, plan.status());
  if (args.Has("json")) {
    std::printf("%s\n", PlanJson(*plan).dump().c_str());
  } else {
    std::fputs(PlanText(*plan).c_str(), stdout);
  }
  return kOk;
}

int CmdSubmit(const Args& args) {
  auto recipe = ReadRecipe(args);
  if (!recipe.ok()) return Error(kUsage, recipe.status());
  auto client = Connect(args);
  if (!client.ok()) return Error(kUsage, client.status());
  auto resp = (*client)->Submit(recipe->second, recipe->first, args.All("set"), args.Has("overwrite"));
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
  auto resp = (*client)->Submit(recipe->second, recipe->first, args.All("set"), args.Has("overwrite"));
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
  if (*state == v1::JOB_SUCCEEDED) {
    absl::StatusOr<nlohmann::json> report = JobReport(**client, job.job_id());
    if (!report.ok()) return Error(kUnavailable, report.status());
    if (args.Has("json")) {
      std::printf("%s\n", report->dump().c_str());
    } else if (!(*report)["evaluations"].empty()) {
      std::printf("\n%s\n", ReportMarkdown(*report).c_str());
    }
    const std::string dir = eo.data_dir + "/reports/" + job.job_id();
    absl::Status written = WriteReportFiles(**client, job.job_id(), dir);
    if (written.ok()) {
      std::fprintf(stderr, "report with figures: %s/report.md\n", dir.c_str());
    } else {
      std::fprintf(stderr, "report files not written: %s\n", written.ToString().c_str());
    }
  }
  std::printf("logs: %s\n", (*cluster)->log_dir().c_str());
  return ExitCodeFor(*state);
}

int CmdReport(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec report JOB"));
  auto client = Connect(args);
  if (!client.ok()) return Error(kUsage, client.status());
  absl::StatusOr<nlohmann::json> report = JobReport(**client, args.positional[0]);
  if (!report.ok()) {
    return Error(absl::IsNotFound(report.status()) ? kUsage : kUnavailable, report.status());
  }
  if (!args.Get("out").empty()) {
    absl::Status s = WriteReportFiles(**client, args.positional[0], args.Get("out"));
    if (!s.ok()) return Error(kUnavailable, s);
    std::fprintf(stderr, "report files in %s (report.md, report.json, figures)\n", args.Get("out").c_str());
  }
  std::printf("%s\n", args.Has("json") ? report->dump().c_str() : ReportMarkdown(*report).c_str());
  return kOk;
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
  for (const auto& t : job->tasks()) {
    if (t.state() != v1::TASK_LEASED) continue;
    std::printf("  running %-40s %3.0f%% %s\n", t.task_id().c_str(), 100 * t.progress(),
                t.progress_message().c_str());
  }
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
    else std::printf("%-32s %s %6.1f GiB  tasks=%d\n", w.worker_id().c_str(), w.gpu() ? "gpu" : "cpu",
                     static_cast<double>(w.memory_bytes()) / (1 << 30), w.tasks_size());
  }
  return kOk;
}

// 1234567 -> "1,234,567".
std::string Grouped(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  for (; v >= 1024 && u < 4; ++u) v /= 1024;
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

nlohmann::ordered_json InspectionJson(const ModelInspection& m) {
  const model::ParameterCounts& p = m.parameters;
  nlohmann::ordered_json overrides = nlohmann::ordered_json::array();
  for (const LayerOverride& o : m.layer_overrides) {
    nlohmann::ordered_json j = {{"layer", o.layer}};
    if (o.experts) j["experts"] = *o.experts;
    if (o.kept_experts) j["kept_experts"] = *o.kept_experts;
    if (o.moe_dropped) j["moe_dropped"] = true;
    if (o.skip_beta) j["skip_beta"] = *o.skip_beta;
    if (o.odp_beta) j["odp_beta"] = *o.odp_beta;
    overrides.push_back(std::move(j));
  }
  nlohmann::ordered_json j = {
      {"model_dir", m.model_dir}, {"model_type", m.model_type},
      {"architectures", m.architectures}, {"num_layers", m.num_layers},
      {"moe_layers", m.num_moe_layers}, {"dense_layers", m.num_dense_layers},
      {"dropped_moe_layers", m.num_dropped_moe_layers}, {"num_experts", m.num_experts},
      {"top_k", m.top_k}, {"routed_experts_per_layer", m.routed_experts_per_layer},
      {"shared_experts", m.shared_experts},
      {"shared_expert_intermediate_size", m.shared_expert_intermediate_size},
      {"hidden_size", m.hidden_size}, {"intermediate_size", m.intermediate_size},
      {"moe_intermediate_size", m.moe_intermediate_size},
      {"num_attention_heads", m.num_attention_heads},
      {"num_key_value_heads", m.num_key_value_heads}, {"head_dim", m.head_dim},
      {"vocab_size", m.vocab_size}, {"tie_word_embeddings", m.tie_word_embeddings},
      {"torch_dtype", m.torch_dtype},
      {"parameters", {{"total", p.total}, {"activated", p.activated}, {"embedding", p.embedding},
                      {"lm_head", p.lm_head}, {"norms", p.norms}, {"attention", p.attention},
                      {"routers", p.routers}, {"routed_experts", p.routed_experts},
                      {"shared_experts", p.shared_experts}, {"dense_mlp", p.dense_mlp}}},
      {"has_weights", m.has_weights}, {"tensors_by_dtype", m.tensors_by_dtype},
      {"num_tensors", m.num_tensors}, {"tensor_bytes", m.tensor_bytes},
      {"num_shards", m.num_shards}, {"size_on_disk", m.size_on_disk},
      {"missing_tensors", m.missing_tensors}, {"unexpected_tensors", m.unexpected_tensors},
      {"mismatched_shapes", m.mismatched_shapes}, {"has_moec_overrides", m.has_moec_overrides},
      {"layer_overrides", overrides}};
  if (m.odp) {
    j["odp"] = {{"enabled_layers", m.odp->enabled_layers}, {"tau_low", m.odp->tau_low},
                {"tau_high", m.odp->tau_high}, {"positional_prior", m.odp->positional_prior}};
  }
  return j;
}

void PrintInspection(const ModelInspection& m) {
  std::printf("model          %s\n", m.model_dir.c_str());
  std::printf("architecture   %s%s\n", m.model_type.c_str(),
              m.architectures.empty() ? "" : absl::StrCat(" (", absl::StrJoin(m.architectures, ", "), ")").c_str());
  std::printf("layers         %d (%d MoE, %d dense%s)\n", m.num_layers, m.num_moe_layers, m.num_dense_layers,
              m.num_dropped_moe_layers ? absl::StrCat(", ", m.num_dropped_moe_layers, " MoE dropped").c_str() : "");
  std::printf("experts        %d routed per MoE layer (width %lld), top-%d\n", m.num_experts,
              static_cast<long long>(m.moe_intermediate_size), m.top_k);
  std::printf("shared experts %d%s\n", m.shared_experts,
              m.shared_experts ? absl::StrCat(" (width ", m.shared_expert_intermediate_size, ")").c_str() : "");
  std::printf("hidden size    %lld%s\n", static_cast<long long>(m.hidden_size),
              m.num_dense_layers > 0
                  ? absl::StrCat(" (dense MLP ", m.intermediate_size, ")").c_str()
                  : "");
  std::printf("heads          %d (kv %d, head_dim %lld)\n", m.num_attention_heads, m.num_key_value_heads,
              static_cast<long long>(m.head_dim));
  std::printf("vocab          %lld%s\n", static_cast<long long>(m.vocab_size), m.tie_word_embeddings ? " (tied)" : "");
  std::printf("parameters     %s total, %s activated per token\n", Grouped(m.parameters.total).c_str(),
              Grouped(m.parameters.activated).c_str());
  if (!m.has_weights) {
    std::printf("weights        none (no model.safetensors or index)\n");
  } else {
    std::vector<std::string> dtypes;
    for (const auto& [d, n] : m.tensors_by_dtype) dtypes.push_back(absl::StrCat(d, " (", n, " tensors)"));
    std::printf("dtypes         %s; config torch_dtype %s\n", absl::StrJoin(dtypes, ", ").c_str(),
                m.torch_dtype.empty() ? "-" : m.torch_dtype.c_str());
    std::printf("shards         %d file%s, %s on disk (%llu bytes; tensor data %s)\n", m.num_shards,
                m.num_shards == 1 ? "" : "s",
                HumanBytes(m.size_on_disk).c_str(), static_cast<unsigned long long>(m.size_on_disk),
                HumanBytes(m.tensor_bytes).c_str());
    for (const auto& [what, names] : {std::pair{"missing from the checkpoint", &m.missing_tensors},
                                      std::pair{"not expected by config.json", &m.unexpected_tensors},
                                      std::pair{"with a wrong shape", &m.mismatched_shapes}}) {
      if (names->empty()) continue;
      std::printf("warning        %zu tensors %s, e.g. %s\n", names->size(), what, names->front().c_str());
    }
  }
  if (!m.has_moec_overrides) return;
  std::printf("moec overrides%s\n", m.layer_overrides.empty() && !m.odp ? " (none per layer)" : ":");
  for (const LayerOverride& o : m.layer_overrides) {
    std::vector<std::string> parts;
    if (o.experts) parts.push_back(absl::StrCat("experts ", *o.experts));
    if (o.kept_experts) parts.push_back(absl::StrCat("kept [", absl::StrJoin(*o.kept_experts, ","), "]"));
    if (o.moe_dropped) parts.push_back("MoE dropped");
    if (o.skip_beta) parts.push_back(absl::StrCat("skip_beta ", *o.skip_beta));
    if (o.odp_beta) parts.push_back(absl::StrCat("odp_beta ", *o.odp_beta));
    std::printf("  layer %-4d   %s\n", o.layer, absl::StrJoin(parts, ", ").c_str());
  }
  if (m.odp) std::printf("  odp          tau_low %g, tau_high %g\n", m.odp->tau_low, m.odp->tau_high);
}

int CmdInspect(const Args& args) {
  if (args.positional.size() != 1) return Error(kUsage, absl::InvalidArgumentError("moec inspect MODEL"));
  absl::StatusOr<ModelInspection> m = InspectModel(args.positional[0]);
  if (!m.ok()) return Error(kUsage, m.status());
  if (args.Has("json")) {
    std::printf("%s\n", InspectionJson(*m).dump().c_str());
  } else {
    PrintInspection(*m);
  }
  return kOk;
}

// A progress line on stderr: redrawn in place on a terminal, every 10% otherwise.
class ProgressBar {
 public:
  explicit ProgressBar(std::string what)
      : what_(std::move(what)), tty_(isatty(STDERR_FILENO) != 0), start_(absl::Now()) {}
  void Update(int64_t done, int64_t total) {
    if (total <= 0) return;
    const int64_t tenth = done * 10 / total;
    if (!tty_ && tenth == last_tenth_ && done != total) return;
    last_tenth_ = tenth;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
    const double eta = done > 0 ? elapsed * static_cast<double>(total - done) / done : 0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "%s%s [%s%s] %lld/%lld  %.1f s elapsed, ETA %.1f s%s", tty_ ? "\r" : "",
                 what_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total), elapsed, eta, tty_ && done != total ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  const std::string what_;
  const bool tty_;
  const absl::Time start_;
  int64_t last_tenth_ = -1;
};

int CmdEval(const Args& args) {
  if (args.positional.size() != 1 || args.Get("text").empty()) {
    return Error(kUsage, absl::InvalidArgumentError(
                             "usage: moec eval MODEL --text FILE [--seqlen N] [--max-windows K] "
                             "[--dtype fp32|bf16] [--text-field F] [--json]"));
  }
  EvalOptions o;
  o.model = args.positional[0];
  o.text = args.Get("text");
  o.text_field = args.Get("text-field", o.text_field);
  o.dtype = args.Get("dtype", o.dtype);
  for (auto [flag, out, lo] : {std::tuple<const char*, int64_t*, int64_t>{"seqlen", &o.seqlen, 2},
                               {"max-windows", &o.max_windows, 0}}) {
    const std::string v = args.Get(flag);
    if (!v.empty() && (!absl::SimpleAtoi(v, out) || *out < lo)) {
      return Error(kUsage, absl::InvalidArgumentError(absl::StrCat(
                               "eval: --", flag, " must be an integer >= ", lo, ", got '", v, "'")));
    }
  }
  ProgressBar bar("eval");
  absl::StatusOr<EvalReport> r =
      EvaluatePerplexity(o, [&](int64_t done, int64_t total) { bar.Update(done, total); });
  if (!r.ok()) {
    const bool usage = absl::IsInvalidArgument(r.status()) || absl::IsNotFound(r.status()) ||
                       absl::IsFailedPrecondition(r.status()) || absl::IsUnimplemented(r.status());
    return Error(usage ? kUsage : kJobFailed, r.status());
  }
  if (args.Has("json")) {
    std::printf("%s\n", EvalReportJson(*r).dump().c_str());
  } else {
    std::printf("perplexity %.4f  (mean NLL %.4f over %lld windows of %lld tokens, %s, %.1f s, "
                "%.0f tokens/s)\n",
                r->perplexity, r->mean_nll, static_cast<long long>(r->windows),
                static_cast<long long>(r->seqlen), r->dtype.c_str(), r->seconds,
                r->tokens_per_second);
  }
  return kOk;
}

// Parses --flag as an integer in [lo, hi] into *out when given.
absl::Status IntFlag(const Args& args, const std::string& flag, int64_t lo, int64_t hi, int64_t* out) {
  const std::string v = args.Get(flag);
  if (v.empty()) return absl::OkStatus();
  if (!absl::SimpleAtoi(v, out) || *out < lo || *out > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("make-tiny-model: --", flag, " must be an integer in [", lo, ", ", hi, "], got '", v, "'"));
  }
  return absl::OkStatus();
}

int CmdMakeTinyModel(const Args& args) {
  if (args.positional.size() != 1 || args.Get("arch").empty()) {
    return Error(kUsage, absl::InvalidArgumentError(
                             "usage: moec make-tiny-model DIR --arch ARCH [--layers N] [--experts E] "
                             "[--dtype F32|BF16|F16] [--seed S] [--trained [--steps N] [--corpus FILE]...]"));
  }
  const std::string& dir = args.positional[0];
  int64_t layers = 0, experts = 0, steps = 0;
  for (absl::Status s : {IntFlag(args, "layers", 1, 4096, &layers), IntFlag(args, "experts", 1, 4096, &experts),
                         IntFlag(args, "steps", 1, 1000000, &steps)}) {
    if (!s.ok()) return Error(kUsage, s);
  }
  uint64_t seed = 0;
  if (const std::string v = args.Get("seed"); !v.empty() && !absl::SimpleAtoi(v, &seed)) {
    return Error(kUsage, absl::InvalidArgumentError(absl::StrCat(
                             "make-tiny-model: --seed must be an unsigned 64-bit integer, got '", v, "'")));
  }
  if (args.Has("trained")) {
    tools::TrainOptions o;
    o.arch = args.Get("arch");
    if (layers > 0) o.layers = static_cast<int>(layers);
    if (experts > 0) o.experts = static_cast<int>(experts);
    if (steps > 0) o.steps = static_cast<int>(steps);
    o.top_k = std::min(o.top_k, o.experts);
    o.seed = seed;
    o.corpus_files = args.All("corpus");
    if (absl::Status s = o.Validate(); !s.ok()) return Error(kUsage, s);
    ProgressBar bar("train");
    absl::StatusOr<tools::TrainReport> r = tools::TrainOrReuseTinyModel(
        o, dir, [&](const tools::TrainProgress& p) { bar.Update(p.step, p.steps); });
    if (!r.ok()) {
      return Error(absl::IsFailedPrecondition(r.status()) || absl::IsNotFound(r.status()) ? kUsage : kJobFailed,
                   r.status());
    }
    std::printf("%s a trained tiny %s model in %s: %d steps, %.0f s; held-out perplexity %.2f "
                "(unigram baseline %.2f), router entropy %.2f of uniform\n",
                r->reused ? "reused" : "wrote", o.arch.c_str(), dir.c_str(), r->steps, r->seconds,
                r->heldout_perplexity, r->unigram_perplexity, r->router_entropy);
    return kOk;
  }
  tools::TinyModelOptions o;
  o.model_type = args.Get("arch");
  o.dtype = args.Get("dtype", o.dtype);
  if (layers > 0) o.num_layers = static_cast<int>(layers);
  if (experts > 0) o.experts = static_cast<int>(experts);
  o.top_k = std::min(o.top_k, o.experts);
  o.seed = seed;
  if (absl::Status s = o.Validate(); !s.ok()) return Error(kUsage, s);
  if (absl::Status s = tools::WriteTinyModel(o, dir); !s.ok()) {
    return Error(absl::IsFailedPrecondition(s) ? kUsage : kJobFailed, s);
  }
  std::printf("wrote a tiny %s model (%d layers, %d experts, %s, seed %llu) to %s\n", o.model_type.c_str(),
              o.num_layers, o.experts, o.dtype.c_str(), static_cast<unsigned long long>(o.seed), dir.c_str());
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
  if (cmd == "run") {
    values = {"workers", "data-dir", "set"};
    bools.insert("overwrite");
  }
  if (cmd == "plan") values = {"workers", "set"};
  if (cmd == "submit") {
    values.insert("set");
    bools.insert("watch");
    bools.insert("overwrite");
  }
  if (cmd == "inspect") values = {};
  if (cmd == "eval") values = {"text", "seqlen", "max-windows", "dtype", "text-field"};
  if (cmd == "make-tiny-model") {
    values = {"arch", "layers", "experts", "dtype", "seed", "steps", "corpus"};
    bools.insert("trained");
  }
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
  if (cmd == "run") return CmdRun(*args);
  if (cmd == "submit") return CmdSubmit(*args);
  if (cmd == "plan") return CmdPlan(*args);
  if (cmd == "list" || cmd == "workers") return CmdList(cmd, *args);
  if (cmd == "inspect") return CmdInspect(*args);
  if (cmd == "report") return CmdReport(*args);
  if (cmd == "eval") return CmdEval(*args);
  if (cmd == "make-tiny-model") return CmdMakeTinyModel(*args);
  return CmdJob(cmd, *args);
}

}  // namespace
}  // namespace moec::client

int main(int argc, char** argv) {
  // Only the commands that compute in this process pay for the re-exec (a second start-up).
  if (argc > 1 && (std::string(argv[1]) == "eval" || std::string(argv[1]) == "make-tiny-model")) {
    moec::UsePassiveOpenMpWait(argv);
  }
  moec::TuneMallocForLargeBuffers();
  moec::SkipMutexDeadlockDetection();
  google::InitGoogleLogging(argv[0]);
  return moec::client::Main(argc, argv);
}
