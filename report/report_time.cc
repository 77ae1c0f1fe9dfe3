#include "report/report_time.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moec::report {
namespace {

// One stage's sums (or the job's).
struct Sums {
  std::string stage, kind;
  int tasks = 0;
  double seconds = 0, flops = 0, commit = 0;
  double roofline = 0;       // seconds the FLOPs take at the workers' GEMM rates
  double rate_seconds = 0;   // the workers' GEMM rates (GFLOP/s) weighted by run time
  std::map<std::string, double> phase_seconds, phase_flops, phase_roofline;

  void Add(const v1::TaskProfile& p) {
    ++tasks;
    commit += p.commit_seconds();
    const double rate = p.gemm_gflops() * 1e9;
    for (const v1::TaskPhase& phase : p.phases()) {
      rate_seconds += p.gemm_gflops() * phase.seconds();
      seconds += phase.seconds();
      flops += phase.flops();
      phase_seconds[phase.name()] += phase.seconds();
      phase_flops[phase.name()] += phase.flops();
      if (rate > 0) {
        roofline += phase.flops() / rate;
        phase_roofline[phase.name()] += phase.flops() / rate;
      }
    }
  }
};

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

nlohmann::json ToJson(const Sums& s, bool phases) {
  nlohmann::json j = {{"tasks", s.tasks},
                      {"seconds", s.seconds},
                      {"commit_seconds", s.commit},
                      {"gflop", s.flops / 1e9},
                      {"gflops", Ratio(s.flops / 1e9, s.seconds)},
                      {"gemm_gflops", Ratio(s.rate_seconds, s.seconds)},
                      {"fraction_of_gemm", Ratio(s.roofline, s.seconds)}};
  if (!phases) return j;
  j["stage"] = s.stage;
  j["kind"] = s.kind;
  nlohmann::json sec = nlohmann::json::object(), gf = nlohmann::json::object(),
                 frac = nlohmann::json::object();
  for (const auto& [name, v] : s.phase_seconds) {
    sec[name] = v;
    gf[name] = s.phase_flops.at(name) / 1e9;
    auto r = s.phase_roofline.find(name);
    frac[name] = Ratio(r == s.phase_roofline.end() ? 0 : r->second, v);
  }
  sec["commit"] = s.commit;
  j["phases"] = sec;
  j["phase_gflop"] = gf;
  j["phase_fraction_of_gemm"] = frac;
  return j;
}

}  // namespace

const std::vector<std::string>& ReportedPhases() {
  static const std::vector<std::string> kPhases = {
      "load", "forward", "statistics", "solve", "communication", "factor_io", "other", "commit"};
  return kPhases;
}

nlohmann::json TimeBreakdown(const v1::GetJobResponse& job) {
  std::vector<Sums> stages;
  std::map<std::string, size_t> index;
  Sums total;
  for (const v1::TaskRecord& t : job.tasks()) {
    if (t.state() != v1::TASK_DONE || t.reused() || t.profile().phases_size() == 0) continue;
    auto [it, added] = index.emplace(t.stage_id(), stages.size());
    if (added) stages.push_back(Sums{t.stage_id(), t.kind()});
    stages[it->second].Add(t.profile());
    total.Add(t.profile());
  }
  nlohmann::json out = {{"stages", nlohmann::json::array()}};
  for (const Sums& s : stages) out["stages"].push_back(ToJson(s, /*phases=*/true));
  out["total"] = ToJson(total, /*phases=*/false);
  return out;
}

std::string TimeMarkdown(const nlohmann::json& time) {
  if (!time.contains("stages") || time["stages"].empty()) return "";
  std::string out =
      "\n## Where the time went\n\nRun time of each stage's tasks on rank 0, split into "
      "phases, and the FLOPs they counted against the fp32 GEMM rate their workers measured at "
      "start-up (\"of GEMM\": the time those FLOPs take at that rate over the time taken; "
      "forward and solve: the same within the phase). Commit: the coordinator's.\n\n"
      "| stage | tasks | run (s) | GFLOP | of GEMM | of GEMM, forward | of GEMM, solve |";
  const std::vector<std::string>& phases = ReportedPhases();
  for (const std::string& p : phases) absl::StrAppend(&out, " ", p, " |");
  out += "\n|---|---|---|---|---|---|---|";
  for (size_t i = 0; i < phases.size(); ++i) out += "---|";
  out += "\n";
  for (const nlohmann::json& s : time["stages"]) {
    const double run = s.value("seconds", 0.0);
    const nlohmann::json& frac = s["phase_fraction_of_gemm"];
    absl::StrAppendFormat(&out, "| %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f |",
                          s.value("stage", ""), s.value("tasks", 0), run, s.value("gflop", 0.0),
                          s.value("fraction_of_gemm", 0.0), frac.value("forward", 0.0),
                          frac.value("solve", 0.0));
    for (const std::string& p : phases) {
      const double v = s["phases"].value(p, 0.0);
      absl::StrAppendFormat(&out, " %.2f s (%.0f%%) |", v, run > 0 ? 100 * v / run : 0.0);
    }
    out += "\n";
  }
  const nlohmann::json& t = time["total"];
  absl::StrAppendFormat(&out,
                        "\nWhole job: %.2f s of task run time on rank 0, %.2f GFLOP, %.2f of the "
                        "GEMM rate (%.1f GFLOP/s).\n",
                        t.value("seconds", 0.0), t.value("gflop", 0.0),
                        t.value("fraction_of_gemm", 0.0), t.value("gemm_gflops", 0.0));
  return out;
}

}  // namespace moec::report
