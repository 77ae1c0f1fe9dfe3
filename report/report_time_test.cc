// TimeBreakdown and its Markdown against sums made by hand.
#include "report/report_time.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "report/svg.h"
#include "gtest/gtest.h"

namespace moec::report {
namespace {

// A done task of `stage` with phases {name: (seconds, flops)} run at `gflops`.
void AddTask(v1::GetJobResponse* job, const std::string& stage, double gflops,
             const std::vector<std::tuple<std::string, double, double>>& phases,
             bool reused = false, v1::TaskState state = v1::TASK_DONE) {
  v1::TaskRecord* t = job->add_tasks();
  t->set_task_id("j/" + stage + "/L" + std::to_string(job->tasks_size()));
  t->set_stage_id(stage);
  t->set_kind(stage);
  t->set_state(state);
  t->set_reused(reused);
  t->mutable_profile()->set_gemm_gflops(gflops);
  t->mutable_profile()->set_commit_seconds(0.5);
  for (const auto& [name, seconds, flops] : phases) {
    v1::TaskPhase* p = t->mutable_profile()->add_phases();
    p->set_name(name);
    p->set_seconds(seconds);
    p->set_flops(flops);
  }
}

TEST(ReportTimeTest, SumsPhasesPerStageAndWeighsEachTaskByItsWorkersRate) {
  v1::GetJobResponse job;
  // gptq: 2 tasks, one on a 100 GFLOP/s worker, one on a 200 GFLOP/s one.
  AddTask(&job, "gptq", 100, {{"load", 1, 0}, {"forward", 2, 100e9}, {"solve", 1, 50e9}});
  AddTask(&job, "calibrate", 100, {{"forward", 4, 200e9}, {"other", 1, 0}});
  AddTask(&job, "gptq", 200, {{"load", 1, 0}, {"forward", 1, 100e9}, {"solve", 2, 200e9}});
  // Neither a reused task nor an unfinished one counts.
  AddTask(&job, "gptq", 100, {{"forward", 100, 1e12}}, /*reused=*/true);
  AddTask(&job, "gptq", 100, {{"forward", 100, 1e12}}, false, v1::TASK_LEASED);
  const nlohmann::json t = TimeBreakdown(job);
  ASSERT_EQ(t["stages"].size(), 2u);
  const nlohmann::json& g = t["stages"][0];  // plan order: gptq came first
  EXPECT_EQ(g["stage"], "gptq");
  EXPECT_EQ(g["tasks"], 2);
  EXPECT_DOUBLE_EQ(g["seconds"], 8.0);
  EXPECT_DOUBLE_EQ(g["gflop"], 450.0);
  EXPECT_DOUBLE_EQ(g["commit_seconds"], 1.0);
  // Roofline: 150 GFLOP at 100 (1.5 s) + 300 GFLOP at 200 (1.5 s) = 3 s of 8.
  EXPECT_DOUBLE_EQ(g["fraction_of_gemm"], 3.0 / 8.0);
  EXPECT_DOUBLE_EQ(g["gemm_gflops"], (100.0 * 4 + 200.0 * 4) / 8);
  EXPECT_DOUBLE_EQ(g["phases"]["forward"], 3.0);
  EXPECT_DOUBLE_EQ(g["phases"]["commit"], 1.0);
  // forward: 1 s + 0.5 s of roofline in 3 s; solve: 0.5 + 1 in 3.
  EXPECT_DOUBLE_EQ(g["phase_fraction_of_gemm"]["forward"], 0.5);
  EXPECT_DOUBLE_EQ(g["phase_fraction_of_gemm"]["solve"], 0.5);
  EXPECT_DOUBLE_EQ(g["phase_fraction_of_gemm"]["load"], 0.0);
  EXPECT_DOUBLE_EQ(t["stages"][1]["fraction_of_gemm"], 2.0 / 5.0);
  EXPECT_EQ(t["total"]["tasks"], 3);
  EXPECT_DOUBLE_EQ(t["total"]["seconds"], 13.0);
  EXPECT_DOUBLE_EQ(t["total"]["fraction_of_gemm"], 5.0 / 13.0);

  const std::string md = TimeMarkdown(t);
  EXPECT_NE(md.find("| gptq | 2 | 8.00 | 450.00 | 0.38 | 0.50 | 0.50 | 2.00 s (25%) | 3.00 s (38%)"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| calibrate | 1 | 5.00 | 200.00 | 0.40 |"), std::string::npos) << md;
  EXPECT_NE(md.find("Whole job: 13.00 s"), std::string::npos) << md;
}

TEST(ReportTimeTest, NoProfilesNoSection) {
  v1::GetJobResponse job;
  job.add_tasks()->set_state(v1::TASK_DONE);  // done, but recorded no profile
  const nlohmann::json t = TimeBreakdown(job);
  EXPECT_TRUE(t["stages"].empty());
  EXPECT_EQ(TimeMarkdown(t), "");
}

TEST(ReportTimeTest, StackedBarsDrawOneSegmentPerPositivePart) {
  const std::string svg = SvgStackedBars("t", {"a", "b"}, {"x", "y", "z"},
                                         {{1, 0, 2}, {3, std::nan(""), -1}}, "s");
  size_t segments = 0;
  for (size_t at = svg.find("class=\"segment\""); at != std::string::npos;
       at = svg.find("class=\"segment\"", at + 1)) {
    ++segments;
  }
  EXPECT_EQ(segments, 3u);
  EXPECT_NE(svg.find("<title>a, z: 2</title>"), std::string::npos);
  EXPECT_EQ(svg, SvgStackedBars("t", {"a", "b"}, {"x", "y", "z"},
                                {{1, 0, 2}, {3, std::nan(""), -1}}, "s"));  // deterministic
}

}  // namespace
}  // namespace moec::report
