#include "client/report_files.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/report.h"
#include "client/svg.h"
#include "storage/file_util.h"

namespace moec::client {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr uint64_t kMaxFactor = 64 << 20;

template <typename T>
absl::StatusOr<std::vector<double>> Values(MoecClient& client, const std::string& key) {
  absl::StatusOr<std::string> bytes = client.GetFactorBytes(key, kMaxFactor);
  if (!bytes.ok()) return bytes.status();
  std::vector<double> out(bytes->size() / sizeof(T));
  for (size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, bytes->data() + i * sizeof(T), sizeof(T));
    out[i] = static_cast<double>(v);
  }
  return out;
}

// Experts' mean relative weight error per layer from a gptq/rtn summary (JSON object keyed by
// tensor name with {"error": ...}); index = expert.
std::vector<double> ExpertErrors(const nlohmann::json& summary) {
  std::map<int, std::pair<double, int>> sums;
  for (const auto& [name, info] : summary.items()) {
    const size_t at = name.find(".experts.");
    if (at == std::string::npos || !info.contains("error")) continue;
    const size_t start = at + 9, end = name.find('.', start);
    int e = 0;
    if (!absl::SimpleAtoi(name.substr(start, end - start), &e)) continue;
    sums[e].first += info["error"].get<double>();
    ++sums[e].second;
  }
  std::vector<double> out;
  for (const auto& [e, s] : sums) {
    out.resize(e + 1, kNaN);
    out[e] = s.first / s.second;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> BuildReportFiles(MoecClient& client,
                                                                    const std::string& job_id) {
  absl::StatusOr<nlohmann::json> report = JobReport(client, job_id);
  if (!report.ok()) return report.status();
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, /*include_tasks=*/true);
  if (!job.ok()) return job.status();
  std::map<std::string, std::string> files;
  // Per-layer matrices, by task layer.
  std::map<int, std::vector<double>> usage, error, kept;
  std::vector<std::vector<double>> bits, kept_mask;
  std::vector<double> similarity;
  std::string similarity_stage;
  // Global [layers, experts] tables are as wide as their size over the job's layer count.
  int layers = 0;
  for (const v1::TaskRecord& t : job->tasks()) layers = std::max(layers, t.layer() + 1);
  for (const v1::TaskRecord& t : job->tasks()) {
    if (t.state() != v1::TASK_DONE) continue;
    const std::string key = t.fingerprint() + "/";
    if (t.kind() == "calibrate") {
      auto counts = Values<int64_t>(client, key + "expert_tokens");
      if (!counts.ok()) continue;  // dense layer
      double total = 0;
      for (double c : *counts) total += c;
      for (double& c : *counts) c = total > 0 ? c / total : 0;
      usage[t.layer()] = *counts;
    } else if (t.kind() == "allocate_bits") {
      auto table = Values<int64_t>(client, key + "expert_bits");
      if (!table.ok()) continue;
      const size_t width = layers > 0 ? table->size() / layers : 0;
      for (size_t r = 0; width > 0 && r < static_cast<size_t>(layers); ++r) {
        std::vector<double> row(table->begin() + r * width, table->begin() + (r + 1) * width);
        for (double& b : row) b = b < 0 ? kNaN : b;
        bits.push_back(row);
      }
    } else if (t.kind() == "gptq" || t.kind() == "rtn") {
      auto summary = client.GetFactorBytes(key + "summary", kMaxFactor);
      if (!summary.ok()) continue;
      nlohmann::json s = nlohmann::json::parse(*summary, nullptr, false);
      if (s.is_object()) error[t.layer()] = ExpertErrors(s);
    } else if (t.kind() == "expert_prune") {
      auto ids = Values<int64_t>(client, key + "kept_experts");
      if (ids.ok()) kept[t.layer()] = *ids;
    } else if (t.kind() == "expert_drop") {
      auto mask = Values<uint8_t>(client, key + "kept_mask");
      auto scores = Values<double>(client, key + "scores");
      if (mask.ok() && scores.ok() && !scores->empty()) {
        const size_t width = layers > 0 ? mask->size() / layers : 0;
        for (size_t r = 0; width > 0 && r < static_cast<size_t>(layers); ++r) {
          kept_mask.emplace_back(mask->begin() + r * width, mask->begin() + (r + 1) * width);
        }
      }
    } else if (t.kind() == "layer_drop" || t.kind() == "block_drop") {
      auto s = Values<double>(client, key + "similarity");
      if (s.ok()) {
        similarity = *s;
        similarity_stage = t.kind();
      }
    }
  }
  auto rows = [](const std::map<int, std::vector<double>>& m) {
    std::vector<std::vector<double>> out;
    for (const auto& [layer, v] : m) {
      out.resize(layer + 1);
      out[layer] = v;
    }
    return out;
  };
  std::vector<std::pair<std::string, std::string>> figures;  // file, caption
  if (!usage.empty()) {
    files["expert_usage.svg"] = SvgHeatMap("Expert usage (share of routed tokens)", "layer",
                                           "expert", rows(usage), "share");
    figures.push_back({"expert_usage.svg", "Expert usage per layer (calibrate)"});
  }
  if (!bits.empty()) {
    files["bit_allocation.svg"] = SvgHeatMap("Bit allocation", "layer", "expert", bits, "bits");
    figures.push_back({"bit_allocation.svg", "Expert widths chosen by allocate_bits"});
  }
  if (!error.empty()) {
    files["gptq_error.svg"] = SvgHeatMap("Relative weight error per expert", "layer", "expert",
                                         rows(error), "||W-Q||/||W||");
    figures.push_back({"gptq_error.svg", "Quantization error per layer and expert"});
  }
  if (!kept.empty()) {
    std::vector<std::vector<double>> grid;
    for (const auto& [layer, ids] : kept) {
      grid.resize(layer + 1);
      int width = 0;
      for (double e : ids) width = std::max(width, static_cast<int>(e) + 1);
      if (!usage.empty()) width = std::max<int>(width, usage.rbegin()->second.size());
      grid[layer].assign(width, 0.0);
      for (double e : ids) grid[layer][static_cast<int>(e)] = 1.0;
    }
    files["kept_experts.svg"] = SvgHeatMap("Kept experts (expert_prune)", "layer", "expert", grid, "kept");
    figures.push_back({"kept_experts.svg", "Experts kept per layer"});
  } else if (!kept_mask.empty()) {
    files["kept_experts.svg"] = SvgHeatMap("Kept experts (expert_drop)", "layer", "expert", kept_mask, "kept");
    figures.push_back({"kept_experts.svg", "Experts kept per layer"});
  }
  if (!similarity.empty()) {
    std::vector<std::string> labels;
    for (size_t i = 0; i < similarity.size(); ++i) labels.push_back(absl::StrCat(i));
    files["similarity.svg"] = SvgBarChart(absl::StrCat("Similarity per layer (", similarity_stage, ")"),
                                          labels, similarity, "mean cosine");
    figures.push_back({"similarity.svg", "Similarity scores; the highest are dropped"});
  }
  // Perplexity against size over every finished job with an evaluation.
  absl::StatusOr<std::vector<v1::JobRecord>> jobs = client.ListJobs();
  std::vector<ScatterPoint> points;
  bool baseline = false;
  if (jobs.ok()) {
    for (const v1::JobRecord& j : *jobs) {
      if (j.state() != v1::JOB_SUCCEEDED) continue;
      absl::StatusOr<nlohmann::json> r = j.job_id() == job_id ? report : JobReport(client, j.job_id());
      if (!r.ok()) continue;
      for (const nlohmann::json& e : (*r)["evaluations"]) {
        if (e.contains("baseline") && !baseline) {
          baseline = true;
          points.push_back({"original", e["baseline"].value("size_bytes", 0.0) / 1048576.0,
                            e["baseline"].value("perplexity", 0.0), false});
        }
        if (e.contains("model")) {
          points.push_back({j.name(), e["model"].value("size_bytes", 0.0) / 1048576.0,
                            e["model"].value("perplexity", 0.0), j.job_id() == job_id});
        }
      }
    }
  }
  if (!points.empty()) {
    files["ppl_vs_size.svg"] = SvgScatter("Perplexity against size", "size on disk (MiB)",
                                          "perplexity", points);
    figures.push_back({"ppl_vs_size.svg", "Every evaluated job of this coordinator (this one in red)"});
  }
  std::string md = ReportMarkdown(*report);
  if (!figures.empty()) md += "\n## Figures\n\n";
  for (const auto& [file, caption] : figures) md += absl::StrCat("![", caption, "](", file, ")\n\n");
  files["report.md"] = md;
  files["report.json"] = report->dump(2) + "\n";
  return files;
}

absl::Status WriteReportFiles(MoecClient& client, const std::string& job_id,
                              const std::string& dir) {
  absl::StatusOr<std::map<std::string, std::string>> files = BuildReportFiles(client, job_id);
  if (!files.ok()) return files.status();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir, ": ", ec.message()));
  for (const auto& [name, content] : *files) {
    absl::Status s = storage::WriteFileAtomically(dir + "/" + name, content);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace moec::client
