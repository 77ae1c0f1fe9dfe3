// The fixture of the structural stages' tests (structural_stages_test.cc,
// structural_prune_test.cc): a tiny random model of the test's architecture, its calibration text
// and a factor store, the stage runs of a job of structural stages and an export, and the
// original model's forward with edits applied by hand.
#ifndef MOEC_STAGES_STRUCTURAL_STAGES_TEST_UTIL_H_
#define MOEC_STAGES_STRUCTURAL_STAGES_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/tiny_model_test_util.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "stages/calibrate_stage.h"
#include "stages/stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

class StructuralTest : public ::testing::TestWithParam<std::string> {
 protected:
  static constexpr int kLayers = 4;

  void SetUp() override {
    const tools::TinyModelOptions o = dataplane::SmallStageTestModel(GetParam(), kLayers, 5);
    ASSERT_OK(tools::WriteTinyModel(o, dir_.Join("model")));
    std::string text;
    for (int i = 0; i < 60; ++i) text += "which experts matter, and which layers, line " + std::to_string(i) + "\n";
    dir_.WriteFile("calib.txt", text);
    ASSERT_OK_AND_ASSIGN(runner_, model::ModelRunner::Open(dir_.Join("model")));
  }

  // Runs stage `stage` (id `id`, needs `needs`) as the task of `layer` (-1: global).
  absl::Status Run(Stage& stage, const std::string& id, int layer, const nlohmann::json& params,
                   const std::vector<std::string>& needs, const std::string& output = "") {
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& [sid, kind] : kinds_) {
      nlohmann::json st = {{"id", sid}, {"kind", kind}};
      st["needs"] = sid == id ? nlohmann::json(needs) : nlohmann::json::array();
      stages.push_back(st);
    }
    recipe_ = {{"model", dir_.Join("model")},
               {"output", output.empty() ? dir_.Join("out") : output},
               {"calibration", {{"path", dir_.Join("calib.txt")}, {"samples", 6}, {"seqlen", 16},
                                {"seed", 2}}},
               {"stages", stages}};
    v1::TaskRecord task;
    task.set_job_id("job");
    task.set_stage_id(id);
    task.set_layer(layer);
    task.set_task_id(layer < 0 ? "job/" + id : "job/" + id + "/L" + std::to_string(layer));
    task.set_fingerprint(layer < 0 ? id : id + std::to_string(layer));
    StageContext ctx;
    ctx.task = &task;
    ctx.SetRecipe(dataplane::TestRecipeWith(recipe_, id, params), id);
    for (int l = 0; l < kLayers; ++l) ctx.inputs["job/stats/L" + std::to_string(l)] = "stats" + std::to_string(l);
    for (const char* g : {"drop", "ldrop", "bdrop", "odp"}) ctx.inputs[std::string("job/") + g] = g;
    for (int l = 0; l < kLayers; ++l) {
      ctx.inputs["job/prune/L" + std::to_string(l)] = "prune" + std::to_string(l);
      ctx.inputs["job/slim/L" + std::to_string(l)] = "slim" + std::to_string(l);
      ctx.inputs["job/quant/L" + std::to_string(l)] = "quant" + std::to_string(l);
    }
    io_.SetTask(task.fingerprint());
    ctx.io = &io_;
    return stage.Run(ctx);
  }
  void Calibrate() {
    CalibrateStage calibrate;
    for (int l = 0; l < kLayers; ++l) ASSERT_OK(Run(calibrate, "stats", l, {{"batch_size", 4}}, {}));
  }
  absl::StatusOr<at::Tensor> Get(const std::string& key) {
    StageContext ctx;
    ctx.io = &io_;
    return dataplane::GetTensor(ctx, key);
  }
  // The calibration windows' embeddings and, per layer, the residual stream entering it.
  std::vector<at::Tensor> Residuals() {
    StageContext ctx;
    ctx.recipe = dataplane::TestRecipe(recipe_);
    auto tokens = dataplane::CalibrationTokens(ctx);
    EXPECT_TRUE(tokens.ok());
    at::Tensor h = *runner_->Embed(*tokens);
    std::vector<at::Tensor> out = {h};
    for (int l = 0; l < kLayers; ++l) {
      h = runner_->RunLayer(*runner_->LoadLayer(l), h);
      out.push_back(h);
    }
    return out;
  }
  static double MeanCos(const at::Tensor& a, const at::Tensor& b) {
    return at::cosine_similarity(a.reshape({-1, a.size(-1)}).to(at::kDouble),
                                 b.reshape({-1, b.size(-1)}).to(at::kDouble), 1, 1e-12)
        .mean()
        .item<double>();
  }
  // Logits of the original model with `edit` applied to each layer's weights (nullopt: skip it).
  at::Tensor EditedLogits(const std::function<std::optional<model::LayerWeights>(int, model::LayerWeights)>& edit) {
    StageContext ctx;
    ctx.recipe = dataplane::TestRecipe(recipe_);
    at::Tensor h = *runner_->Embed(*dataplane::CalibrationTokens(ctx));
    for (int l = 0; l < kLayers; ++l) {
      std::optional<model::LayerWeights> w = edit(l, *runner_->LoadLayer(l));
      if (w) h = runner_->RunLayer(*w, h);
    }
    return runner_->ApplyHead(*runner_->LoadHead(), h);
  }
  at::Tensor ExportedLogits() {
    auto exported = model::ModelRunner::Open(dir_.Join("out"));
    EXPECT_TRUE(exported.ok()) << exported.status();
    StageContext ctx;
    ctx.recipe = dataplane::TestRecipe(recipe_);
    return *(*exported)->Forward(*dataplane::CalibrationTokens(ctx));
  }

  ::moec::testing::TempDir dir_;
  std::unique_ptr<model::ModelRunner> runner_;
  std::map<std::string, storage::Factor> store_;
  dataplane::MapFactorIo io_{&store_};
  nlohmann::json recipe_;
  std::vector<std::pair<std::string, std::string>> kinds_ = {
      {"stats", "calibrate"}, {"drop", "expert_drop"}, {"ldrop", "layer_drop"},
      {"bdrop", "block_drop"}, {"prune", "expert_prune"}, {"slim", "prune_weights"}, {"odp", "odp"}, {"quant", "rtn"}, {"out", "export"}};
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_STRUCTURAL_STAGES_TEST_UTIL_H_
