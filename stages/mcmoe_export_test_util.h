// The fixture of the MC-MoE export tests (mcmoe_export_test.cc, mcmoe_odp_test.cc): a tiny random
// model of the test's architecture, its calibration text and a factor store, and the stage runs
// of a job of calibrate, odp, rtn and export stages.
#ifndef MOEC_STAGES_MCMOE_EXPORT_TEST_UTIL_H_
#define MOEC_STAGES_MCMOE_EXPORT_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/status_macros.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/tiny_model_test_util.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "stages/stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

class McMoeExportTest : public ::testing::TestWithParam<std::string> {
 protected:
  static constexpr int kLayers = 3;
  static constexpr int64_t kSeq = 16;

  void SetUp() override {
    const tools::TinyModelOptions o = dataplane::SmallStageTestModel(GetParam(), kLayers, 6);
    ASSERT_OK(tools::WriteTinyModel(o, dir_.Join("model")));
    std::string text;
    for (int i = 0; i < 60; ++i) text += "packed experts and pruned routes, line " + std::to_string(i) + "\n";
    dir_.WriteFile("calib.txt", text);
    ASSERT_OK_AND_ASSIGN(runner_, model::ModelRunner::Open(dir_.Join("model")));
  }

  // Runs stage `stage` (id `id`, needs `needs`) as the task of `layer` (-1: global).
  absl::Status Run(Stage& stage, const std::string& id, int layer, const nlohmann::json& params,
                   const std::vector<std::string>& needs, const std::string& output) {
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& [sid, kind] : kinds_) {
      nlohmann::json st = {{"id", sid}, {"kind", kind}};
      st["needs"] = sid == id ? nlohmann::json(needs) : nlohmann::json::array();
      stages.push_back(st);
    }
    recipe_ = {{"model", dir_.Join("model")},
               {"output", output},
               {"calibration", {{"path", dir_.Join("calib.txt")}, {"samples", 6}, {"seqlen", kSeq},
                                {"seed", 3}}},
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
    ctx.inputs["job/odp"] = "odp";
    for (int l = 0; l < kLayers; ++l) {
      ctx.inputs["job/stats/L" + std::to_string(l)] = "stats" + std::to_string(l);
      ctx.inputs["job/quant/L" + std::to_string(l)] = "quant" + std::to_string(l);
    }
    io_.SetTask(task.fingerprint());
    ctx.io = &io_;
    return stage.Run(ctx);
  }
  absl::StatusOr<at::Tensor> Get(const std::string& key) {
    StageContext ctx;
    ctx.io = &io_;
    return dataplane::GetTensor(ctx, key);
  }
  at::Tensor Tokens() {
    StageContext ctx;
    ctx.recipe = dataplane::TestRecipe(recipe_);
    absl::StatusOr<at::Tensor> t = dataplane::CalibrationTokens(ctx);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : at::Tensor();
  }
  // Each quantized module's width, from the quantize stage's summaries.
  absl::StatusOr<std::map<std::string, int>> QuantizedWidths() {
    std::map<std::string, int> widths;
    for (int l = 0; l < kLayers; ++l) {
      MOEC_ASSIGN_OR_RETURN(storage::Factor f, io_.Get("quant" + std::to_string(l) + "/summary"));
      const nlohmann::json summary = nlohmann::json::parse(f.data);
      for (const auto& [name, info] : summary.items()) widths[name] = info.at("bits");
    }
    return widths;
  }
  // Replaces every stored scale and zero point of the quantize stage by its fp16 rounding, the
  // precision the hqq format stores, so that both exports dequantize the same numbers.
  void RoundScalesToHalf() {
    std::vector<std::pair<std::string, std::string>> keys;
    for (const auto& [key, factor] : store_) {
      const size_t slash = key.find('/');
      if (key.rfind("quant", 0) == 0 &&
          (absl::EndsWith(key, ".scales") || absl::EndsWith(key, ".zeros"))) {
        keys.emplace_back(key.substr(0, slash), key.substr(slash + 1));
      }
    }
    ASSERT_FALSE(keys.empty());
    for (const auto& [task, name] : keys) {
      ASSERT_OK_AND_ASSIGN(at::Tensor t, Get(task + "/" + name));
      StageContext ctx;
      ctx.io = &io_;
      io_.SetTask(task);
      ASSERT_OK(dataplane::PutTensor(ctx, name, t.to(at::kHalf).to(t.scalar_type())));
    }
  }

  ::moec::testing::TempDir dir_;
  std::unique_ptr<model::ModelRunner> runner_;
  std::map<std::string, storage::Factor> store_;
  dataplane::MapFactorIo io_{&store_};
  nlohmann::json recipe_;
  std::vector<std::pair<std::string, std::string>> kinds_ = {
      {"stats", "calibrate"}, {"odp", "odp"}, {"quant", "rtn"}, {"out", "export"}};
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_MCMOE_EXPORT_TEST_UTIL_H_
