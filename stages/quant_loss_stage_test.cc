#include "stages/quant_loss_stage.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "dataplane/expert_parallel.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/model_inputs.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "stages/calibrate_stage.h"
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

namespace {

// NormalQuantize as tensor ops per group (its definition): the oracle of the kernel it uses.
at::Tensor NormalQuantizeByTensorOps(const at::Tensor& w, int bits, int64_t group_size) {
  const int64_t in = w.size(1), block = group_size > 0 ? group_size : in;
  std::vector<at::Tensor> blocks;
  for (int64_t c = 0; c < in; c += block) {
    at::Tensor x = w.narrow(1, c, std::min(block, in - c)).to(at::kFloat);
    const double maxq = std::pow(2.0, bits) - 1;
    at::Tensor xmin = std::get<0>(x.min(1, true)).clamp_max(0);
    at::Tensor xmax = std::get<0>(x.max(1, true)).clamp_min(0);
    at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
    xmin = at::where(both_zero, -at::ones_like(xmin), xmin);
    xmax = at::where(both_zero, at::ones_like(xmax), xmax);
    at::Tensor s = (xmax - xmin) / maxq;
    at::Tensor z = at::round(-xmin / s);
    blocks.push_back(s * (at::clamp(at::round(x / s) + z, 0, maxq) - z));
  }
  return at::cat(blocks, 1).to(w.scalar_type());
}

TEST(NormalQuantizeTest, KernelGivesTheBitsOfTheTensorOps) {
  at::manual_seed(11);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor w = (at::randn({37, 300}) * 0.05).to(dtype);
    w[3].zero_();                      // a row whose groups are all zero
    w[5].narrow(0, 0, 64).fill_(0.5);  // a constant group
    for (int bits : {2, 3, 4, 8}) {
      for (int64_t group : {int64_t{-1}, int64_t{64}, int64_t{128}, int64_t{7}}) {
        EXPECT_TRUE(at::equal(NormalQuantize(w, bits, group), NormalQuantizeByTensorOps(w, bits, group)))
            << "bits " << bits << " group " << group << " dtype " << dtype;
      }
    }
  }
}

TEST(NormalQuantizeTest, MatchesHandComputedValues) {
  at::Tensor w = at::tensor({0.1f, -0.3f, 0.2f, 0.0f}).view({1, 4});
  // 2 bits: xmin -0.3, xmax 0.2, s = 0.5/3, z = round(1.8) = 2, q = (3, 0, 3, 2).
  at::Tensor q2 = NormalQuantize(w, 2, -1);
  const double s = 0.5 / 3;
  EXPECT_NEAR(q2[0][0].item<float>(), s, 1e-6);
  EXPECT_NEAR(q2[0][1].item<float>(), -2 * s, 1e-6);
  EXPECT_NEAR(q2[0][2].item<float>(), s, 1e-6);
  EXPECT_NEAR(q2[0][3].item<float>(), 0.0, 1e-6);
  // 1 bit: sign(w) * mean|w| = ±0.15, sign(0) = +1.
  at::Tensor q1 = NormalQuantize(w, 1, -1);
  EXPECT_NEAR(q1[0][0].item<float>(), 0.15, 1e-6);
  EXPECT_NEAR(q1[0][1].item<float>(), -0.15, 1e-6);
  EXPECT_NEAR(q1[0][3].item<float>(), 0.15, 1e-6);
  // Groups of 2 columns quantize each block on its own. Block (0, 0) gets the range -1..+1
  // (s = 2/7, z = round(3.5) = 4, q = 4 -> 0). Block (0.6, -0.2): s = 0.8/7, z = round(1.75) = 2,
  // q = round(5.25) + 2 = 7 -> 5s and round(-1.75) + 2 = 0 -> -2s.
  at::Tensor z = at::tensor({0.0f, 0.0f, 0.6f, -0.2f}).view({1, 4});
  at::Tensor g = NormalQuantize(z, 3, 2);
  EXPECT_NEAR(g[0][0].item<float>(), 0.0, 1e-6);
  EXPECT_NEAR(g[0][2].item<float>(), 5 * 0.8 / 7, 1e-6);
  EXPECT_NEAR(g[0][3].item<float>(), -2 * 0.8 / 7, 1e-6);
}


tools::TinyModelOptions QuantLossModel() {
  tools::TinyModelOptions o;
  o.model_type = "mixtral";
  o.num_layers = 2;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.moe_intermediate = 32;
  return o;
}

// Runs stage `stage` (id `stage_id` of `recipe`, parameters `params`) as the task of `layer`; its
// outputs go to `io` under <stage_id><layer>.
absl::Status RunTask(Stage& stage, const std::string& stage_id, int layer,
                     const nlohmann::json& params, const nlohmann::json& recipe,
                     const std::map<std::string, std::string>& inputs, MapFactorIo& io) {
  v1::TaskRecord task;
  task.set_job_id("job");
  task.set_stage_id(stage_id);
  task.set_layer(layer);
  task.set_task_id("job/" + stage_id + "/L" + std::to_string(layer));
  StageContext ctx;
  ctx.task = &task;
  ctx.SetRecipe(TestRecipeWith(recipe, stage_id, params), stage_id);
  ctx.inputs = inputs;
  io.SetTask(stage_id + std::to_string(layer));
  ctx.io = &io;
  return stage.Run(ctx);
}

// The MoE block inputs of the layer `weights` on `input`, in batches of 4 windows.
std::vector<at::Tensor> MoeInputs(const model::ModelRunner& runner,
                                  const model::LayerWeights& weights, const at::Tensor& input) {
  struct Capture : model::ForwardObserver {
    void OnMoeInput(int, const at::Tensor& x) override { xs.push_back(x.clone()); }
    std::vector<at::Tensor> xs;
  } capture;
  for (int64_t s = 0; s < 6; s += 4) {
    runner.RunLayer(weights, input.narrow(0, s, std::min<int64_t>(4, 6 - s)), &capture);
  }
  return capture.xs;
}

// Expects `loss` [4 experts, 3 widths] of layer `l` to equal the whole MoE block recomputed with
// expert e quantized, summed over the batches `xs`.
void ExpectRecomputedLosses(const model::ModelRunner& runner, int l,
                            const model::LayerWeights& weights, const std::vector<at::Tensor>& xs,
                            const at::Tensor& loss) {
  const model::RoutingRule rule = model::RoutingRuleFor(runner.config(), l);
  const std::vector<int> bits = {1, 2, 3};
  for (int e = 0; e < 4; ++e) {
    for (int bi = 0; bi < 3; ++bi) {
      model::MoeWeights q = *weights.moe;
      q.experts[e] = {NormalQuantize(q.experts[e].gate, bits[bi], 16),
                      NormalQuantize(q.experts[e].up, bits[bi], 16),
                      NormalQuantize(q.experts[e].down, bits[bi], 16)};
      double expect = 0;
      for (const at::Tensor& x : xs) {
        at::Tensor z = model::MoeBlock(runner.config(), l, *weights.moe, rule, x, 20, {}, nullptr);
        at::Tensor zq = model::MoeBlock(runner.config(), l, q, rule, x, 20, {}, nullptr);
        expect += (z - zq).to(at::kDouble).norm().item<double>();
      }
      EXPECT_NEAR(loss[e][bi].item<double>(), expect, 1e-4 * expect + 1e-7)
          << "layer " << l << " expert " << e << " bits " << bits[bi];
    }
  }
}

TEST(QuantLossStageTest, EqualsRecomputingTheWholeBlock) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(QuantLossModel(), dir.Join("model")));
  std::string text;
  for (int i = 0; i < 50; ++i) text += "the router sends tokens to experts " + std::to_string(i) + "\n";
  dir.WriteFile("calib.txt", text);
  const nlohmann::json recipe = {
      {"model", dir.Join("model")},
      {"calibration", {{"path", dir.Join("calib.txt")}, {"samples", 6}, {"seqlen", 20}, {"seed", 1}}},
      {"stages",
       {{{"id", "stats"}, {"kind", "calibrate"}, {"needs", nlohmann::json::array()}},
        {{"id", "loss"}, {"kind", "quant_loss"}, {"needs", {"stats"}}}}}};
  std::map<std::string, storage::Factor> store;
  MapFactorIo io(&store);
  std::map<std::string, std::string> inputs;
  for (int l = 0; l < 2; ++l) {
    inputs["job/stats/L" + std::to_string(l)] = "stats" + std::to_string(l);
    inputs["job/loss/L" + std::to_string(l)] = "loss" + std::to_string(l);
  }
  CalibrateStage calibrate;
  QuantLossStage quant_loss;
  const nlohmann::json params = {{"bits", {1, 2, 3}}, {"group_size", 16}, {"batch_size", 4}};
  for (int l = 0; l < 2; ++l) {
    ASSERT_OK(RunTask(calibrate, "stats", l, {{"batch_size", 4}}, recipe, inputs, io));
    ASSERT_OK(RunTask(quant_loss, "loss", l, params, recipe, inputs, io));
  }
  // Reference: the whole MoE block recomputed with expert e quantized, batches of 4 windows.
  ASSERT_OK_AND_ASSIGN(auto runner, model::ModelRunner::Open(dir.Join("model")));
  StageContext ctx;
  ctx.io = &io;
  ctx.recipe = TestRecipe(recipe);
  for (int l = 0; l < 2; ++l) {
    ASSERT_OK_AND_ASSIGN(at::Tensor loss, GetTensor(ctx, "loss" + std::to_string(l) + "/quant_loss"));
    ASSERT_EQ(loss.sizes(), (std::vector<int64_t>{4, 3}));
    at::Tensor input;
    if (l == 0) {
      ASSERT_OK_AND_ASSIGN(model::TokenWindows w, CalibrationWindows(ctx));
      ASSERT_OK_AND_ASSIGN(input, runner->Embed(at::from_blob(w.tokens.data(), {6, 20}, at::kInt).to(at::kLong)));
    } else {
      ASSERT_OK_AND_ASSIGN(input, ReadChunkedTensor(ctx, "stats0/", "hidden"));
    }
    ASSERT_OK_AND_ASSIGN(model::LayerWeights weights, runner->LoadLayer(l));
    ExpectRecomputedLosses(*runner, l, weights, MoeInputs(*runner, weights, input), loss);
    // More bits, less loss (summed over experts).
    at::Tensor per_bit = loss.sum(0);
    EXPECT_GT(per_bit[0].item<double>(), per_bit[1].item<double>());
    EXPECT_GT(per_bit[1].item<double>(), per_bit[2].item<double>());
  }
}

}  // namespace
}  // namespace moec::stages
