#include "client/job_progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "proto/event_kind.h"

namespace moec::client {

void CountDone(const v1::GetJobResponse& job, int* done, int64_t* compute_ms) {
  *done = 0;
  *compute_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() != v1::TASK_DONE) continue;
    ++*done;
    *compute_ms += t.compute_ms();
  }
}

JobProgress SummarizeProgress(const v1::GetJobResponse& job, int done_at_start,
                              int64_t compute_ms_at_start, double elapsed_seconds) {
  JobProgress p;
  p.total = job.tasks_size();
  // Mean compute time of finished (not reused) tasks, per stage and overall.
  std::map<std::string, std::pair<int64_t, int>> per_stage;
  int64_t all_ms = 0;
  int all_n = 0;
  int64_t compute_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() == v1::TASK_DONE) {
      ++p.done;
      compute_ms += t.compute_ms();
      if (!t.reused() && t.compute_ms() > 0) {
        auto& [ms, n] = per_stage[t.stage_id()];
        ms += t.compute_ms();
        ++n;
        all_ms += t.compute_ms();
        ++all_n;
      }
    } else if (t.state() == v1::TASK_FAILED) {
      ++p.failed;
    } else if (t.state() == v1::TASK_LEASED) {
      std::string s = t.stage_id();
      if (t.layer() >= 0) absl::StrAppend(&s, " L", t.layer());
      absl::StrAppend(&s, " ", static_cast<int>(std::lround(100 * std::clamp(t.progress(), 0.0, 1.0))), "%");
      p.running.push_back(s);
    }
  }
  if (elapsed_seconds > 0) p.tasks_per_second = std::max(0, p.done - done_at_start) / elapsed_seconds;
  const double parallelism =
      elapsed_seconds > 0 ? static_cast<double>(compute_ms - compute_ms_at_start) / 1000.0 / elapsed_seconds : 0;
  if (all_n == 0 || parallelism <= 0) return p;
  double remaining_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() == v1::TASK_DONE || t.state() == v1::TASK_FAILED) continue;
    auto it = per_stage.find(t.stage_id());
    const double mean = it != per_stage.end()
                            ? static_cast<double>(it->second.first) / it->second.second
                            : static_cast<double>(all_ms) / all_n;
    remaining_ms += t.state() == v1::TASK_LEASED ? mean * (1.0 - std::clamp(t.progress(), 0.0, 1.0)) : mean;
  }
  p.eta_seconds = remaining_ms / 1000.0 / parallelism;
  return p;
}

std::string FormatEta(double s) {
  if (s < 0 || !std::isfinite(s)) return "ETA ?";
  if (s < 60) return absl::StrFormat("ETA %.0f s", std::ceil(s));
  if (s < 3600) return absl::StrFormat("ETA %d min %02d s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return absl::StrFormat("ETA %d h %02d min", static_cast<int>(s) / 3600, static_cast<int>(s) % 3600 / 60);
}

std::string ProgressLine(const JobProgress& p, int width) {
  constexpr int kBar = 24;
  const int filled = p.total > 0 ? kBar * p.done / p.total : 0;
  std::string line = absl::StrFormat("[%s%s] %d/%d tasks  %.1f tasks/s  %s", std::string(filled, '#'),
                                     std::string(kBar - filled, '.'), p.done, p.total,
                                     p.tasks_per_second, FormatEta(p.eta_seconds));
  if (p.failed > 0) absl::StrAppend(&line, "  ", p.failed, " failed");
  for (size_t i = 0; i < p.running.size(); ++i) absl::StrAppend(&line, i == 0 ? "  | " : ", ", p.running[i]);
  if (width > 3 && static_cast<int>(line.size()) > width) line = line.substr(0, width - 3) + "...";
  return line;
}

std::string MessageJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string EventJson(const v1::JobEvent& e) {
  // The kind by its name ("task_done"), as events were always printed; not the enum's.
  nlohmann::json j = nlohmann::json::parse(MessageJson(e), nullptr, false);
  if (!j.is_object()) return MessageJson(e);
  j.erase("legacy_kind");
  j["kind"] = EventKindName(KindOf(e));
  return j.dump();
}

// Prints events as they come, with a done/total counter; returns the final job state.
absl::StatusOr<v1::JobState> Follow(MoecClient& client, const std::string& job_id, bool json) {
  absl::StatusOr<v1::GetJobResponse> job = client.GetJob(job_id, true, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  int total = job->tasks_size(), done = 0, done_at_start = 0;
  int64_t compute_at_start = 0;
  CountDone(*job, &done_at_start, &compute_at_start);
  done = done_at_start;
  const absl::Time start = absl::Now();
  // On a terminal, a status line on stderr redrawn twice a second from the job's tasks (bar,
  // running tasks with their progress, throughput, ETA: client/job_progress.h); event lines are
  // printed above it.
  const bool live = !json && isatty(STDERR_FILENO) != 0;
  absl::Mutex draw_mu;
  bool status_shown = false;
  auto clear_status = [&] {
    if (status_shown) std::fputs("\r\033[K", stderr);
    status_shown = false;
  };
  std::atomic<bool> stop{false};
  std::thread poller;
  if (live) {
    poller = std::thread([&] {
      while (!stop.load()) {
        absl::StatusOr<v1::GetJobResponse> now = client.GetJob(job_id, true, false);
        if (now.ok()) {
          JobProgress p = SummarizeProgress(*now, done_at_start, compute_at_start,
                                            absl::ToDoubleSeconds(absl::Now() - start));
          struct winsize ws {};
          const int width = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 120;
          absl::MutexLock lock(&draw_mu);
          if (stop.load()) break;
          clear_status();
          std::fputs(ProgressLine(p, width - 1).c_str(), stderr);
          std::fflush(stderr);
          status_shown = true;
        }
        // Every 0.5 s; every 2 s for jobs of thousands of tasks (each poll carries them all).
        const int ticks = now.ok() && now->tasks_size() > 2000 ? 20 : 5;
        for (int i = 0; i < ticks && !stop.load(); ++i) absl::SleepFor(absl::Milliseconds(100));
      }
    });
  }
  absl::Status s = client.Watch(job_id, 1, [&](const v1::JobEvent& e) {
    const v1::EventKind kind = KindOf(e);
    const bool finished_task = kind == v1::EVENT_TASK_DONE || kind == v1::EVENT_TASK_REUSED;
    const std::string kind_name = EventKindName(kind);
    if (finished_task) ++done;
    absl::MutexLock lock(&draw_mu);
    if (json) {
      std::printf("%s\n", EventJson(e).c_str());
    } else {
      std::string counter;
      if (finished_task) {
        // Throughput since the watch began; ETA from it (the live line weighs stages).
        const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
        const int finished = done - done_at_start;
        const double rate = elapsed > 0 ? finished / elapsed : 0;
        counter = absl::StrFormat("  [%d/%d, %.1f tasks/s, %s]", std::min(done, total), total, rate,
                                  FormatEta(rate > 0 ? (total - done) / rate : -1));
      } else if (kind_name.rfind("task_", 0) == 0) {
        counter = absl::StrFormat("  [%d/%d]", std::min(done, total), total);
      }
      clear_status();
      std::printf("%s  %-14s %-40s %s%s\n",
                  absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(e.time_ms()), absl::LocalTimeZone()).c_str(),
                  kind_name.c_str(), e.task_id().c_str(), e.message().c_str(), counter.c_str());
    }
    std::fflush(stdout);
  });
  stop.store(true);
  if (poller.joinable()) poller.join();
  {
    absl::MutexLock lock(&draw_mu);
    clear_status();
    std::fflush(stderr);
  }
  if (!s.ok()) return s;
  job = client.GetJob(job_id, false, /*wait_for_ready=*/true);
  if (!job.ok()) return job.status();
  if (!json) {
    std::printf("job %s: %s%s\n", job_id.c_str(), v1::JobState_Name(job->job().state()).c_str(),
                job->job().error().empty() ? "" : (" — " + job->job().error()).c_str());
  }
  return job->job().state();
}

}  // namespace moec::client
