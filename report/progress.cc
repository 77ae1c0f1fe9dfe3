#include "report/progress.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "proto/event_kind.h"

namespace moec::report {

void CountDone(const v1::GetJobResponse& job, int* done, int64_t* compute_ms) {
  *done = 0;
  *compute_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() != v1::TASK_DONE) continue;
    ++*done;
    *compute_ms += t.compute_ms();
  }
}

namespace {

// Mean compute time of finished (not reused) tasks, per stage and overall.
class ComputeMeans {
 public:
  void Add(const v1::TaskRecord& t) {
    auto& [ms, n] = per_stage_[t.stage_id()];
    ms += t.compute_ms();
    ++n;
    all_ms_ += t.compute_ms();
    ++all_n_;
  }
  bool empty() const { return all_n_ == 0; }
  // The mean of the stage's tasks, else of all (not empty()).
  double Of(const std::string& stage_id) const {
    auto it = per_stage_.find(stage_id);
    return it != per_stage_.end() ? static_cast<double>(it->second.first) / it->second.second
                                  : static_cast<double>(all_ms_) / all_n_;
  }

 private:
  std::map<std::string, std::pair<int64_t, int>> per_stage_;
  int64_t all_ms_ = 0;
  int all_n_ = 0;
};

// A running task as JobProgress::running shows it: "quant L2 45%".
std::string RunningTask(const v1::TaskRecord& t) {
  std::string s = t.stage_id();
  if (t.layer() >= 0) absl::StrAppend(&s, " L", t.layer());
  absl::StrAppend(&s, " ", static_cast<int>(std::lround(100 * std::clamp(t.progress(), 0.0, 1.0))), "%");
  return s;
}

// The expected compute of the tasks not done or failed, running ones scaled by the fraction left.
double RemainingMs(const v1::GetJobResponse& job, const ComputeMeans& means) {
  double remaining_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() == v1::TASK_DONE || t.state() == v1::TASK_FAILED) continue;
    const double mean = means.Of(t.stage_id());
    remaining_ms += t.state() == v1::TASK_LEASED ? mean * (1.0 - std::clamp(t.progress(), 0.0, 1.0)) : mean;
  }
  return remaining_ms;
}

}  // namespace

JobProgress SummarizeProgress(const v1::GetJobResponse& job, int done_at_start,
                              int64_t compute_ms_at_start, double elapsed_seconds) {
  JobProgress p;
  p.total = job.tasks_size();
  ComputeMeans means;
  int64_t compute_ms = 0;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() == v1::TASK_DONE) {
      ++p.done;
      compute_ms += t.compute_ms();
      if (!t.reused() && t.compute_ms() > 0) means.Add(t);
    } else if (t.state() == v1::TASK_FAILED) {
      ++p.failed;
    } else if (t.state() == v1::TASK_LEASED) {
      p.running.push_back(RunningTask(t));
    }
  }
  if (elapsed_seconds > 0) p.tasks_per_second = std::max(0, p.done - done_at_start) / elapsed_seconds;
  const double parallelism =
      elapsed_seconds > 0 ? static_cast<double>(compute_ms - compute_ms_at_start) / 1000.0 / elapsed_seconds : 0;
  if (means.empty() || parallelism <= 0) return p;
  p.eta_seconds = RemainingMs(job, means) / 1000.0 / parallelism;
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

}  // namespace moec::report
