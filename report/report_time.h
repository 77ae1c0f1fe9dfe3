// Where a job's time went (docs/cli.md "report"): the profiles its tasks recorded
// (TaskRecord.profile: time and counted FLOPs per phase on rank 0, and the GEMM rate of the
// worker that ran them) summed per stage, with each stage's achieved fraction of the GEMM rate.
#ifndef MOEC_REPORT_REPORT_TIME_H_
#define MOEC_REPORT_REPORT_TIME_H_

#include <string>
#include <vector>

#include "moec/v1/coordinator.pb.h"
#include "nlohmann/json.hpp"

namespace moec::report {

// The phases of a profile in report order (those of common/task_profile.h), then "commit".
const std::vector<std::string>& ReportedPhases();

// {"stages": [{"stage", "kind", "tasks", "seconds", "commit_seconds", "gflop", "gflops",
//   "gemm_gflops" (the workers' rate, weighted by run time), "fraction_of_gemm",
//   "phases": {phase: seconds}, "phase_gflop": {phase: GFLOP},
//   "phase_fraction_of_gemm": {phase: fraction}}], "total": {...the same without phases' maps}}
// over the done tasks that ran (not reused) and recorded a profile, stages in plan order. A
// fraction is the time the counted FLOPs take at the worker's GEMM rate over the time taken;
// "seconds" is the run time (TaskRecord.compute_ms's span), commit excluded. Empty "stages"
// when no task recorded a profile.
nlohmann::json TimeBreakdown(const v1::GetJobResponse& job);

// A Markdown section with one row per stage (empty when there is none).
std::string TimeMarkdown(const nlohmann::json& time);

}  // namespace moec::report

#endif  // MOEC_REPORT_REPORT_TIME_H_
