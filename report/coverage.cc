#include "report/coverage.h"

#include <algorithm>
#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/task_id.h"

namespace moec::report {
namespace {

constexpr uint64_t kMaxSummary = 64 << 20;
constexpr size_t kMaxRows = 50;

struct Expert {
  int64_t tokens = 0;
  bool fallback = false;
};

// The routed experts of one gptq summary (tensor name -> {"tokens", "rtn_fallback", ...}), by
// index: the tokens their linears' Hessians saw (the same rows for all of them) and whether
// any fell back. Shared experts ("shared_experts.") are not routed and are left out.
std::map<int, Expert> Experts(const nlohmann::json& summary) {
  std::map<int, Expert> out;
  for (const auto& [name, info] : summary.items()) {
    const size_t at = name.find(".experts.");
    if (at == std::string::npos || !info.is_object() || !info.contains("tokens")) continue;
    const size_t start = at + 9, end = name.find('.', start);
    int e = 0;
    if (!absl::SimpleAtoi(name.substr(start, end - start), &e) || e < 0) continue;
    Expert& x = out[e];
    x.tokens = std::max(x.tokens, info["tokens"].get<int64_t>());
    x.fallback = x.fallback || info.value("rtn_fallback", false);
  }
  return out;
}

int64_t MinTokens(const v1::TaskRecord& t) {
  const nlohmann::json p = nlohmann::json::parse(t.params_json(), nullptr, false);
  return p.is_object() ? p.value("min_tokens", int64_t{1}) : 1;
}

}  // namespace

nlohmann::json CalibrationCoverage(JobSource& source, const v1::GetJobResponse& job) {
  nlohmann::json stages = nlohmann::json::array(), fallbacks = nlohmann::json::array();
  std::map<std::string, size_t> index;  // stage -> position in `stages`
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.kind() != "gptq" || t.state() != v1::TASK_DONE || t.layer() < 0) continue;
    absl::StatusOr<std::string> bytes = source.GetFactorBytes(
        FactorKey{t.fingerprint(), outputs::kSummary}.ToString(), kMaxSummary);
    if (!bytes.ok()) continue;
    const nlohmann::json summary = nlohmann::json::parse(*bytes, nullptr, false);
    if (!summary.is_object()) continue;
    auto [it, added] = index.emplace(t.stage_id(), stages.size());
    if (added) {
      stages.push_back({{"stage", t.stage_id()}, {"min_tokens", MinTokens(t)}, {"experts", 0},
                        {"fallbacks", 0}, {"fewest_tokens", -1},
                        {"tokens", nlohmann::json::array()}});
    }
    nlohmann::json& s = stages[it->second];
    nlohmann::json row = nlohmann::json::array();
    for (const auto& [e, x] : Experts(summary)) {
      while (static_cast<int>(row.size()) < e) row.push_back(nullptr);
      row.push_back(x.tokens);
      s["experts"] = s["experts"].get<int64_t>() + 1;
      const int64_t fewest = s["fewest_tokens"].get<int64_t>();
      s["fewest_tokens"] = fewest < 0 ? x.tokens : std::min(fewest, x.tokens);
      if (!x.fallback) continue;
      s["fallbacks"] = s["fallbacks"].get<int64_t>() + 1;
      fallbacks.push_back({{"stage", t.stage_id()}, {"layer", t.layer()}, {"expert", e},
                           {"tokens", x.tokens}});
    }
    nlohmann::json& grid = s["tokens"];
    while (static_cast<int>(grid.size()) <= t.layer()) grid.push_back(nlohmann::json::array());
    grid[t.layer()] = std::move(row);
  }
  return {{"stages", stages}, {"fallbacks", fallbacks}};
}

std::string CoverageMarkdown(const nlohmann::json& coverage) {
  if (!coverage.contains("stages") || coverage["stages"].empty()) return "";
  std::string out = "\n## Calibration coverage\n\n";
  for (const nlohmann::json& s : coverage["stages"]) {
    const int64_t n = s.value("fallbacks", int64_t{0});
    absl::StrAppend(&out, "- `", s.value("stage", ""), "` (gptq, min_tokens ",
                    s.value("min_tokens", int64_t{1}), "): ", s.value("experts", int64_t{0}),
                    " routed experts, the fewest saw ", s.value("fewest_tokens", int64_t{0}),
                    " calibration tokens; ",
                    n == 0 ? std::string("none was quantized without its Hessian.\n")
                           : absl::StrCat(n, " had fewer than min_tokens and were quantized by "
                                             "round-to-nearest instead (below).\n"));
  }
  const nlohmann::json& f = coverage["fallbacks"];
  if (f.empty()) return out;
  out += "\n| stage | layer | expert | tokens |\n|---|---|---|---|\n";
  for (size_t i = 0; i < f.size() && i < kMaxRows; ++i) {
    absl::StrAppend(&out, "| ", f[i].value("stage", ""), " | ", f[i].value("layer", 0), " | ",
                    f[i].value("expert", 0), " | ", f[i].value("tokens", int64_t{0}), " |\n");
  }
  if (f.size() > kMaxRows) absl::StrAppend(&out, "\n… and ", f.size() - kMaxRows, " more (report.json)\n");
  return out;
}

}  // namespace moec::report
