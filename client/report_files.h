// Report files of a job (docs/cli.md `moec report JOB --out DIR`): report.json, report.md and SVG
// figures — expert usage per layer and expert (calibrate), bit allocation (allocate_bits), GPTQ
// error per layer and expert (gptq / rtn summaries), kept experts (expert_prune, expert_drop),
// similarities (layer_drop, block_drop), and perplexity against size for every finished job of
// the coordinator with an evaluation (this job highlighted). Figures whose stages the job lacks
// are left out.
#ifndef MOEC_CLIENT_REPORT_FILES_H_
#define MOEC_CLIENT_REPORT_FILES_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

namespace moec::client {

// File name -> content: report.json, report.md and the figures (*.svg).
absl::StatusOr<std::map<std::string, std::string>> BuildReportFiles(MoecClient& client,
                                                                    const std::string& job_id);

// BuildReportFiles written into `dir` (created; existing files of the same names replaced).
absl::Status WriteReportFiles(MoecClient& client, const std::string& job_id,
                              const std::string& dir);

}  // namespace moec::client

#endif  // MOEC_CLIENT_REPORT_FILES_H_
