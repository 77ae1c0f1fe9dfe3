// Report files of a job (docs/cli.md `moec report JOB --out DIR`): report.json, report.md and SVG
// figures — expert usage per layer and expert (calibrate), bit allocation (allocate_bits), GPTQ
// error per layer and expert (gptq / rtn summaries), kept experts (expert_prune, expert_drop),
// similarities (layer_drop, block_drop), and perplexity against size for every finished job of
// the coordinator with an evaluation (this job highlighted). Figures whose stages the job lacks
// are left out.
#ifndef MOEC_REPORT_REPORT_FILES_H_
#define MOEC_REPORT_REPORT_FILES_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "report/source.h"
#include "nlohmann/json.hpp"

namespace moec::report {

// File name -> content: report.json, report.md and the figures (*.svg).
absl::StatusOr<std::map<std::string, std::string>> BuildReportFiles(JobSource& client,
                                                                    const std::string& job_id);

// `files` (BuildReportFiles) written into `dir` (created; existing files of the same names
// replaced). Errors: InvalidArgument for a name that is not a plain file name.
absl::Status WriteReportFiles(const std::map<std::string, std::string>& files,
                              const std::string& dir);

}  // namespace moec::report

#endif  // MOEC_REPORT_REPORT_FILES_H_
