// expert_prune and prune_weights against direct computations on a plain forward (exhaustive
// recomputation, the pruned chain, Wanda masks), and the exports of pruned models, of ODP and of
// HQQ-packed codes against the original model with the same edits applied by hand. (The fixture:
// structural_stages_test_util.h; its instantiation: structural_stages_test.cc.)
#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "dataplane/model_inputs.h"
#include "gtest/gtest.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "quant/sparse.h"
#include "stages/evaluate_stage.h"
#include "stages/expert_prune_stage.h"
#include "stages/export_stage.h"
#include "stages/odp_stage.h"
#include "stages/prune_weights_stage.h"
#include "stages/quantize_stage.h"
#include "stages/stored_codes.h"
#include "stages/structural_stages_test_util.h"
#include "tests/testing/status_matchers.h"

namespace moec::stages {

using dataplane::CalibrationTokens;
using dataplane::ReadChunkedTensor;
using dataplane::TestRecipe;

namespace {

// The best drop set of an exhaustive recomputation: its index in lexicographic order (-1: none)
// and the experts it keeps.
struct ExhaustiveBest {
  int index = -1;
  std::vector<int64_t> kept;
};

// Expects expert_prune's `losses` of layer `l` (weights `w`, input `h`: 6 windows of 16 tokens)
// to equal, for every drop set of 2 of the 5 experts, the masked MoE block re-run on the batches
// of 4 windows captured from the plain layer; returns the best set.
ExhaustiveBest RecomputeDropSets(const model::ModelRunner& runner, int l,
                                 const model::LayerWeights& w, const at::Tensor& h,
                                 const at::Tensor& losses) {
  const model::ModelConfig& c = runner.config();
  model::RoutingRule rule = model::RoutingRuleFor(c, l);
  // Batches of 4 windows: MoE input and original output, captured from the plain layer.
  struct Cap : model::ForwardObserver {
    void OnMoeInput(int, const at::Tensor& x) override { xs.push_back(x.clone()); }
    void OnMoeOutput(int, const at::Tensor& z) override { zs.push_back(z.clone()); }
    std::vector<at::Tensor> xs, zs;
  } cap;
  for (int64_t s = 0; s < 6; s += 4) runner.RunLayer(w, h.narrow(0, s, std::min<int64_t>(4, 6 - s)), &cap);
  int index = 0;
  double best_loss = 1e300;
  ExhaustiveBest best;
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
      if (loss < best_loss) best_loss = loss, best.index = index, best.kept = ids;
    }
  }
  return best;
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
    const ExhaustiveBest best = RecomputeDropSets(*runner_, l, w, h[l], losses);
    ASSERT_GE(best.index, 0);
    EXPECT_EQ(std::vector<int64_t>(kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + kept.numel()),
              best.kept) << "layer " << l;
    chosen[l] = best.kept;
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
          // Stored as its mask over the checkpoint's matrix (dataplane::kPrunedMaskSuffix).
          ASSERT_OK_AND_ASSIGN(at::Tensor packed, Get("slim" + std::to_string(l) + "/" + name + ".mask"));
          EXPECT_TRUE(at::equal(packed, quant::PackMask(mask))) << name;
          ASSERT_OK_AND_ASSIGN(at::Tensor got, quant::ApplyPackedMask(weight->to(at::kFloat).clone(), packed));
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
      ASSERT_OK_AND_ASSIGN(at::Tensor packed_codes, Get(key + kStoredCodesSuffix));
      ASSERT_OK_AND_ASSIGN(at::Tensor s, Get(key + ".scales"));
      ASSERT_OK_AND_ASSIGN(at::Tensor q,
                           UnpackStoredCodes(packed_codes, w.moe->experts[1].down.size(1), bits));
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

}  // namespace
}  // namespace moec::stages
