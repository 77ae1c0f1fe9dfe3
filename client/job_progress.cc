#include "client/job_progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "proto/event_kind.h"

namespace moec::client {

using report::CountDone;
using report::EventJson;
using report::FormatEta;
using report::JobProgress;
using report::ProgressLine;
using report::SummarizeProgress;

namespace {

// Columns of the terminal on stderr; 120 when unknown.
int TerminalWidth() {
  struct winsize ws {};
  return ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 120;
}

// Follow's watch of one job: event lines on stdout and, on a terminal, a status line on stderr
// redrawn twice a second from the job's tasks (bar, running tasks with their progress,
// throughput, ETA: client/job_progress.h); event lines are printed above it.
class JobWatch {
 public:
  // `job`: the job with its tasks when the watch begins.
  JobWatch(MoecClient& client, std::string job_id, bool json, const v1::GetJobResponse& job)
      : client_(client), job_id_(std::move(job_id)), json_(json), total_(job.tasks_size()) {
    CountDone(job, &done_at_start_, &compute_at_start_);
    done_ = done_at_start_;
    start_ = absl::Now();
    live_ = !json_ && isatty(STDERR_FILENO) != 0;
  }

  // Prints the job's events until it ends (the status line cleared at the end).
  absl::Status Run() {
    std::thread poller;
    if (live_) poller = std::thread([this] { PollLoop(); });
    absl::Status s = client_.Watch(job_id_, 1, [this](const v1::JobEvent& e) { PrintEvent(e); });
    stop_.store(true);
    if (poller.joinable()) poller.join();
    {
      absl::MutexLock lock(&draw_mu_);
      ClearStatus();
      std::fflush(stderr);
    }
    return s;
  }

 private:
  void PollLoop() {
    while (!stop_.load()) {
      absl::StatusOr<v1::GetJobResponse> now = client_.GetJob(job_id_, true, false);
      if (now.ok() && !DrawStatus(*now)) break;
      // Every 0.5 s; every 2 s for jobs of thousands of tasks (each poll carries them all).
      const int ticks = now.ok() && now->tasks_size() > 2000 ? 20 : 5;
      for (int i = 0; i < ticks && !stop_.load(); ++i) absl::SleepFor(absl::Milliseconds(100));
    }
  }

  // Redraws the status line from the job `now`; false (nothing drawn) once the watch stopped.
  bool DrawStatus(const v1::GetJobResponse& now) {
    JobProgress p = SummarizeProgress(now, done_at_start_, compute_at_start_,
                                      absl::ToDoubleSeconds(absl::Now() - start_));
    const int width = TerminalWidth();
    absl::MutexLock lock(&draw_mu_);
    if (stop_.load()) return false;
    ClearStatus();
    std::fputs(ProgressLine(p, width - 1).c_str(), stderr);
    std::fflush(stderr);
    status_shown_ = true;
    return true;
  }

  void PrintEvent(const v1::JobEvent& e) {
    const v1::EventKind kind = KindOf(e);
    const bool finished_task = kind == v1::EVENT_TASK_DONE || kind == v1::EVENT_TASK_REUSED;
    const std::string kind_name = EventKindName(kind);
    if (finished_task) ++done_;
    absl::MutexLock lock(&draw_mu_);
    if (json_) {
      std::printf("%s\n", EventJson(e).c_str());
    } else {
      const std::string counter = Counter(finished_task, kind_name);
      ClearStatus();
      std::printf("%s  %-14s %-40s %s%s\n",
                  absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(e.time_ms()), absl::LocalTimeZone()).c_str(),
                  kind_name.c_str(), e.task_id().c_str(), e.message().c_str(), counter.c_str());
    }
    std::fflush(stdout);
  }

  // What an event line ends with: done/total on task events, and when a task finished the
  // throughput since the watch began with an ETA from it (the live line weighs stages).
  std::string Counter(bool finished_task, const std::string& kind_name) const {
    if (finished_task) {
      const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
      const int finished = done_ - done_at_start_;
      const double rate = elapsed > 0 ? finished / elapsed : 0;
      return absl::StrFormat("  [%d/%d, %.1f tasks/s, %s]", std::min(done_, total_), total_, rate,
                             FormatEta(rate > 0 ? (total_ - done_) / rate : -1));
    }
    if (kind_name.rfind("task_", 0) == 0) {
      return absl::StrFormat("  [%d/%d]", std::min(done_, total_), total_);
    }
    return "";
  }

  void ClearStatus() ABSL_EXCLUSIVE_LOCKS_REQUIRED(draw_mu_) {
    if (status_shown_) std::fputs("\r\033[K", stderr);
    status_shown_ = false;
  }

  MoecClient& client_;
  const std::string job_id_;
  const bool json_;
  const int total_;
  // Set before the poller starts, read-only after.
  bool live_ = false;
  int done_at_start_ = 0;
  int64_t compute_at_start_ = 0;
  absl::Time start_;
  int done_ = 0;  // by the watch callback only
  absl::Mutex draw_mu_;
  bool status_shown_ ABSL_GUARDED_BY(draw_mu_) = false;
  std::atomic<bool> stop_{false};
};

}  // namespace

// Prints events as they come, with a done/total counter; returns the final job state.
absl::StatusOr<v1::JobState> Follow(MoecClient& client, const std::string& job_id, bool json) {
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, true, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  JobWatch watch(client, job_id, json, *job);
  if (absl::Status s = watch.Run(); !s.ok()) return s;
  job = client.GetJob(job_id, false, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  if (!json) {
    std::printf("job %s: %s%s\n", job_id.c_str(), v1::JobState_Name(job->job().state()).c_str(),
                job->job().error().empty() ? "" : (" — " + job->job().error()).c_str());
  }
  return job->job().state();
}

}  // namespace moec::client
