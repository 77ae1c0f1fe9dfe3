// The report of a job: what its `evaluate` tasks measured (perplexity, size, average expert
// bits, parameters of the result and of the original model), read from the factor store through
// the coordinator, and where its time went (per stage and phase, against the GEMM rate). `moec report JOB` prints it; `moec run` prints it when the job succeeds.
#ifndef MOEC_REPORT_REPORT_H_
#define MOEC_REPORT_REPORT_H_

#include <string>

#include "absl/status/statusor.h"
#include "report/source.h"
#include "nlohmann/json.hpp"

namespace moec::report {

// {"job_id", "name", "state", "tasks": {state: count}, "evaluations": [{"stage", "model",
// "baseline"?}], "time": TimeBreakdown (report/report_time.h), "coverage":
// CalibrationCoverage (report/coverage.h)}. Evaluate tasks that have not finished are left out.
// Without `with_coverage` the "coverage" member is left out (it reads every gptq summary).
absl::StatusOr<nlohmann::json> JobReport(JobSource& client, const std::string& job_id,
                                         bool with_coverage = true);

// Markdown: a summary line, a table with one row per evaluated model, the calibration coverage
// of gptq stages, and where the time went (a table with one row per stage).
std::string ReportMarkdown(const nlohmann::json& report);

}  // namespace moec::report

#endif  // MOEC_REPORT_REPORT_H_
