// expert_drop, layer_drop and block_drop against direct computations on a plain forward, and
// their exports against the original model run with the same edits applied by hand. (expert_prune,
// prune_weights, odp and hqq exports: structural_prune_test.cc.)
#include "stages/structural_stages.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dataplane/model_inputs.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "stages/export_stage.h"
#include "stages/structural_stages_test_util.h"
#include "tests/testing/status_matchers.h"

namespace moec::stages {

using dataplane::CalibrationTokens;
using dataplane::TestRecipe;

namespace {

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

INSTANTIATE_TEST_SUITE_P(Arch, StructuralTest, ::testing::Values("mixtral", "deepseek"));

}  // namespace
}  // namespace moec::stages
