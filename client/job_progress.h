// What `moec watch` (and `run`, `submit --watch`) shows while a job runs: a progress bar over
// its tasks, the running tasks (stage, layer, the fraction and message their workers report),
// throughput and an ETA. Pure functions of the job's task records, so they are tested without a
// coordinator; Follow (below) draws them for the CLI (client/commands_cluster.cc).
#ifndef MOEC_CLIENT_JOB_PROGRESS_H_
#define MOEC_CLIENT_JOB_PROGRESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "moec/v1/coordinator.pb.h"

namespace moec::client {

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

// Prints the job's events as they come (`json`: one JSON object per line) until it ends, with
// done/total, throughput and ETA on task lines and, on a terminal, a live status line on stderr
// (ProgressLine, redrawn twice a second); survives coordinator restarts (the stream resumes).
// Returns the final job state.
absl::StatusOr<v1::JobState> Follow(MoecClient& client, const std::string& job_id, bool json);

// One protobuf message as JSON with the proto's field names (what --json prints).
std::string MessageJson(const google::protobuf::Message& m);
// An event as JSON, its kind by name ("task_done").
std::string EventJson(const v1::JobEvent& e);

// "ETA 1 h 02 min" / "ETA 4 s" / "ETA ?".
std::string FormatEta(double seconds);

}  // namespace moec::client

#endif  // MOEC_CLIENT_JOB_PROGRESS_H_
