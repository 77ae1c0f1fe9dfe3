// How far a job is: done/total, throughput and an ETA, the running tasks (stage, layer, the
// fraction and message their workers report), and events as JSON. Pure functions of the job's
// task records, so they are tested without a coordinator. `moec watch` draws them
// (client/job_progress.h); the coordinator's dashboard serves them (coordinator/dashboard.h).
#ifndef MOEC_REPORT_PROGRESS_H_
#define MOEC_REPORT_PROGRESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "moec/v1/coordinator.pb.h"

namespace moec::report {

struct JobProgress {
  int total = 0;
  int done = 0;     // done or reused
  int failed = 0;
  std::vector<std::string> running;  // "quant L2 45% (layer 2: ...)", in plan order
  double tasks_per_second = 0;       // tasks finished since the watch began, per second
  // Seconds until every task is done: the remaining tasks' expected compute (the mean compute
  // time of finished tasks of the same stage, else of any stage; running ones scaled by the
  // fraction left) over the parallelism observed since the watch began (compute finished per
  // wall second). Negative when unknown (nothing finished yet).
  double eta_seconds = -1;
};

// `job` now; `done_at_start` tasks were done when the watch began `elapsed_seconds` ago, and
// `compute_ms_at_start` was the compute time of those tasks.
JobProgress SummarizeProgress(const v1::GetJobResponse& job, int done_at_start,
                              int64_t compute_ms_at_start, double elapsed_seconds);

// "[#########.........] 7/12 tasks  1.3 tasks/s  ETA 4 s  | quant L2 45%" cut to `width`.
std::string ProgressLine(const JobProgress& p, int width);

// Done tasks and their summed compute_ms (for SummarizeProgress's baseline).
void CountDone(const v1::GetJobResponse& job, int* done, int64_t* compute_ms);

// One protobuf message as JSON with the proto's field names (what --json prints).
std::string MessageJson(const google::protobuf::Message& m);
// An event as JSON, its kind by name ("task_done").
std::string EventJson(const v1::JobEvent& e);

// "ETA 1 h 02 min" / "ETA 4 s" / "ETA ?".
std::string FormatEta(double seconds);

}  // namespace moec::report

#endif  // MOEC_REPORT_PROGRESS_H_
