#include "report/report_files.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "report/report.h"
#include "report/report_time.h"
#include "report/svg.h"
#include "storage/file_util.h"

namespace moec::report {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr uint64_t kMaxFactor = 64 << 20;

template <typename T>
absl::StatusOr<std::vector<double>> Values(JobSource& client, const std::string& key) {
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

// What the job's finished tasks stored that the figures show.
struct FigureData {
  // Per-layer matrices, by task layer.
  std::map<int, std::vector<double>> usage, error, kept;
  std::vector<std::vector<double>> bits, kept_mask;
  std::vector<double> similarity;
  std::string similarity_stage;
};

// The rows of a global [layers, experts] table: as wide as its size over `layers`.
std::vector<std::vector<double>> TableRows(const std::vector<double>& table, int layers) {
  std::vector<std::vector<double>> rows;
  const size_t width = layers > 0 ? table.size() / layers : 0;
  for (size_t r = 0; width > 0 && r < static_cast<size_t>(layers); ++r) {
    rows.emplace_back(table.begin() + r * width, table.begin() + (r + 1) * width);
  }
  return rows;
}

// calibrate: the layer's share of routed tokens per expert (nothing for a dense layer).
void CollectUsage(JobSource& client, const v1::TaskRecord& t, const std::string& key,
                  FigureData* data) {
  auto counts = Values<int64_t>(client, key + "expert_tokens");
  if (!counts.ok()) return;  // dense layer
  double total = 0;
  for (double c : *counts) total += c;
  for (double& c : *counts) c = total > 0 ? c / total : 0;
  data->usage[t.layer()] = *counts;
}

// allocate_bits: the width chosen per layer and expert (none: NaN).
void CollectBits(JobSource& client, const std::string& key, int layers, FigureData* data) {
  auto table = Values<int64_t>(client, key + "expert_bits");
  if (!table.ok()) return;
  for (std::vector<double>& row : TableRows(*table, layers)) {
    for (double& b : row) b = b < 0 ? kNaN : b;
    data->bits.push_back(row);
  }
}

// gptq, rtn: the experts' weight errors of the layer.
void CollectErrors(JobSource& client, const v1::TaskRecord& t, const std::string& key,
                   FigureData* data) {
  auto summary = client.GetFactorBytes(key + "summary", kMaxFactor);
  if (!summary.ok()) return;
  nlohmann::json s = nlohmann::json::parse(*summary, nullptr, false);
  if (s.is_object()) data->error[t.layer()] = ExpertErrors(s);
}

// expert_drop: the kept mask per layer and expert, when it stored its scores too.
void CollectKeptMask(JobSource& client, const std::string& key, int layers, FigureData* data) {
  auto mask = Values<uint8_t>(client, key + "kept_mask");
  auto scores = Values<double>(client, key + "scores");
  if (mask.ok() && scores.ok() && !scores->empty()) {
    for (std::vector<double>& row : TableRows(*mask, layers)) {
      data->kept_mask.push_back(std::move(row));
    }
  }
}

// layer_drop, block_drop: the similarity score per layer.
void CollectSimilarity(JobSource& client, const v1::TaskRecord& t, const std::string& key,
                       FigureData* data) {
  auto s = Values<double>(client, key + "similarity");
  if (s.ok()) {
    data->similarity = *s;
    data->similarity_stage = t.kind();
  }
}

// Reads what the DONE task `t` stored for the figures, by its kind; `layers`: the job's.
void CollectTask(JobSource& client, const v1::TaskRecord& t, int layers, FigureData* data) {
  const std::string key = t.fingerprint() + "/";
  if (t.kind() == "calibrate") {
    CollectUsage(client, t, key, data);
  } else if (t.kind() == "allocate_bits") {
    CollectBits(client, key, layers, data);
  } else if (t.kind() == "gptq" || t.kind() == "rtn") {
    CollectErrors(client, t, key, data);
  } else if (t.kind() == "expert_prune") {
    auto ids = Values<int64_t>(client, key + "kept_experts");
    if (ids.ok()) data->kept[t.layer()] = *ids;
  } else if (t.kind() == "expert_drop") {
    CollectKeptMask(client, key, layers, data);
  } else if (t.kind() == "layer_drop" || t.kind() == "block_drop") {
    CollectSimilarity(client, t, key, data);
  }
}

// Per-layer rows by layer; layers without one are empty.
std::vector<std::vector<double>> ByLayer(const std::map<int, std::vector<double>>& m) {
  std::vector<std::vector<double>> out;
  for (const auto& [layer, v] : m) {
    out.resize(layer + 1);
    out[layer] = v;
  }
  return out;
}

// expert_prune's kept experts as a 0/1 grid, as wide as the widest id (and the usage rows).
std::vector<std::vector<double>> KeptGrid(const FigureData& data) {
  std::vector<std::vector<double>> grid;
  for (const auto& [layer, ids] : data.kept) {
    grid.resize(layer + 1);
    int width = 0;
    for (double e : ids) width = std::max(width, static_cast<int>(e) + 1);
    if (!data.usage.empty()) width = std::max<int>(width, data.usage.rbegin()->second.size());
    grid[layer].assign(width, 0.0);
    for (double e : ids) grid[layer][static_cast<int>(e)] = 1.0;
  }
  return grid;
}

// The figures of `data` into `files`; returns their (file, caption) in report order.
std::vector<std::pair<std::string, std::string>> AddFigures(
    const FigureData& data, std::map<std::string, std::string>* files) {
  std::vector<std::pair<std::string, std::string>> figures;  // file, caption
  if (!data.usage.empty()) {
    (*files)["expert_usage.svg"] = SvgHeatMap("Expert usage (share of routed tokens)", "layer",
                                              "expert", ByLayer(data.usage), "share");
    figures.push_back({"expert_usage.svg", "Expert usage per layer (calibrate)"});
  }
  if (!data.bits.empty()) {
    (*files)["bit_allocation.svg"] =
        SvgHeatMap("Bit allocation", "layer", "expert", data.bits, "bits");
    figures.push_back({"bit_allocation.svg", "Expert widths chosen by allocate_bits"});
  }
  if (!data.error.empty()) {
    (*files)["gptq_error.svg"] = SvgHeatMap("Relative weight error per expert", "layer", "expert",
                                            ByLayer(data.error), "||W-Q||/||W||");
    figures.push_back({"gptq_error.svg", "Quantization error per layer and expert"});
  }
  if (!data.kept.empty()) {
    (*files)["kept_experts.svg"] =
        SvgHeatMap("Kept experts (expert_prune)", "layer", "expert", KeptGrid(data), "kept");
    figures.push_back({"kept_experts.svg", "Experts kept per layer"});
  } else if (!data.kept_mask.empty()) {
    (*files)["kept_experts.svg"] =
        SvgHeatMap("Kept experts (expert_drop)", "layer", "expert", data.kept_mask, "kept");
    figures.push_back({"kept_experts.svg", "Experts kept per layer"});
  }
  if (!data.similarity.empty()) {
    std::vector<std::string> labels;
    for (size_t i = 0; i < data.similarity.size(); ++i) labels.push_back(absl::StrCat(i));
    (*files)["similarity.svg"] =
        SvgBarChart(absl::StrCat("Similarity per layer (", data.similarity_stage, ")"), labels,
                    data.similarity, "mean cosine");
    figures.push_back({"similarity.svg", "Similarity scores; the highest are dropped"});
  }
  return figures;
}

// Perplexity against size over every finished job with an evaluation: the original model once,
// and each job (`job_id`, whose report is `report`, highlighted).
std::vector<ScatterPoint> PerplexityPoints(JobSource& client, const std::string& job_id,
                                           const absl::StatusOr<nlohmann::json>& report) {
  absl::StatusOr<std::vector<v1::JobRecord>> jobs = client.ListJobs();
  std::vector<ScatterPoint> points;
  bool baseline = false;
  if (!jobs.ok()) return points;
  for (const v1::JobRecord& j : *jobs) {
    if (j.state() != v1::JOB_SUCCEEDED) continue;
    absl::StatusOr<nlohmann::json> r = j.job_id() == job_id ? report : JobReport(client, j.job_id(), /*with_coverage=*/false);
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
  return points;
}

// Seconds per stage and phase (TimeBreakdown), when tasks recorded profiles.
// Routed calibration tokens per layer and expert of the first gptq stage.
void AddCoverageFigure(const nlohmann::json& coverage, std::map<std::string, std::string>* files,
                       std::vector<std::pair<std::string, std::string>>* figures) {
  if (!coverage.contains("stages") || coverage["stages"].empty()) return;
  const nlohmann::json& s = coverage["stages"][0];
  std::vector<std::vector<double>> grid;
  for (const nlohmann::json& row : s["tokens"]) {
    grid.emplace_back();
    for (const nlohmann::json& v : row) grid.back().push_back(v.is_number() ? v.get<double>() : kNaN);
  }
  (*files)["expert_tokens.svg"] = SvgHeatMap(
      absl::StrCat("Calibration tokens per expert (", s.value("stage", ""), ")"), "layer",
      "expert", grid, "tokens");
  figures->push_back({"expert_tokens.svg",
                      "Routed calibration tokens per expert; experts under min_tokens fell back "
                      "to round-to-nearest (Calibration coverage)"});
}

void AddTimeFigure(const nlohmann::json& time, std::map<std::string, std::string>* files,
                   std::vector<std::pair<std::string, std::string>>* figures) {
  if (!time.contains("stages") || time["stages"].empty()) return;
  std::vector<std::string> labels;
  std::vector<std::vector<double>> seconds;
  for (const nlohmann::json& s : time["stages"]) {
    labels.push_back(s.value("stage", ""));
    seconds.emplace_back();
    for (const std::string& p : ReportedPhases()) seconds.back().push_back(s["phases"].value(p, 0.0));
  }
  (*files)["time.svg"] = SvgStackedBars("Where the time went (rank 0)", labels, ReportedPhases(),
                                        seconds, "seconds");
  figures->push_back({"time.svg", "Run time per stage and phase"});
}

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> BuildReportFiles(JobSource& client,
                                                                    const std::string& job_id) {
  absl::StatusOr<nlohmann::json> report = JobReport(client, job_id);
  if (!report.ok()) return report.status();
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, /*include_tasks=*/true);
  if (!job.ok()) return job.status();
  std::map<std::string, std::string> files;
  FigureData data;
  // Global [layers, experts] tables are as wide as their size over the job's layer count.
  int layers = 0;
  for (const v1::TaskRecord& t : job->tasks()) layers = std::max(layers, t.layer() + 1);
  for (const v1::TaskRecord& t : job->tasks()) {
    if (t.state() == v1::TASK_DONE) CollectTask(client, t, layers, &data);
  }
  std::vector<std::pair<std::string, std::string>> figures = AddFigures(data, &files);
  // Perplexity against size over every finished job with an evaluation.
  std::vector<ScatterPoint> points = PerplexityPoints(client, job_id, report);
  if (!points.empty()) {
    files["ppl_vs_size.svg"] = SvgScatter("Perplexity against size", "size on disk (MiB)",
                                          "perplexity", points);
    figures.push_back({"ppl_vs_size.svg", "Every evaluated job of this coordinator (this one in red)"});
  }
  if (report->contains("coverage")) AddCoverageFigure((*report)["coverage"], &files, &figures);
  AddTimeFigure((*report)["time"], &files, &figures);
  std::string md = ReportMarkdown(*report);
  if (!figures.empty()) md += "\n## Figures\n\n";
  for (const auto& [file, caption] : figures) md += absl::StrCat("![", caption, "](", file, ")\n\n");
  files["report.md"] = md;
  files["report.json"] = report->dump(2) + "\n";
  return files;
}

absl::Status WriteReportFiles(const std::map<std::string, std::string>& files,
                              const std::string& dir) {
  for (const auto& [name, content] : files) {
    // The names come from the coordinator: never a path out of `dir`.
    if (name.empty() || name[0] == '.' || name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("report file name \"", name, "\" is not a plain file name"));
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("create ", dir, ": ", ec.message()));
  for (const auto& [name, content] : files) {
    absl::Status s = storage::WriteFileAtomically(dir + "/" + name, content);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace moec::report
