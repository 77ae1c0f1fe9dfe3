#include "stages/calibrate_stage.h"

#include <ATen/ATen.h>

#include <map>
#include <string>

#include "dataplane/expert_parallel.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/model_inputs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using dataplane::TestRecipe;
using dataplane::TestRecipeWith;
using dataplane::TestStage;

using dataplane::CalibrationWindows;
using dataplane::GetTensor;
using dataplane::MapFactorIo;
using dataplane::ReadChunkedTensor;


using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::HasSubstr;

namespace {

// Router logits and residual stream of a plain forward: the oracle of the stage's statistics.
class Capture : public model::ForwardObserver {
 public:
  void OnRouterLogits(int layer, const at::Tensor& logits) override { logits_[layer] = logits.clone(); }
  void OnLayerOutput(int layer, const at::Tensor& h) override { hidden_[layer] = h.clone(); }
  std::map<int, at::Tensor> logits_, hidden_;
};

class CalibrateStageTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    tools::TinyModelOptions o;
    o.model_type = GetParam();
    o.num_layers = 3;
    o.hidden = 32;
    o.heads = 4;
    o.kv_heads = 2;
    o.experts = 4;
    o.moe_intermediate = 24;
    o.intermediate = 40;
    ASSERT_OK(tools::WriteTinyModel(o, dir_.Join("model")));
    std::string text;
    for (int i = 0; i < 60; ++i) text += "calibration text about experts and routers, line " + std::to_string(i) + "\n";
    dir_.WriteFile("calib.txt", text);
    recipe_ = {{"model", dir_.Join("model")},
               {"calibration",
                {{"path", dir_.Join("calib.txt")}, {"samples", 5}, {"seqlen", 24}, {"seed", 3},
                 {"sampling", "random_windows"}}}};
  }

  absl::Status RunLayer(int layer, MapFactorIo* io) {
    v1::TaskRecord task;
    task.set_job_id("job");
    task.set_stage_id("cal");
    task.set_task_id("job/cal/L" + std::to_string(layer));
    task.set_layer(layer);
    task.set_fingerprint("fp" + std::to_string(layer));
    StageContext ctx;
    ctx.task = &task;
    ctx.SetRecipe(TestRecipeWith(recipe_, "cal", {{"batch_size", 2}}, "calibrate"), "cal");
    for (int l = 0; l < 3; ++l) ctx.inputs["job/cal/L" + std::to_string(l)] = "fp" + std::to_string(l);
    io->SetTask(task.fingerprint());
    ctx.io = io;
    return CalibrateStage().Run(ctx);
  }

  TempDir dir_;
  nlohmann::json recipe_;
};

TEST_P(CalibrateStageTest, StatisticsMatchAPlainForward) {
  std::map<std::string, storage::Factor> store;
  MapFactorIo io(&store);
  for (int l = 0; l < 3; ++l) ASSERT_OK(RunLayer(l, &io));

  // The same windows through the whole model at once.
  ASSERT_OK_AND_ASSIGN(auto runner, model::ModelRunner::Open(dir_.Join("model")));
  StageContext ctx;
  ctx.recipe = TestRecipe(recipe_);
  ASSERT_OK_AND_ASSIGN(model::TokenWindows windows, CalibrationWindows(ctx));
  ASSERT_EQ(windows.count(), 5);
  at::Tensor tokens =
      at::from_blob(windows.tokens.data(), {5, 24}, at::kInt).to(at::kLong);
  Capture capture;
  ASSERT_OK(runner->Forward(tokens, &capture).status());
  const model::ModelConfig& c = runner->config();
  for (int l = 0; l < 3; ++l) {
    ctx.io = &io;
    ASSERT_OK_AND_ASSIGN(at::Tensor hidden, ReadChunkedTensor(ctx, "fp" + std::to_string(l) + "/", "hidden"));
    EXPECT_TRUE(at::allclose(hidden, capture.hidden_[l], 1e-5, 1e-6)) << "layer " << l;
    const bool moe = c.IsMoeLayer(l);
    EXPECT_EQ(store.count("fp" + std::to_string(l) + "/expert_tokens"), moe ? 1u : 0u);
    if (!moe) continue;
    ASSERT_OK_AND_ASSIGN(at::Tensor counts, GetTensor(ctx, "fp" + std::to_string(l) + "/expert_tokens"));
    ASSERT_OK_AND_ASSIGN(at::Tensor mass, GetTensor(ctx, "fp" + std::to_string(l) + "/routing_mass"));
    ASSERT_OK_AND_ASSIGN(at::Tensor softmax_mass,
                         GetTensor(ctx, "fp" + std::to_string(l) + "/softmax_mass"));
    ASSERT_OK_AND_ASSIGN(at::Tensor median, GetTensor(ctx, "fp" + std::to_string(l) + "/p2_p1_median"));
    ASSERT_OK_AND_ASSIGN(at::Tensor n, GetTensor(ctx, "fp" + std::to_string(l) + "/tokens"));
    EXPECT_EQ(n.item<int64_t>(), 5 * 24);
    // Independent count from the captured logits, token by token.
    at::Tensor p = at::softmax(capture.logits_[l].to(at::kDouble), -1);
    std::vector<int64_t> expect_counts(4, 0);
    std::vector<double> expect_mass(4, 0.0), expect_softmax(4, 0.0), ratios;
    for (int64_t t = 0; t < p.size(0); ++t) {
      std::vector<std::pair<double, int>> ranked;
      for (int e = 0; e < 4; ++e) {
        ranked.push_back({p[t][e].item<double>(), e});
        expect_softmax[e] += p[t][e].item<double>();
      }
      std::sort(ranked.rbegin(), ranked.rend());
      for (int i = 0; i < 2; ++i) {
        ++expect_counts[ranked[i].second];
        expect_mass[ranked[i].second] += ranked[i].first;
      }
      ratios.push_back(ranked[1].first / ranked[0].first);
    }
    std::sort(ratios.begin(), ratios.end());
    for (int e = 0; e < 4; ++e) {
      EXPECT_EQ(counts[e].item<int64_t>(), expect_counts[e]) << "layer " << l << " expert " << e;
      // Sums of float32 probabilities: each within a few float32 ulps (~2.4e-7 relative) of the
      // double-precision oracle's, so the sum is within that fraction of itself.
      EXPECT_NEAR(mass[e].item<double>(), expect_mass[e], 1e-6 + 5e-7 * expect_mass[e]);
      EXPECT_NEAR(softmax_mass[e].item<double>(), expect_softmax[e], 1e-6 + 5e-7 * expect_softmax[e]);
    }
    EXPECT_NEAR(median.item<double>(), ratios[(ratios.size() - 1) / 2], 1e-6);
  }
}

TEST_P(CalibrateStageTest, MissingInputsAreClearErrors) {
  std::map<std::string, storage::Factor> store;
  MapFactorIo io(&store);
  // Layer 1 before layer 0 ran: its input is not in the store.
  EXPECT_THAT(RunLayer(1, &io), StatusIs(absl::StatusCode::kNotFound, HasSubstr("fp0/windows")));
  recipe_.erase("calibration");
  EXPECT_THAT(RunLayer(0, &io),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("calibration")));
}

INSTANTIATE_TEST_SUITE_P(Architectures, CalibrateStageTest,
                         ::testing::Values("mixtral", "deepseek", "qwen2_moe"));

}  // namespace
}  // namespace moec::stages
