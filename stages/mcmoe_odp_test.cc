// MC-MoE's online dynamic pruning, checked against direct computations on tiny random models: the
// odp stage's β equals the median p2/p1 of the router, and the exported forward prunes exactly
// the second experts a direct application of ODP's rules selects. (The fixture and its
// instantiation: mcmoe_export_test_util.h, mcmoe_export_test.cc.)
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"
#include "stages/calibrate_stage.h"
#include "stages/export_stage.h"
#include "stages/mcmoe_export_test_util.h"
#include "stages/odp_stage.h"
#include "tests/testing/status_matchers.h"

namespace moec::stages {
namespace {

// Router probabilities of `x` [tokens, hidden] under `router`: fp32 softmax.
at::Tensor Probabilities(const at::Tensor& x, const at::Tensor& router) {
  return at::softmax(at::linear(x.to(at::kFloat), router.to(at::kFloat)), -1);
}

// Collects, per layer, the residual entering it, the MoE input and the rows routed to experts.
struct Trace : model::ForwardObserver {
  bool WantsLinearInputs(int) const override { return true; }
  void OnLayerInput(int layer, const at::Tensor& h) override { residual[layer] = h.clone(); }
  void OnMoeInput(int layer, const at::Tensor& x) override { moe_input[layer] = x.clone(); }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
    if (id.kind == model::LinearKind::kExpertGate) rows[id.layer] += x.size(0);
  }
  std::map<int, at::Tensor> residual, moe_input;
  std::map<int, int64_t> rows;
};

// The lower median of p2/p1 over the rows of `x` under `router`.
float MedianRatio(const at::Tensor& x, const at::Tensor& router) {
  at::Tensor top = std::get<0>(Probabilities(x, router).topk(2, -1));
  std::vector<float> ratio(top.size(0));
  for (int64_t t = 0; t < top.size(0); ++t) ratio[t] = top[t][1].item<float>() / top[t][0].item<float>();
  std::sort(ratio.begin(), ratio.end());
  return ratio[(ratio.size() - 1) / 2];
}

// a_t of every token of the residual `h` [batch, seq, hidden] entering layer `l` (weights `w`):
// 1 / (S − t) with the positional prior, else the column-sum attention statistic.
at::Tensor TokenAttention(const model::ModelConfig& c, int l, const model::LayerWeights& w,
                          const at::Tensor& h, bool positional) {
  const int64_t batch = h.size(0), seq = h.size(1);
  if (positional) return (1.0 / at::arange(seq, 0, -1, at::kLong).to(at::kDouble)).repeat({batch});
  const model::RopeTables rope = model::MakeRopeTables(seq, c.head_dim, c.rope_theta);
  return model::Attention(c, l, w.attention, model::RmsNorm(h, w.input_norm, c.rms_norm_eps), rope,
                          /*want_column_statistic=*/true, nullptr)
      .column_statistic.reshape(-1)
      .to(at::kDouble);
}

// The experts ODP's rules drop in sequence `b` ([seq] tokens from row b * seq): second..k-th
// experts (probabilities `top`) with p_j < β·p_1, unless the token is among the `high` most
// important (importance `l1` · `a`).
int64_t DroppedInSequence(int64_t b, int64_t seq, int64_t high, int k, const at::Tensor& l1,
                          const at::Tensor& a, const at::Tensor& top, double beta) {
  // Least to most important, ties by position; the last `high` are protected.
  std::vector<int64_t> order(seq);
  std::iota(order.begin(), order.end(), 0);
  std::vector<double> importance(seq);
  for (int64_t t = 0; t < seq; ++t) {
    importance[t] = static_cast<float>(l1[b * seq + t].item<double>()) *
                    static_cast<float>(a[b * seq + t].item<double>());
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t i, int64_t j) { return importance[i] < importance[j]; });
  std::vector<bool> keep(seq, false);
  for (int64_t i = seq - high; i < seq; ++i) keep[order[i]] = true;
  int64_t dropped = 0;
  for (int64_t t = 0; t < seq; ++t) {
    if (keep[t]) continue;
    const float p1 = top[b * seq + t][0].item<float>();
    for (int j = 1; j < k; ++j) {
      // As the forward compares: p_j >= p_1 · β in fp32 keeps expert j.
      if (top[b * seq + t][j].item<float>() < p1 * static_cast<float>(beta)) ++dropped;
    }
  }
  return dropped;
}

// The routed rows ODP (β `beta`, protecting the floor(`protect`·S) most important tokens of each
// sequence) removes from layer `l` (weights `w`) of the model `c`, whose residual is `h` and MoE
// input `x`.
int64_t DroppedByHand(const model::ModelConfig& c, int l, const model::LayerWeights& w,
                      const at::Tensor& h, const at::Tensor& x, double beta, double protect,
                      bool positional) {
  const int k = c.NumActiveExperts(l);
  const int64_t batch = h.size(0), seq = h.size(1);
  const at::Tensor a = TokenAttention(c, l, w, h, positional);
  const at::Tensor l1 = x.to(at::kFloat).abs().sum(-1).to(at::kDouble);
  const at::Tensor top = std::get<0>(Probabilities(x, w.moe->router).topk(k, -1));
  const int64_t high = static_cast<int64_t>(std::floor(protect * seq));
  int64_t dropped = 0;
  for (int64_t b = 0; b < batch; ++b) dropped += DroppedInSequence(b, seq, high, k, l1, a, top, beta);
  return dropped;
}

// The odp stage's β is the lower median of p2/p1 over the calibration tokens (computed here from
// the router), its export parses, and in every enabled layer the exported forward runs exactly
// the routed rows left after applying ODP's rules by hand: second..k-th experts with
// p_j < β·p_1 dropped unless the token is among the floor(τ_h·S) most important of its sequence
// (importance ‖x_t‖_1 · a_t; a_t the column-sum attention statistic, or 1 / (S − t)).
TEST_P(McMoeExportTest, OdpBetaAndPrunedExpertsMatchADirectCount) {
  const model::ModelConfig& c = runner_->config();
  CalibrateStage calibrate;
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_OK(Run(calibrate, "stats", l, {{"batch_size", 4}}, {}, dir_.Join("unused")));
  }
  Trace original;
  ASSERT_OK(runner_->Forward(Tokens(), &original).status());
  for (bool positional : {false, true}) {
    SCOPED_TRACE(positional ? "positional prior" : "column-sum statistic");
    const double protect = 0.15;  // floor(0.15 * 16) = 2 protected tokens per sequence
    OdpStage odp;
    ASSERT_OK(Run(odp, "odp", -1,
                  {{"protect_fraction", protect}, {"enable_fraction", 1.0}, {"odp_positional_prior", positional}},
                  {"stats"}, dir_.Join("unused")));
    ASSERT_OK_AND_ASSIGN(at::Tensor beta, Get("odp/odp_beta"));
    ASSERT_OK_AND_ASSIGN(at::Tensor enabled, Get("odp/enabled_layers"));
    int moe = 0;
    for (int l = 0; l < kLayers; ++l) {
      if (!c.IsMoeLayer(l)) {
        EXPECT_TRUE(std::isnan(beta[l].item<double>()));
        continue;
      }
      ++moe;
      ASSERT_OK_AND_ASSIGN(model::LayerWeights w, runner_->LoadLayer(l));
      EXPECT_NEAR(beta[l].item<double>(), MedianRatio(original.moe_input.at(l), w.moe->router), 1e-6)
          << "layer " << l;
    }
    ASSERT_EQ(enabled.numel(), moe);  // enable_fraction 1: every MoE layer

    ExportStage exporter;
    ASSERT_OK(Run(exporter, "out", -1, {{"format", "hf"}}, {"odp"}, dir_.Join("odp")));
    ASSERT_OK_AND_ASSIGN(auto exported, model::ModelRunner::Open(dir_.Join("odp")));
    const model::OdpSettings& s = *exported->config().moec.odp;
    EXPECT_EQ(s.enabled_layers.size(), static_cast<size_t>(moe));
    EXPECT_DOUBLE_EQ(s.tau_high, protect);
    EXPECT_EQ(s.positional_prior, positional);
    Trace pruned;
    ASSERT_OK(exported->Forward(Tokens(), &pruned).status());
    int64_t total_dropped = 0;
    for (int l : s.enabled_layers) {
      EXPECT_DOUBLE_EQ(s.beta[l].value_or(-1), beta[l].item<double>());
      ASSERT_OK_AND_ASSIGN(model::LayerWeights w, exported->LoadLayer(l));
      const at::Tensor x = pruned.moe_input.at(l);
      const int64_t dropped = DroppedByHand(c, l, w, pruned.residual.at(l), x,
                                            beta[l].item<double>(), protect, positional);
      EXPECT_EQ(x.size(0) * c.NumActiveExperts(l) - pruned.rows.at(l), dropped) << "layer " << l;
      total_dropped += dropped;
    }
    EXPECT_GT(total_dropped, 0) << "ODP pruned nothing";
  }
}

}  // namespace
}  // namespace moec::stages
