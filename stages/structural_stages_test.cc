// expert_drop, layer_drop and block_drop against direct computations on a plain forward, and
// their exports against the original model run with the same edits applied by hand.
#include "stages/structural_stages.h"

#include <ATen/ATen.h>

#include <map>
#include <set>
#include <string>

#include "dataplane/expert_parallel.h"
#include "dataplane/stage_test_util.h"
#include "dataplane/model_inputs.h"
#include "dataplane/tiny_model_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "quant/sparse.h"
#include "stages/calibrate_stage.h"
#include "stages/evaluate_stage.h"
#include "stages/expert_prune_stage.h"
#include "stages/export_stage.h"
#include "stages/odp_stage.h"
#include "stages/prune_weights_stage.h"
#include "stages/quantize_stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using dataplane::TestRecipe;
using dataplane::TestRecipeWith;
using dataplane::TestStage;

using dataplane::CalibrationTokens;
using dataplane::GetTensor;
using dataplane::MapFactorIo;
using dataplane::ReadChunkedTensor;
using dataplane::SmallStageTestModel;


using ::moec::testing::TempDir;

namespace {

constexpr int kLayers = 4;

class StructuralTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const tools::TinyModelOptions o = SmallStageTestModel(GetParam(), kLayers, 5);
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
    ctx.SetRecipe(TestRecipeWith(recipe_, id, params), id);
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
    return GetTensor(ctx, key);
  }
  // The calibration windows' embeddings and, per layer, the residual stream entering it.
  std::vector<at::Tensor> Residuals() {
    StageContext ctx;
    ctx.recipe = TestRecipe(recipe_);
    auto tokens = CalibrationTokens(ctx);
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
    ctx.recipe = TestRecipe(recipe_);
    at::Tensor h = *runner_->Embed(*CalibrationTokens(ctx));
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
    ctx.recipe = TestRecipe(recipe_);
    return *(*exported)->Forward(*CalibrationTokens(ctx));
  }

  TempDir dir_;
  std::unique_ptr<model::ModelRunner> runner_;
  std::map<std::string, storage::Factor> store_;
  MapFactorIo io_{&store_};
  nlohmann::json recipe_;
  std::vector<std::pair<std::string, std::string>> kinds_ = {
      {"stats", "calibrate"}, {"drop", "expert_drop"}, {"ldrop", "layer_drop"},
      {"bdrop", "block_drop"}, {"prune", "expert_prune"}, {"slim", "prune_weights"}, {"odp", "odp"}, {"quant", "rtn"}, {"out", "export"}};
};

TEST_P(StructuralTest, ExpertDropKeepsTheHighestScoresAndExportsAModelThatLoads) {
  Calibrate();
  const model::ModelConfig& c = runner_->config();
  ExpertDropStage drop;
  ASSERT_OK(Run(drop, "drop", -1, {{"keep", 3}, {"mode", "layerwise"}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor kept, Get("drop/kept_mask"));
  ASSERT_OK_AND_ASSIGN(at::Tensor scores, Get("drop/scores"));
  // Direct scores: summed full softmax (DeepSeek: summed top-k weights) over the tokens.
  struct Logits : model::ForwardObserver {
    void OnRouterLogits(int l, const at::Tensor& x) override { logits[l] = x.clone(); }
    std::map<int, at::Tensor> logits;
  } capture;
  StageContext ctx;
  ctx.recipe = TestRecipe(recipe_);
  ASSERT_OK(runner_->Forward(*CalibrationTokens(ctx), &capture).status());
  for (int l = 0; l < kLayers; ++l) {
    if (!c.IsMoeLayer(l)) {
      EXPECT_EQ(kept[l].sum().item<int64_t>(), 0);
      continue;
    }
    at::Tensor p = at::softmax(capture.logits[l].to(at::kDouble), -1);
    at::Tensor expect = p.sum(0) / 6;
    if (c.model_type == "deepseek") {
      auto [top_p, top_i] = p.topk(c.num_experts_per_tok, -1);
      expect = at::zeros({5}, at::kDouble).index_add_(0, top_i.reshape(-1), top_p.reshape(-1)) / 6;
    }
    EXPECT_TRUE(at::allclose(scores[l].narrow(0, 0, 5), expect, 1e-6, 1e-9))
        << "layer " << l << " " << scores[l] << " vs " << expect;
    std::vector<std::pair<double, int>> ranked;
    for (int e = 0; e < 5; ++e) ranked.push_back({expect[e].item<double>(), e});
    std::sort(ranked.rbegin(), ranked.rend());
    std::set<int> top = {ranked[0].second, ranked[1].second, ranked[2].second};
    for (int e = 0; e < 5; ++e) EXPECT_EQ(kept[l][e].item<uint8_t>() != 0, top.count(e) > 0) << l << "/" << e;
  }
  // Export: the stock config with 3 experts; logits equal the original with the kept experts.
  ExportStage exporter;
  absl::Status exported = Run(exporter, "out", -1, {{"format", "hf"}}, {"drop"});
  ASSERT_OK(exported);
  ASSERT_OK_AND_ASSIGN(model::ModelConfig out, model::LoadModelConfig(dir_.Join("out")));
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(out.NumRoutedExperts(l), c.IsMoeLayer(l) ? 3 : 0);
  at::Tensor expect = EditedLogits([&](int l, model::LayerWeights w) -> std::optional<model::LayerWeights> {
    if (!w.moe) return w;
    std::vector<int64_t> ids;
    for (int e = 0; e < 5; ++e) if (kept[l][e].item<uint8_t>()) ids.push_back(e);
    std::vector<model::MlpWeights> experts;
    for (int64_t e : ids) experts.push_back(w.moe->experts[e]);
    w.moe->experts = experts;
    w.moe->router = w.moe->router.index_select(0, at::tensor(ids, at::kLong));
    return w;
  });
  EXPECT_TRUE(at::allclose(ExportedLogits(), expect, 1e-5, 1e-5));
}

TEST_P(StructuralTest, GlobalAndRandomExpertDrop) {
  Calibrate();
  ExpertDropStage drop;
  ASSERT_OK(Run(drop, "drop", -1, {{"keep", 3}, {"mode", "global"}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor kept, Get("drop/kept_mask"));
  int moe = 0;
  for (int l = 0; l < kLayers; ++l) moe += runner_->config().IsMoeLayer(l);
  EXPECT_EQ(kept.sum().item<int64_t>(), 3 * moe);  // round((5 - 3) * moe) dropped of 5 * moe
  // Uneven counts export per-layer lists; the model loads with them.
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"drop"}));
  ASSERT_OK_AND_ASSIGN(model::ModelConfig out, model::LoadModelConfig(dir_.Join("out")));
  int total = 0;
  for (int l = 0; l < kLayers; ++l) {
    total += out.NumRoutedExperts(l);
    EXPECT_EQ(out.NumRoutedExperts(l), kept[l].sum().item<int64_t>()) << l;
  }
  EXPECT_EQ(total, 3 * moe);
  EXPECT_EQ(ExportedLogits().size(0), 6);
  ASSERT_OK(Run(drop, "drop", -1, {{"keep", 2}, {"random", true}, {"seed", 7}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor a, Get("drop/kept_mask"));
  ASSERT_OK(Run(drop, "drop", -1, {{"keep", 2}, {"random", true}, {"seed", 7}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor b, Get("drop/kept_mask"));
  ASSERT_OK(Run(drop, "drop", -1, {{"keep", 2}, {"random", true}, {"seed", 8}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor other, Get("drop/kept_mask"));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, other));
  EXPECT_EQ(a.sum().item<int64_t>(), 2 * moe);
}

TEST_P(StructuralTest, BlockDropScoresResidualSimilarityAndExportsRenumberedLayers) {
  Calibrate();
  std::vector<at::Tensor> h = Residuals();
  BlockDropStage drop;
  ASSERT_OK(Run(drop, "bdrop", -1, {{"drop", 2}, {"mode", "discrete"}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor sim, Get("bdrop/similarity"));
  ASSERT_OK_AND_ASSIGN(at::Tensor dropped, Get("bdrop/dropped_layers"));
  std::vector<std::pair<double, int>> ranked;
  for (int l = 0; l < kLayers; ++l) {
    const double s = MeanCos(h[l], h[l + 1]);
    EXPECT_NEAR(sim[l].item<double>(), s, 1e-6) << l;
    ranked.push_back({s, l});
  }
  std::sort(ranked.rbegin(), ranked.rend());
  const std::set<int64_t> expect = {ranked[0].second, ranked[1].second};
  ASSERT_EQ(dropped.numel(), 2);
  EXPECT_EQ(std::set<int64_t>({dropped[0].item<int64_t>(), dropped[1].item<int64_t>()}), expect);
  // Consecutive: the window l..l+1 maximizing cos(h_l, h_{l+2}).
  ASSERT_OK(Run(drop, "bdrop", -1, {{"drop", 2}, {"mode", "consecutive"}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor window, Get("bdrop/dropped_layers"));
  ASSERT_OK_AND_ASSIGN(at::Tensor wsim, Get("bdrop/similarity"));
  ASSERT_EQ(wsim.numel(), kLayers - 1);
  int best = 0;
  for (int l = 0; l + 2 <= kLayers; ++l) {
    EXPECT_NEAR(wsim[l].item<double>(), MeanCos(h[l], h[l + 2]), 1e-6);
    if (MeanCos(h[l], h[l + 2]) > MeanCos(h[best], h[best + 2])) best = l;
  }
  EXPECT_EQ(window[0].item<int64_t>(), best);
  EXPECT_EQ(window[1].item<int64_t>(), best + 1);
  // Export drops those two layers; the model loads and computes the original minus them.
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"bdrop"}));
  ASSERT_OK_AND_ASSIGN(model::ModelConfig out, model::LoadModelConfig(dir_.Join("out")));
  EXPECT_EQ(out.num_hidden_layers, kLayers - 2);
  at::Tensor want = EditedLogits([&](int l, model::LayerWeights w) -> std::optional<model::LayerWeights> {
    if (l == best || l == best + 1) return std::nullopt;
    return w;
  });
  EXPECT_TRUE(at::allclose(ExportedLogits(), want, 1e-5, 1e-5));
}

TEST_P(StructuralTest, LayerDropScoresMoeSimilarityAndExportsDroppedSubBlocks) {
  Calibrate();
  const model::ModelConfig& c = runner_->config();
  std::vector<at::Tensor> h = Residuals();
  LayerDropStage drop;
  ASSERT_OK(Run(drop, "ldrop", -1, {{"drop", 1}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor sim, Get("ldrop/similarity"));
  ASSERT_OK_AND_ASSIGN(at::Tensor dropped, Get("ldrop/dropped_moe_layers"));
  double best = -2;
  int best_layer = -1;
  for (int l = 0; l < kLayers; ++l) {
    if (!c.IsMoeLayer(l)) {
      EXPECT_TRUE(std::isnan(sim[l].item<double>()));
      continue;
    }
    // Direct: h_mid = h + Attn(norm(h)); y = MoE(norm(h_mid)); cos(h_mid, h_mid + y).
    model::LayerWeights w = *runner_->LoadLayer(l);
    const int64_t seq = h[l].size(1);
    model::AttentionOutput a = model::Attention(
        c, l, w.attention, model::RmsNorm(h[l], w.input_norm, c.rms_norm_eps),
        model::MakeRopeTables(seq, c.head_dim, c.rope_theta), false, nullptr);
    at::Tensor mid = (h[l] + a.output).reshape({-1, c.hidden_size});
    at::Tensor y = model::MoeBlock(c, l, *w.moe, model::RoutingRuleFor(c, l),
                                   model::RmsNorm(mid, w.post_norm, c.rms_norm_eps), seq, {}, nullptr);
    const double s = MeanCos(mid, mid + y);
    EXPECT_NEAR(sim[l].item<double>(), s, 1e-5) << l;
    if (s > best) best = s, best_layer = l;
  }
  ASSERT_EQ(dropped.numel(), 1);
  EXPECT_EQ(dropped[0].item<int64_t>(), best_layer);
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"ldrop"}));
  at::Tensor want = EditedLogits([&](int l, model::LayerWeights w) -> std::optional<model::LayerWeights> {
    if (l == best_layer) {
      w.post_norm = at::Tensor();
      w.moe.reset();
    }
    return w;
  });
  EXPECT_TRUE(at::allclose(ExportedLogits(), want, 1e-5, 1e-5));
}

// The subset search's loss of every drop set equals re-running the masked MoE block on the
// captured batches; the chosen set is the argmin; the export computes the pruned model.
TEST_P(StructuralTest, ExpertPruneMatchesAnExhaustiveRecomputation) {
  Calibrate();
  const model::ModelConfig& c = runner_->config();
  ExpertPruneStage prune;
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(prune, "prune", l, {{"keep", 3}, {"mode", "layerwise"}, {"batch_size", 4}}, {"stats"}));
  }
  std::vector<at::Tensor> h = Residuals();
  std::map<int, std::vector<int64_t>> chosen;
  for (int l = 0; l < kLayers; ++l) {
    if (!c.IsMoeLayer(l)) {
      EXPECT_EQ(store_.count("prune" + std::to_string(l) + "/kept_experts"), 0u);
      continue;
    }
    ASSERT_OK_AND_ASSIGN(at::Tensor losses, Get("prune" + std::to_string(l) + "/losses"));
    ASSERT_OK_AND_ASSIGN(at::Tensor kept, Get("prune" + std::to_string(l) + "/kept_experts"));
    ASSERT_EQ(losses.numel(), 10);  // C(5, 2) drop sets
    model::LayerWeights w = *runner_->LoadLayer(l);
    model::RoutingRule rule = model::RoutingRuleFor(c, l);
    // Batches of 4 windows: MoE input and original output, captured from the plain layer.
    struct Cap : model::ForwardObserver {
      void OnMoeInput(int, const at::Tensor& x) override { xs.push_back(x.clone()); }
      void OnMoeOutput(int, const at::Tensor& z) override { zs.push_back(z.clone()); }
      std::vector<at::Tensor> xs, zs;
    } cap;
    for (int64_t s = 0; s < 6; s += 4) runner_->RunLayer(w, h[l].narrow(0, s, std::min<int64_t>(4, 6 - s)), &cap);
    int index = 0, best = -1;
    double best_loss = 1e300;
    std::vector<int64_t> best_kept;
    for (int a = 0; a < 5; ++a) {
      for (int b = a + 1; b < 5; ++b, ++index) {
        model::MoeWeights masked = *w.moe;
        std::vector<int64_t> ids;
        masked.experts.clear();
        for (int e = 0; e < 5; ++e) {
          if (e == a || e == b) continue;
          ids.push_back(e);
          masked.experts.push_back(w.moe->experts[e]);
        }
        masked.router = w.moe->router.index_select(0, at::tensor(ids, at::kLong));
        double loss = 0;
        for (size_t i = 0; i < cap.xs.size(); ++i) {
          at::Tensor zhat = model::MoeBlock(c, l, masked, rule, cap.xs[i], 16, {}, nullptr);
          loss += (cap.zs[i] - zhat).to(at::kDouble).norm().item<double>();
        }
        EXPECT_NEAR(losses[index].item<double>(), loss, 1e-5 * loss + 1e-9) << l << " drop " << a << "," << b;
        if (loss < best_loss) best_loss = loss, best = index, best_kept = ids;
      }
    }
    ASSERT_GE(best, 0);
    EXPECT_EQ(std::vector<int64_t>(kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + kept.numel()),
              best_kept) << "layer " << l;
    chosen[l] = best_kept;
  }
  // Greedy on the same objective (limit 1 forces it): 3 experts, a loss no better than the optimum.
  ASSERT_OK(Run(prune, "prune", kLayers - 1, {{"keep", 3}, {"exhaustive_limit", 1}, {"batch_size", 4}},
                {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor greedy, Get("prune" + std::to_string(kLayers - 1) + "/kept_experts"));
  ASSERT_OK_AND_ASSIGN(at::Tensor greedy_loss, Get("prune" + std::to_string(kLayers - 1) + "/loss"));
  ASSERT_OK_AND_ASSIGN(at::Tensor all_losses, Get("prune" + std::to_string(kLayers - 1) + "/losses"));
  EXPECT_EQ(greedy.numel(), 3);
  EXPECT_EQ(all_losses.numel(), 5 + 4);  // two greedy steps
  ASSERT_OK(Run(prune, "prune", kLayers - 1, {{"keep", 3}, {"batch_size", 4}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor best_loss, Get("prune" + std::to_string(kLayers - 1) + "/loss"));
  EXPECT_GE(greedy_loss.item<double>(), best_loss.item<double>() - 1e-9);
  // Export: logits of the model with exactly the chosen experts.
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"prune"}));
  at::Tensor want = EditedLogits([&](int l, model::LayerWeights w) -> std::optional<model::LayerWeights> {
    if (!w.moe) return w;
    std::vector<model::MlpWeights> experts;
    for (int64_t e : chosen[l]) experts.push_back(w.moe->experts[e]);
    w.moe->experts = experts;
    w.moe->router = w.moe->router.index_select(0, at::tensor(chosen[l], at::kLong));
    return w;
  });
  EXPECT_TRUE(at::allclose(ExportedLogits(), want, 1e-5, 1e-5));
}

TEST_P(StructuralTest, ProgressiveExpertPruneChainsThePrunedLayers) {
  Calibrate();
  ExpertPruneStage prune;
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(prune, "prune", l, {{"keep", 3}, {"mode", "progressive"}, {"batch_size", 4}}, {"stats"}));
  }
  // The chain's last output equals running the layers pruned to their chosen experts.
  StageContext ctx;
  ctx.recipe = TestRecipe(recipe_);
  at::Tensor h = *runner_->Embed(*CalibrationTokens(ctx));
  for (int l = 0; l < kLayers; ++l) {
    model::LayerWeights w = *runner_->LoadLayer(l);
    if (w.moe) {
      ASSERT_OK_AND_ASSIGN(at::Tensor kept, Get("prune" + std::to_string(l) + "/kept_experts"));
      std::vector<model::MlpWeights> experts;
      for (int64_t i = 0; i < kept.numel(); ++i) experts.push_back(w.moe->experts[kept[i].item<int64_t>()]);
      w.moe->experts = experts;
      w.moe->router = w.moe->router.index_select(0, kept);
    }
    h = runner_->RunLayer(w, h);
    StageContext read;
    read.io = &io_;
    ASSERT_OK_AND_ASSIGN(at::Tensor chain,
                         ReadChunkedTensor(read, "prune" + std::to_string(l) + "/", "hidden"));
    EXPECT_TRUE(at::allclose(chain, h, 1e-5, 1e-6)) << "layer " << l;
  }
}

// Wanda 2:4 on every routed expert: masks equal quant::WandaMask on statistics captured
// independently, layer l+1 sees the pruned layer l, and the export carries the pruned weights.
TEST_P(StructuralTest, PruneWeightsChainsPrunedLayersAndExports) {
  const model::ModelConfig& c = runner_->config();
  PruneWeightsStage slim;
  const nlohmann::json params = {{"method", "wanda"}, {"sparsity", 0.5}, {"pattern", "2:4"}};
  for (int l = 0; l < kLayers; ++l) ASSERT_OK(Run(slim, "slim", l, params, {}));
  StageContext ctx;
  ctx.recipe = TestRecipe(recipe_);
  at::Tensor h = *runner_->Embed(*CalibrationTokens(ctx));
  for (int l = 0; l < kLayers; ++l) {
    model::LayerWeights w = *runner_->LoadLayer(l);
    // Σ x² of each expert linear's input over the one forward call of the 6 windows.
    struct Inputs : model::ForwardObserver {
      bool WantsLinearInputs(int) const override { return true; }
      void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
        if (id.expert >= 0) sq[{static_cast<int>(id.kind), id.expert}] = x.to(at::kFloat).pow(2).sum(0);
      }
      std::map<std::pair<int, int>, at::Tensor> sq;
    } inputs;
    runner_->RunLayer(w, h, &inputs);
    if (w.moe) {
      for (int e = 0; e < static_cast<int>(w.moe->experts.size()); ++e) {
        for (auto [proj, kind, weight] :
             {std::make_tuple(model::ExpertProj::kGate, model::LinearKind::kExpertGate, &w.moe->experts[e].gate),
              std::make_tuple(model::ExpertProj::kUp, model::LinearKind::kExpertUp, &w.moe->experts[e].up),
              std::make_tuple(model::ExpertProj::kDown, model::LinearKind::kExpertDown, &w.moe->experts[e].down)}) {
          const std::string name = model::ExpertTensorName(c, l, e, proj);
          auto it = inputs.sq.find({static_cast<int>(kind), e});
          const at::Tensor norm2 = it == inputs.sq.end() ? at::zeros({weight->size(1)}) : it->second;
          ASSERT_OK_AND_ASSIGN(at::Tensor mask, quant::WandaMask(*weight, norm2, 0.5, {2, 4}));
          ASSERT_OK_AND_ASSIGN(at::Tensor got, Get("slim" + std::to_string(l) + "/" + name));
          EXPECT_TRUE(at::equal(got, weight->masked_fill(mask, 0))) << name;
          EXPECT_EQ((got == 0).sum().item<int64_t>(), got.numel() / 2) << name;
          *weight = got;
        }
      }
    }
    h = runner_->RunLayer(w, h);
    StageContext read;
    read.io = &io_;
    // Chunked, as every stage of the data plane writes it (expert_parallel.h).
    ASSERT_OK_AND_ASSIGN(at::Tensor chain, ReadChunkedTensor(read, "slim" + std::to_string(l) + "/", "hidden"));
    EXPECT_TRUE(at::allclose(chain, h, 1e-5, 1e-6)) << "layer " << l;
  }
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"slim"}));
  const at::Tensor want = runner_->ApplyHead(*runner_->LoadHead(), h);
  EXPECT_TRUE(at::allclose(ExportedLogits(), want, 1e-5, 1e-5));
  // SparseGPT and magnitude run too and reach their sparsity.
  for (const char* method : {"sparsegpt", "magnitude"}) {
    ASSERT_OK(Run(slim, "slim", 0, {{"method", method}, {"sparsity", 0.5}, {"pattern", "4:8"}}, {}));
    ASSERT_OK_AND_ASSIGN(storage::Factor f, io_.Get("slim0/summary"));
    const nlohmann::json summary = nlohmann::json::parse(f.data);
    for (const auto& [name, info] : summary.items()) {
      EXPECT_GE(info["sparsity"].get<double>(), 0.5) << method << " " << name;
    }
  }
}

// ODP: β is calibrate's median p2/p1, the loss of an enabled layer equals what the exported
// model's forward (reading moec.odp) changes in that layer's MoE output, and the skipped fraction
// equals the routed rows it removes.
TEST_P(StructuralTest, OdpCalibratesLayersTheExportedForwardPrunes) {
  Calibrate();
  const model::ModelConfig& c = runner_->config();
  OdpStage odp;
  ASSERT_OK(Run(odp, "odp", -1, {{"protect_fraction", 0.1}, {"enable_fraction", 0.5}}, {"stats"}));
  ASSERT_OK_AND_ASSIGN(at::Tensor beta, Get("odp/odp_beta"));
  ASSERT_OK_AND_ASSIGN(at::Tensor loss, Get("odp/odp_loss"));
  ASSERT_OK_AND_ASSIGN(at::Tensor skipped, Get("odp/skipped"));
  ASSERT_OK_AND_ASSIGN(at::Tensor enabled, Get("odp/enabled_layers"));
  int moe = 0;
  for (int l = 0; l < kLayers; ++l) {
    if (!c.IsMoeLayer(l)) continue;
    ++moe;
    ASSERT_OK_AND_ASSIGN(at::Tensor median, Get("stats" + std::to_string(l) + "/p2_p1_median"));
    EXPECT_DOUBLE_EQ(beta[l].item<double>(), median.item<double>());
  }
  EXPECT_EQ(enabled.numel(), (moe + 1) / 2);
  ExportStage exporter;
  ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"odp"}));
  ASSERT_OK_AND_ASSIGN(auto exported, model::ModelRunner::Open(dir_.Join("out")));
  ASSERT_EQ(exported->config().moec.odp->enabled_layers.size(), static_cast<size_t>(enabled.numel()));
  // The layer inputs the stage itself used: calibrate's stored hidden states. (A forward of the
  // whole batch at once rounds differently from calibrate's chunked one, which can move a token
  // whose p2/p1 sits at β across the threshold on some CPUs' BLAS kernels.)
  std::vector<at::Tensor> h = Residuals();
  for (int l = 1; l < kLayers; ++l) {
    StageContext read;
    read.io = &io_;
    ASSERT_OK_AND_ASSIGN(h[l], ReadChunkedTensor(read, "stats" + std::to_string(l - 1) + "/", "hidden"));
  }
  struct Capture : model::ForwardObserver {
    bool WantsLinearInputs(int) const override { return true; }
    void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
      if (id.kind == model::LinearKind::kExpertGate) rows += x.size(0);
    }
    void OnMoeOutput(int, const at::Tensor& y) override { outs.push_back(y.clone()); }
    std::vector<at::Tensor> outs;
    int64_t rows = 0;
  };
  for (int64_t i = 0; i < enabled.numel(); ++i) {
    const int l = static_cast<int>(enabled[i].item<int64_t>());
    Capture plain, pruned;
    for (int64_t s = 0; s < 6; s += 8) {
      runner_->RunLayer(*runner_->LoadLayer(l), h[l], &plain);
      exported->RunLayer(*exported->LoadLayer(l), h[l], &pruned);
    }
    double sum = 0;
    for (size_t b = 0; b < plain.outs.size(); ++b) {
      sum += (plain.outs[b] - pruned.outs[b]).to(at::kDouble).norm().item<double>();
    }
    EXPECT_NEAR(loss[l].item<double>(), sum, 1e-5 * sum + 1e-9) << "layer " << l;
    EXPECT_NEAR(skipped[l].item<double>(), 1.0 - static_cast<double>(pruned.rows) / plain.rows, 1e-12);
    EXPECT_GT(pruned.rows, 0);
    EXPECT_LT(pruned.rows, plain.rows) << "ODP pruned nothing in layer " << l;
  }
  // evaluate measures the experts ODP skips: fewer than top-2 per token on average.
  ASSERT_OK_AND_ASSIGN(nlohmann::json r, EvaluateModel(dir_.Join("out"), dir_.Join("calib.txt"), 16, 4, nullptr));
  EXPECT_LT(r["routed_experts_per_token"].get<double>(), 2.0);
  EXPECT_LT(r["activated_parameters_measured"].get<int64_t>(), r["activated_parameters"].get<int64_t>());
}

// HQQ-packed exports (1-bit and 3-bit experts, 4-bit attention) load in moec's forward with
// exactly the weights (q - fp16 zero) * fp16 scale of the stage's codes, and run.
TEST_P(StructuralTest, HqqExportLoadsThePackedCodes) {
  const model::ModelConfig& c = runner_->config();
  for (int bits : {1, 3}) {
    QuantizeStage rtn(/*gptq=*/false);
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_OK(Run(rtn, "quant", l, {{"bits", bits}, {"attn_bits", 4}, {"group_size", 8}}, {}));
    }
    ExportStage exporter;
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "hqq"}}, {"quant"}));
    ASSERT_OK_AND_ASSIGN(auto packed, model::ModelRunner::Open(dir_.Join("out")));
    ASSERT_EQ(packed->config().quantization->quant_method, "hqq");
    for (int l = 0; l < kLayers; ++l) {
      if (!c.IsMoeLayer(l)) continue;
      ASSERT_OK_AND_ASSIGN(model::LayerWeights w, packed->LoadLayer(l));
      const std::string name = model::ExpertTensorName(c, l, 1, model::ExpertProj::kDown);
      const std::string key = "quant" + std::to_string(l) + "/" + name;
      ASSERT_OK_AND_ASSIGN(at::Tensor q, Get(key + ".q"));
      ASSERT_OK_AND_ASSIGN(at::Tensor s, Get(key + ".scales"));
      ASSERT_OK_AND_ASSIGN(at::Tensor z, Get(key + ".zeros"));
      const at::Tensor g = at::arange(q.size(1), at::kLong).div(8, "floor");
      const at::Tensor want = (q.to(at::kFloat) - z.to(at::kHalf).to(at::kFloat).index_select(1, g)) *
                              s.to(at::kHalf).to(at::kFloat).index_select(1, g);
      EXPECT_TRUE(at::equal(w.moe->experts[1].down, want)) << bits << " bits, layer " << l;
    }
    StageContext ctx;
    ctx.recipe = TestRecipe(recipe_);
    ASSERT_OK_AND_ASSIGN(at::Tensor logits, packed->Forward(*CalibrationTokens(ctx)));
    EXPECT_TRUE(logits.isfinite().all().item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, StructuralTest, ::testing::Values("mixtral", "deepseek"));

}  // namespace
}  // namespace moec::stages
