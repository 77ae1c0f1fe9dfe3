#include "client/eval.h"

#include <chrono>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"
#include "model/tokenizer/tokenizer.h"

namespace moec::client {

absl::StatusOr<EvalReport> EvaluatePerplexity(const EvalOptions& options,
                                              const EvalProgressFn& progress) {
  MOEC_ASSIGN_OR_RETURN(model::ComputeDtype dtype, model::ParseComputeDtype(options.dtype));
  if (options.seqlen < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seqlen must be at least 2, got ", options.seqlen));
  }
  model::RunnerOptions ro;
  ro.dtype = dtype;
  ro.activation_budget_bytes = options.activation_budget_bytes;
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner,
                        model::ModelRunner::Open(options.model, ro));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                        model::Tokenizer::Load(options.model));
  model::TextFileOptions to;
  to.text_field = options.text_field;
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, model::LoadTexts(options.text, to));
  model::EvalWindowOptions wo;
  wo.seqlen = options.seqlen;
  wo.max_windows = options.max_windows;
  MOEC_ASSIGN_OR_RETURN(model::TokenWindows windows,
                        model::EvaluationWindows(texts, *tokenizer, wo));
  const auto start = std::chrono::steady_clock::now();
  profile::TaskProfile profile;  // where the evaluation's time goes, as a task's (docs/cli.md)
  absl::StatusOr<model::PerplexityResult> evaluated = [&] {
    profile::BindToThread bind(&profile);
    return runner->Perplexity(windows, progress);
  }();
  MOEC_ASSIGN_OR_RETURN(model::PerplexityResult r, std::move(evaluated));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EvalReport report;
  report.model = options.model;
  report.text = options.text;
  report.dtype = std::string(model::ComputeDtypeName(dtype));
  report.seqlen = r.seqlen;
  report.windows = r.windows;
  report.text_tokens = static_cast<int64_t>(windows.tokens.size());
  report.predicted_tokens = r.predicted_tokens;
  report.mean_nll = r.mean_nll;
  report.perplexity = r.perplexity;
  report.seconds = seconds;
  report.tokens_per_second = seconds > 0 ? static_cast<double>(windows.tokens.size()) / seconds : 0;
  const auto totals = profile.Snapshot();
  for (int i = 0; i < static_cast<int>(profile::Phase::kCount); ++i) {
    if (totals[i].seconds == 0 && totals[i].flops == 0) continue;
    report.phases.push_back({profile::PhaseName(static_cast<profile::Phase>(i)), totals[i].seconds,
                             totals[i].flops});
  }
  return report;
}

nlohmann::json EvalReportJson(const EvalReport& r) {
  nlohmann::json j{{"model", r.model},
                        {"text", r.text},
                        {"dtype", r.dtype},
                        {"seqlen", r.seqlen},
                        {"windows", r.windows},
                        {"tokens", r.text_tokens},
                        {"predicted_tokens", r.predicted_tokens},
                        {"mean_nll", r.mean_nll},
                        {"perplexity", r.perplexity},
                        {"seconds", r.seconds},
                        {"tokens_per_second", r.tokens_per_second}};
  nlohmann::json phases = nlohmann::json::object();
  double flops = 0;
  for (const EvalReport::Phase& p : r.phases) {
    phases[p.name] = {{"seconds", p.seconds}, {"gflop", p.flops / 1e9}};
    flops += p.flops;
  }
  j["phases"] = std::move(phases);
  j["gflop"] = flops / 1e9;
  return j;
}

}  // namespace moec::client
