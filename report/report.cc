#include "report/report.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "report/coverage.h"
#include "report/report_time.h"
#include "common/task_id.h"
#include "common/stage_outputs.h"

namespace moec::report {

absl::StatusOr<nlohmann::json> JobReport(JobSource& client, const std::string& job_id,
                                         bool with_coverage) {
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, /*include_tasks=*/true);
  if (!job.ok()) return job.status();
  nlohmann::json report = {{"job_id", job_id},
                           {"name", job->job().name()},
                           {"state", v1::JobState_Name(job->job().state())},
                           {"evaluations", nlohmann::json::array()}};
  std::map<std::string, int> by_state;
  for (const v1::TaskRecord& t : job->tasks()) {
    ++by_state[v1::TaskState_Name(t.state())];
    if (t.kind() != "evaluate" || t.state() != v1::TASK_DONE) continue;
    absl::StatusOr<std::string> bytes =
        client.GetFactorBytes(FactorKey{t.fingerprint(), outputs::kReport}.ToString(), 16 << 20);
    if (!bytes.ok()) return bytes.status();
    nlohmann::json r = nlohmann::json::parse(*bytes, nullptr, /*allow_exceptions=*/false);
    if (!r.is_object()) {
      return absl::DataLossError(absl::StrCat("report of task ", t.task_id(), " is not JSON"));
    }
    r["stage"] = t.stage_id();
    report["evaluations"].push_back(std::move(r));
  }
  report["tasks"] = by_state;
  report["time"] = TimeBreakdown(*job);
  if (with_coverage) report["coverage"] = CalibrationCoverage(client, *job);
  return report;
}

std::string ReportMarkdown(const nlohmann::json& report) {
  std::string out = absl::StrCat("## Job ", report.value("name", ""), " (",
                                 report.value("job_id", ""), "): ",
                                 report.value("state", ""), "\n\n");
  const std::string time =
      (report.contains("coverage") ? CoverageMarkdown(report["coverage"]) : "") +
      (report.contains("time") ? TimeMarkdown(report["time"]) : "");
  if (report["evaluations"].empty()) {
    return out + "No evaluation finished (add an `evaluate` stage to the recipe).\n" + time;
  }
  out += "| stage | model | perplexity | size (MiB) | avg expert bits | avg bits (MC-MoE) | "
         "avg bits (all) | parameters | activated | activated, measured |\n";
  out += "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const nlohmann::json& e : report["evaluations"]) {
    for (const char* which : {"baseline", "model"}) {
      if (!e.contains(which)) continue;
      const nlohmann::json& m = e[which];
      out += absl::StrFormat(
          "| %s | %s%s | %.3f | %.2f | %.2f | %.3f | %.3f | %d | %d | %d |\n", e.value("stage", ""),
          std::string(which) == "baseline" ? "original: " : "", m.value("path", ""),
          m.value("perplexity", 0.0), m.value("size_bytes", 0.0) / 1048576.0,
          m.value("average_expert_bits", 0.0), m.value("average_bits_mcmoe", 0.0),
          m.value("average_bits_all", 0.0), m.value("parameters", int64_t{0}),
          m.value("activated_parameters", int64_t{0}),
          m.value("activated_parameters_measured", m.value("activated_parameters", int64_t{0})));
    }
  }
  return out + time;
}

}  // namespace moec::report
