// The decoder-layer building blocks against hand-computed values: RMSNorm, RoPE, blocked causal
// attention and routing (top-k, dynamic skipping, ODP). The blocks assembled into a model:
// forward_test.cc.
#include "model/runtime/layers.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace moec::model {
namespace {

TEST(LayersTest, RmsNormMatchesDefinition) {
  at::Tensor x = at::tensor({3.0f, 4.0f}).view({1, 2});
  at::Tensor w = at::tensor({1.0f, 2.0f});
  // mean(x^2) = 12.5; 1/sqrt(12.5 + 0.5) = 1/sqrt(13).
  at::Tensor y = RmsNorm(x, w, 0.5);
  EXPECT_NEAR(y[0][0].item<float>(), 3.0 / std::sqrt(13.0), 1e-6);
  EXPECT_NEAR(y[0][1].item<float>(), 8.0 / std::sqrt(13.0), 1e-6);
}

TEST(LayersTest, RopeRotatesPairsByPositionTimesFrequency) {
  // head_dim 4: frequencies 1 and theta^-0.5 = 0.01 for theta 10000.
  RopeTables rope = MakeRopeTables(3, 4, 10000.0);
  at::Tensor q = at::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 1, 1, 4}).repeat({1, 1, 3, 1});
  at::Tensor r = ApplyRope(q, rope);
  for (int pos = 0; pos < 3; ++pos) {
    const double a = pos * 1.0, b = pos * 0.01;
    // Pairs (x0, x2) and (x1, x3) rotate: x0' = x0 cos a - x2 sin a, x2' = x2 cos a + x0 sin a.
    EXPECT_NEAR(r[0][0][pos][0].item<float>(), 1 * std::cos(a) - 3 * std::sin(a), 1e-5);
    EXPECT_NEAR(r[0][0][pos][2].item<float>(), 3 * std::cos(a) + 1 * std::sin(a), 1e-5);
    EXPECT_NEAR(r[0][0][pos][1].item<float>(), 2 * std::cos(b) - 4 * std::sin(b), 1e-5);
    EXPECT_NEAR(r[0][0][pos][3].item<float>(), 4 * std::cos(b) + 2 * std::sin(b), 1e-5);
  }
}

// Full-matrix causal attention (no blocking), as transformers' eager attention writes it.
TEST(LayersTest, BlockedAttentionMatchesFullMatrixAttentionOnLongSequences) {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.rms_norm_eps = 1e-6;
  at::manual_seed(5);
  AttentionWeights w;
  w.q = at::randn({16, 16}) * 0.3;
  w.k = at::randn({8, 16}) * 0.3;
  w.v = at::randn({8, 16}) * 0.3;
  w.o = at::randn({16, 16}) * 0.3;
  const int64_t batch = 2, seq = 600;  // three query blocks, the last one partial
  at::Tensor x = at::randn({batch, seq, 16});
  RopeTables rope = MakeRopeTables(seq, 4, 10000.0);
  AttentionOutput fast = Attention(c, 0, w, x, rope, /*want_column_statistic=*/true, nullptr);

  at::Tensor q = ApplyRope(at::linear(x, w.q).view({batch, seq, 4, 4}).transpose(1, 2), rope);
  at::Tensor k = ApplyRope(at::linear(x, w.k).view({batch, seq, 2, 4}).transpose(1, 2), rope);
  at::Tensor v = at::linear(x, w.v).view({batch, seq, 2, 4}).transpose(1, 2);
  k = k.repeat_interleave(2, 1);
  v = v.repeat_interleave(2, 1);
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / 2.0;
  scores = scores.masked_fill(at::ones({seq, seq}, at::kBool).triu(1), -INFINITY);
  at::Tensor probs = at::softmax(scores, -1);
  at::Tensor ref = at::linear(
      at::matmul(probs, v).transpose(1, 2).reshape({batch, seq, 16}), w.o);
  EXPECT_TRUE(at::allclose(fast.output, ref, 1e-4, 1e-5))
      << (fast.output - ref).abs().max().item<float>();
  // Column statistic: head-mean column sums over the queries that see each key, / (S - t).
  at::Tensor col = probs.mean(1).sum(1);
  for (int64_t t = 0; t < seq; t += 97) {
    EXPECT_NEAR(fast.column_statistic[1][t].item<float>(),
                col[1][t].item<float>() / (seq - t), 1e-5);
  }
}

// Router with logits equal to x itself (identity matrix), so probabilities are softmax(x).
Routing RouteLogits(const std::vector<std::vector<float>>& logits, const RoutingRule& rule,
                    const at::Tensor& importance = {}, int64_t seq = 0) {
  const int64_t t = logits.size(), e = logits[0].size();
  at::Tensor x = at::empty({t, e});
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < e; ++j) x[i][j] = logits[i][j];
  }
  return Route(at::eye(e), x, rule, importance, seq == 0 ? t : seq);
}

TEST(LayersTest, RouteTopKRenormalizesLikeMixtral) {
  RoutingRule rule;  // top-2, renormalize
  const float l2 = std::log(2.0f);
  Routing r = RouteLogits({{0.0f, l2, -1.0f, -100.0f}}, rule);
  // p ~ (1, 2, e^-1, 0) / (3 + e^-1): expert 1 first, then expert 0.
  EXPECT_EQ(r.experts[0][0].item<int64_t>(), 1);
  EXPECT_EQ(r.experts[0][1].item<int64_t>(), 0);
  EXPECT_NEAR(r.weights[0][0].item<float>(), 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(r.weights[0][1].item<float>(), 1.0 / 3.0, 1e-6);
  rule.renormalize = false;  // DeepSeek: raw softmax probabilities
  r = RouteLogits({{0.0f, l2, -1.0f, -100.0f}}, rule);
  const double z = 3.0 + std::exp(-1.0);
  EXPECT_NEAR(r.weights[0][0].item<float>(), 2.0 / z, 1e-6);
  EXPECT_NEAR(r.weights[0][1].item<float>(), 1.0 / z, 1e-6);
}

TEST(LayersTest, DynamicSkippingDropsSecondExpertBelowBetaTimesFirst) {
  RoutingRule rule;
  rule.skip_beta = 0.6;
  const float l2 = std::log(2.0f);
  // Token 0: p2/p1 = 0.5 < 0.6 -> skipped, weight 1.0 on the first. Token 1: ratio 1 -> kept.
  Routing r = RouteLogits({{0.0f, l2, -100.0f, -100.0f}, {0.0f, 0.0f, -100.0f, -100.0f}}, rule);
  EXPECT_FALSE(r.kept[0][1].item<bool>());
  EXPECT_NEAR(r.weights[0][0].item<float>(), 1.0, 1e-6);
  EXPECT_NEAR(r.weights[0][1].item<float>(), 0.0, 1e-9);
  EXPECT_TRUE(r.kept[1][1].item<bool>());
  EXPECT_NEAR(r.weights[1][1].item<float>(), 0.5, 1e-6);
  rule.skip_beta = 0.5;  // p2 = 0.5 p1 is not below beta * p1: kept
  r = RouteLogits({{0.0f, l2, -100.0f, -100.0f}}, rule);
  EXPECT_TRUE(r.kept[0][1].item<bool>());
}

TEST(LayersTest, OdpProtectsMostImportantAndDropsLeastImportantTokens) {
  RoutingRule rule;
  rule.odp = true;
  rule.odp_beta = 0.9;  // every token below skips its second expert...
  rule.tau_high = 0.25;  // ...except the most important of 4 (floor(0.25 * 4) = 1)
  rule.tau_low = 0.25;   // and the least important one skips both
  const float l2 = std::log(2.0f);
  std::vector<std::vector<float>> logits(4, {0.0f, l2, -100.0f, -100.0f});
  at::Tensor importance = at::tensor({0.3f, 0.1f, 0.9f, 0.5f});
  Routing r = RouteLogits(logits, rule, importance, 4);
  EXPECT_TRUE(r.kept[2][1].item<bool>());   // protected
  EXPECT_FALSE(r.kept[0][1].item<bool>());  // rule 1
  EXPECT_FALSE(r.kept[1][0].item<bool>());  // least important: nothing routed
  EXPECT_FALSE(r.kept[1][1].item<bool>());
  EXPECT_NEAR(r.weights[1][0].item<float>(), 0.0, 1e-9);
  EXPECT_NEAR(r.weights[2][0].item<float>(), 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(r.weights[3][0].item<float>(), 1.0, 1e-6);
}

}  // namespace
}  // namespace moec::model
