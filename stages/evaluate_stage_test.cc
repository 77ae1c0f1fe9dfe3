#include "stages/evaluate_stage.h"

#include <cmath>
#include <string>

#include "dataplane/stage_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using dataplane::TestRecipe;
using dataplane::TestRecipeWith;
using dataplane::TestStage;

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::HasSubstr;

namespace {

class StringIo : public FactorIo {
 public:
  absl::StatusOr<std::string> PutOutput(absl::string_view name, storage::DType dtype,
                                        absl::Span<const int64_t> shape,
                                        absl::string_view data) override {
    outputs[std::string(name)] = std::string(data);
    return std::string(name);
  }
  absl::StatusOr<storage::Factor> Get(absl::string_view key) override {
    return absl::NotFoundError(std::string(key));
  }
  std::map<std::string, std::string> outputs;
};

TEST(EvaluateStageTest, ReportsPerplexitySizeAndBitsOfTheOriginalModel) {
  TempDir dir;
  tools::TinyModelOptions o;
  o.model_type = "olmoe";
  o.num_layers = 2;
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("model")));
  std::string text;
  for (int i = 0; i < 40; ++i) text += "evaluation text for a tiny model, line " + std::to_string(i) + "\n";
  dir.WriteFile("eval.txt", text);
  v1::TaskRecord task;
  task.set_job_id("job");
  task.set_stage_id("eval");
  task.set_layer(-1);
  StageContext ctx;
  ctx.task = &task;
  ctx.SetRecipe(TestRecipeWith({{"model", dir.Join("model")},
                                {"output", dir.Join("out")},
                                {"evaluation", {{"path", dir.Join("eval.txt")}, {"seqlen", 32}}},
                                {"stages", {TestStage("eval", "evaluate")}}},
                               "eval", {{"max_windows", 3}, {"baseline", true}}),
                "eval");
  StringIo io;
  ctx.io = &io;
  ASSERT_OK(EvaluateStage().Run(ctx));
  nlohmann::json report = nlohmann::json::parse(io.outputs.at("report"));
  const nlohmann::json& m = report.at("model");
  EXPECT_EQ(m.at("path"), dir.Join("model"));  // no export among the needs: the original
  EXPECT_FALSE(report.contains("baseline"));
  EXPECT_EQ(m.at("windows"), 3);
  EXPECT_EQ(m.at("seqlen"), 32);
  EXPECT_DOUBLE_EQ(m.at("average_expert_bits").get<double>(), 32.0);  // F32 weights
  EXPECT_DOUBLE_EQ(m.at("average_bits_mcmoe").get<double>(), 32.0);
  // Every stored byte per parameter: F32 throughout, so the parameter count matches the tensors.
  EXPECT_DOUBLE_EQ(m.at("average_bits_all").get<double>(), 32.0);
  EXPECT_GT(m.at("size_bytes").get<int64_t>(), 0);
  EXPECT_NEAR(std::log(m.at("perplexity").get<double>()), m.at("mean_nll").get<double>(), 1e-9);
  // Without skipping every token uses its top-k experts: the measured count is the static one.
  EXPECT_EQ(m.at("activated_parameters_measured"), m.at("activated_parameters"));
  EXPECT_DOUBLE_EQ(m.at("routed_experts_per_token").get<double>(), 2.0);
  // Same numbers as evaluating the directory directly.
  ASSERT_OK_AND_ASSIGN(nlohmann::json direct,
                       EvaluateModel(dir.Join("model"), dir.Join("eval.txt"), 32, 3, nullptr));
  EXPECT_DOUBLE_EQ(direct.at("perplexity").get<double>(), m.at("perplexity").get<double>());

  // A recipe without evaluation text (validation refuses it; a stored one could lack it).
  auto without = std::make_shared<recipe::Recipe>(*ctx.recipe);
  without->evaluation.reset();
  ctx.SetRecipe(without, "eval");
  EXPECT_THAT(EvaluateStage().Run(ctx),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("evaluation")));
}

}  // namespace
}  // namespace moec::stages
