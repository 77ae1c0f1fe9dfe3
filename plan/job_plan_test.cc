#include "plan/job_plan.h"

#include <filesystem>

#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::plan {
namespace {

using ::testing::ElementsAre;

class PlanTest : public ::testing::Test {
 protected:
  PlanTest() {
    tools::TinyModelOptions o;
    o.model_type = "mixtral";
    o.num_layers = 3;
    o.experts = 4;
    EXPECT_OK(tools::WriteTinyModel(o, dir_.Join("m")));
    dir_.WriteFile("calib.txt", std::string(4000, 'x'));
  }
  absl::StatusOr<JobPlan> Plan(const std::string& stages, std::vector<std::string> overrides = {}) {
    const std::string yaml = "name: t\nmodel: m\noutput: out\nworkers: 2\n"
                             "calibration: {path: calib.txt, samples: 16, seqlen: 32}\n"
                             "evaluation: {path: calib.txt, seqlen: 32}\nstages:\n" + stages;
    MOEC_ASSIGN_OR_RETURN(recipe::Recipe r, recipe::ParseRecipe(yaml, dir_.Join("r.yaml"), overrides));
    return PlanRecipe(r);
  }
  testing::TempDir dir_;
};

TEST_F(PlanTest, ExpandsStagesAndEstimates) {
  ASSERT_OK_AND_ASSIGN(
      JobPlan p, Plan("  - {id: stats, kind: calibrate}\n"
                      "  - {id: bdrop, kind: block_drop, needs: [stats], with: {drop: 1}}\n"
                      "  - {id: edit, kind: restructure, needs: [bdrop]}\n"
                      "  - {id: quant, kind: gptq, needs: [edit], with: {bits: 3, attn_bits: 3, shared_bits: 3}}\n"
                      "  - {id: out, kind: export, needs: [quant], with: {format: gptq}}\n"
                      "  - {id: eval, kind: evaluate, needs: [out]}\n"));
  ASSERT_OK_AND_ASSIGN(model::ModelConfig c, model::LoadModelConfig(dir_.Join("m")));
  EXPECT_EQ(p.layers, 3);
  EXPECT_EQ(p.total_tasks, 3 + 1 + 1 + 3 + 1 + 1);
  ASSERT_EQ(p.stages.size(), 6u);
  EXPECT_EQ(p.stages[0].tasks, 3);
  EXPECT_EQ(p.stages[0].gang, 2);
  EXPECT_EQ(p.stages[1].gang, 1);
  EXPECT_EQ(p.stages[3].view, "edit");
  EXPECT_EQ(p.stages[4].view, "edit");  // through quant
  EXPECT_EQ(p.stages[0].view, "");
  // calibrate persists every window's hidden state per layer: 16 x 32 x hidden x 4 bytes x 3.
  EXPECT_EQ(p.stages[0].factor_bytes, int64_t{16} * 32 * c.hidden_size * 4 * 3);
  // All of it bulk (kept by workers with an activation store); the job's small outputs are not.
  EXPECT_EQ(p.stages[0].bulk_bytes, p.stages[0].factor_bytes);
  EXPECT_GT(p.bulk_bytes, 0);
  EXPECT_LT(p.bulk_bytes, p.factor_bytes);
  // A 3-bit export is smaller than the model and larger than its 3-bit codes alone.
  const model::ParameterCounts counts = model::CountParameters(c);
  EXPECT_EQ(p.output_format, "gptq");
  EXPECT_LT(p.output_bytes, p.model_bytes);
  EXPECT_GT(p.output_bytes, (counts.routed_experts + counts.attention) * 3 / 8);
  EXPECT_GE(p.peak_memory_bytes, p.stages[3].memory_bytes);
  // More workers: less memory per worker on the data plane.
  ASSERT_OK_AND_ASSIGN(JobPlan wide, Plan("  - {id: stats, kind: calibrate}\n", {"workers=4"}));
  ASSERT_OK_AND_ASSIGN(JobPlan narrow, Plan("  - {id: stats, kind: calibrate}\n", {"workers=1"}));
  EXPECT_LT(wide.stages[0].memory_bytes, narrow.stages[0].memory_bytes);
  // On a GPU worker: the device holds what the host would, plus the CUDA overhead; exports (and
  // block_drop's statistics) stay on the host.
  EXPECT_EQ(p.stages[3].device_memory_bytes, p.stages[3].memory_bytes + kDeviceOverheadBytes);
  EXPECT_EQ(p.stages[0].device_memory_bytes, p.stages[0].memory_bytes + kDeviceOverheadBytes);
  EXPECT_EQ(p.stages[4].device_memory_bytes, 0);
  EXPECT_GE(p.peak_device_memory_bytes, p.stages[3].device_memory_bytes);
  EXPECT_EQ(PlanJson(p)["peak_gpu_memory_per_worker_bytes"], p.peak_device_memory_bytes);
  EXPECT_THAT(PlanText(p), ::testing::HasSubstr("GPU/wkr"));
  // Text and JSON carry the same figures.
  EXPECT_THAT(PlanText(p), ::testing::HasSubstr("10 tasks"));
  EXPECT_EQ(PlanJson(p)["stages"][3]["model_view"], "edit");
  EXPECT_EQ(PlanJson(p)["tasks"], 10);
}

TEST_F(PlanTest, HfExportIsTheModelSize) {
  ASSERT_OK_AND_ASSIGN(JobPlan p, Plan("  - {id: out, kind: export, with: {format: hf}}\n"));
  EXPECT_EQ(p.output_bytes, p.model_bytes);
  EXPECT_EQ(p.total_tasks, 1);
}

}  // namespace
}  // namespace moec::plan
