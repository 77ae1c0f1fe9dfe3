// Calibration coverage of a job (docs/cli.md "report"): how many routed calibration tokens each
// expert's Hessians were accumulated from in its `gptq` stages, and which experts had fewer than
// the stage's `min_tokens` and were quantized by round-to-nearest instead (GPTQ's fallback,
// docs/quantization.md). So no expert is quantized from an empty Hessian without the report
// saying so.
#ifndef MOEC_REPORT_COVERAGE_H_
#define MOEC_REPORT_COVERAGE_H_

#include <string>

#include "nlohmann/json.hpp"
#include "report/source.h"

namespace moec::report {

// {"stages": [{"stage", "min_tokens", "layers", "experts", "fewest_tokens", "fallbacks",
//   "tokens": [[tokens of each expert] per layer]}], "fallbacks": [{"stage", "layer", "expert",
//   "tokens"}]} over the job's done gptq tasks (stages in plan order); empty lists when it has
// none. Summaries that cannot be read are left out.
nlohmann::json CalibrationCoverage(JobSource& source, const v1::GetJobResponse& job);

// A Markdown section ("" when the job has no gptq stage): a line per stage, and a table of the
// experts that fell back (at most 50 rows).
std::string CoverageMarkdown(const nlohmann::json& coverage);

}  // namespace moec::report

#endif  // MOEC_REPORT_COVERAGE_H_
