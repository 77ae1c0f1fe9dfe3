// What `moec watch` (and `run`, `submit --watch`) shows while a job runs: the events, and a
// progress bar with throughput and an ETA (report/progress.h) redrawn as they come.
#ifndef MOEC_CLIENT_JOB_PROGRESS_H_
#define MOEC_CLIENT_JOB_PROGRESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "moec/v1/coordinator.pb.h"
#include "report/progress.h"

namespace moec::client {

// Prints the job's events as they come (`json`: one JSON object per line) until it ends, with
// done/total, throughput and ETA on task lines and, on a terminal, a live status line on stderr
// (ProgressLine, redrawn twice a second); survives coordinator restarts (the stream resumes).
// Returns the final job state.
absl::StatusOr<v1::JobState> Follow(MoecClient& client, const std::string& job_id, bool json);

}  // namespace moec::client

#endif  // MOEC_CLIENT_JOB_PROGRESS_H_
