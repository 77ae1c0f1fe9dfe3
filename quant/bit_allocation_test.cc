#include "quant/bit_allocation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

using ::moec::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Scope = AllocationOptions::Scope;
using Granularity = AllocationOptions::Granularity;

// Random factors shaped like MC-MoE's: skewed routing counts (some experts unused when
// `zeros`), routing mass correlated with the counts, and losses that fall with the width
// (or, when `monotone` is false, arbitrary positive losses).
std::vector<LayerFactors> RandomFactors(std::mt19937_64& rng, int layers, int min_e, int max_e,
                                        size_t num_bits, bool monotone, bool zeros) {
  std::uniform_int_distribution<int> experts(min_e, max_e);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::lognormal_distribution<double> skew(0.0, 1.0);
  std::vector<LayerFactors> out;
  for (int l = 0; l < layers; ++l) {
    LayerFactors f;
    f.layer = l + 1;
    const int e = experts(rng);
    for (int x = 0; x < e; ++x) {
      const bool unused = zeros && u(rng) < 0.15;
      const int64_t count = unused ? 0 : 1 + static_cast<int64_t>(skew(rng) * 5000);
      f.frequency.push_back(count);
      f.weight.push_back(unused ? 0.0 : count * (0.3 + 0.4 * u(rng)));
      std::vector<double> q(num_bits);
      double level = std::exp(3 * u(rng));
      for (size_t i = 0; i < num_bits; ++i) {
        q[i] = monotone ? level : 0.01 + 10 * u(rng);
        level /= 1.5 + 6 * u(rng);
      }
      f.loss.push_back(q);
    }
    if (f.frequency[0] == 0) {  // keep the layer's sums positive
      f.frequency[0] = 17;
      f.weight[0] = 9.5;
    }
    out.push_back(std::move(f));
  }
  return out;
}

// The cost of an allocation computed independently of the library.
double Objective(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                 const std::vector<std::vector<int>>& bits) {
  double total = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    double fs = 0, as = 0;
    for (size_t e = 0; e < layers[l].frequency.size(); ++e) {
      fs += layers[l].frequency[e];
      as += layers[l].weight[e];
    }
    for (size_t e = 0; e < bits[l].size(); ++e) {
      const size_t i = std::find(o.bits.begin(), o.bits.end(), bits[l][e]) - o.bits.begin();
      total += std::pow(layers[l].frequency[e] / fs, o.alpha) *
               std::pow(layers[l].weight[e] / as, o.beta) * std::pow(layers[l].loss[e][i], o.gamma);
    }
  }
  return total;
}

// Checks every constraint of the program on `a`, independently of the library.
void ExpectValid(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                 const Allocation& a, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(a.bits.size(), layers.size());
  std::vector<int> sorted = o.bits;
  std::sort(sorted.rbegin(), sorted.rend());
  const bool require = o.require_top_and_middle.value_or(o.granularity == Granularity::kExpert);
  const bool need_top = require && sorted.size() >= 2, need_mid = require && sorted.size() >= 3;
  int64_t model_total = 0, model_experts = 0;
  bool any_top = false, any_mid = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& b = a.bits[l];
    ASSERT_EQ(b.size(), layers[l].frequency.size());
    int64_t total = 0;
    bool top = false, mid = false;
    for (int w : b) {
      EXPECT_NE(std::find(o.bits.begin(), o.bits.end(), w), o.bits.end()) << w;
      total += w;
      top |= w == sorted[0];
      mid |= sorted.size() >= 2 && w == sorted[1];
    }
    any_top |= top;
    any_mid |= mid;
    if (o.granularity == Granularity::kLayer) {
      EXPECT_EQ(std::count(b.begin(), b.end(), b[0]), static_cast<int64_t>(b.size()));
    } else {
      EXPECT_TRUE(top || !need_top) << "layer " << l;
      EXPECT_TRUE(mid || !need_mid) << "layer " << l;
    }
    if (o.scope == Scope::kLayer) {
      const int64_t e = b.size();
      const int64_t budget =
          o.layer_budget
              ? *o.layer_budget
              : static_cast<int64_t>(std::floor(*o.average_bits * e + 1e-9 * *o.average_bits * e));
      EXPECT_LE(total, budget) << "layer " << l;
      EXPECT_EQ(a.budget_bits[l], budget);
    }
    model_total += total;
    model_experts += b.size();
  }
  const bool per_layer_width = o.granularity == Granularity::kLayer;
  EXPECT_TRUE(any_top || !(per_layer_width && need_top));
  EXPECT_TRUE(any_mid || !(per_layer_width && need_mid));
  if (o.scope == Scope::kModel) {
    ASSERT_EQ(a.budget_bits.size(), 1u);
    const int64_t budget =
        o.layer_budget ? *o.layer_budget * static_cast<int64_t>(layers.size())
                       : static_cast<int64_t>(std::floor(*o.average_bits * model_experts +
                                                         1e-9 * *o.average_bits * model_experts));
    EXPECT_EQ(a.budget_bits[0], budget);
    EXPECT_LE(model_total, budget);
  }
  EXPECT_EQ(a.total_bits, model_total);
  EXPECT_DOUBLE_EQ(a.average_bits, static_cast<double>(model_total) / model_experts);
  const double expected = Objective(layers, o, a.bits);
  EXPECT_NEAR(a.objective, expected, 1e-12 * std::max(1.0, std::abs(expected)));
}

bool SameObjective(double x, double y) {
  return std::abs(x - y) <= 1e-9 * std::max(std::abs(x), std::abs(y)) + 1e-300;
}

TEST(BitAllocationTest, CbcMatchesExhaustiveSearchOnRandomInstances) {
  std::mt19937_64 rng(20241006);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int solved[2][2] = {{0, 0}, {0, 0}};  // [scope][granularity] calls compared
  int rejected = 0, skipped = 0;
  for (int instance = 0; instance < 60; ++instance) {
    const bool wide = instance % 5 == 4;  // bits {4,2,8,3}: other widths, unsorted
    const std::vector<int> bits = wide ? std::vector<int>{4, 2, 8, 3} : std::vector<int>{1, 2, 3};
    const int b_min = wide ? 2 : 1, b_max = wide ? 8 : 3;
    const int layers = wide ? 2 : 2 + instance % 2;
    auto factors = RandomFactors(rng, layers, 4, layers == 2 ? 6 : 5, bits.size(),
                                 /*monotone=*/instance % 3 != 2, /*zeros=*/instance % 4 == 1);
    int64_t experts = 0, min_e = 1 << 30, max_e = 0;
    for (const auto& f : factors) {
      const int64_t e = f.frequency.size();
      experts += e;
      min_e = std::min(min_e, e);
      max_e = std::max(max_e, e);
    }
    for (Scope scope : {Scope::kLayer, Scope::kModel}) {
      for (Granularity gran : {Granularity::kExpert, Granularity::kLayer}) {
        for (int require = -1; require <= 1; ++require) {
          AllocationOptions o;
          o.bits = bits;
          o.scope = scope;
          o.granularity = gran;
          if (require >= 0) o.require_top_and_middle = require == 1;
          if (instance % 7 == 3) {  // other exponents
            o.alpha = 0.5 + u(rng);
            o.beta = 2 * u(rng);
            o.gamma = 0.5 + 1.5 * u(rng);
          }
          if (instance % 3 == 0) {  // K in [max_e * b_min - 1, min_e * b_max + 1]
            const int64_t lo = max_e * b_min - 1, hi = min_e * b_max + 1;
            o.layer_budget = lo + static_cast<int64_t>(u(rng) * (hi - lo + 1));
          } else {
            o.average_bits = instance % 8 == 5   ? b_max
                             : instance % 8 == 6 ? b_min
                                                 : b_min + (b_max - b_min) * u(rng);
          }
          const int64_t units = gran == Granularity::kLayer ? (scope == Scope::kModel ? layers : 1)
                                : scope == Scope::kModel    ? experts
                                                            : max_e;
          if (std::pow(bits.size(), units) > (1 << 22)) {
            ++skipped;
            continue;
          }
          const std::string what =
              absl::StrCat("instance ", instance, " scope ", static_cast<int>(scope),
                           " granularity ", static_cast<int>(gran), " require ", require);
          auto cbc = AllocateBits(factors, o);
          auto exhaustive = AllocateBitsExhaustive(factors, o);
          ASSERT_EQ(cbc.status().code(), exhaustive.status().code())
              << what << ": " << cbc.status() << " vs " << exhaustive.status();
          if (!cbc.ok()) {
            // Only budget errors are expected here: out of range (layer_budget) or too small.
            EXPECT_THAT(cbc.status().code(),
                        ::testing::AnyOf(absl::StatusCode::kInvalidArgument,
                                         absl::StatusCode::kFailedPrecondition))
                << what << ": " << cbc.status();
            ++rejected;
            continue;
          }
          ++solved[static_cast<int>(scope)][static_cast<int>(gran)];
          EXPECT_TRUE(cbc->proven_optimal) << what;
          ExpectValid(factors, o, *cbc, what + " cbc");
          ExpectValid(factors, o, *exhaustive, what + " exhaustive");
          EXPECT_TRUE(SameObjective(cbc->objective, exhaustive->objective))
              << what << ": cbc " << cbc->objective << " exhaustive " << exhaustive->objective;
        }
      }
    }
  }
  std::cout << "cross-checked calls (scope layer/model x granularity expert/layer): "
            << solved[0][0] << " " << solved[0][1] << " " << solved[1][0] << " " << solved[1][1]
            << "; rejected budgets " << rejected << "; skipped (too large) " << skipped << "\n";
  for (auto& row : solved) {
    for (int n : row) EXPECT_GE(n, 40);
  }
  EXPECT_GT(rejected, 10);
}

// One layer, f and a uniform, so the cost is proportional to Q; budget K = 8 for 4 experts.
std::vector<LayerFactors> HandCase() {
  LayerFactors l;
  l.frequency = {7, 7, 7, 7};
  l.weight = {2, 2, 2, 2};
  l.loss = {{100, 10, 1}, {50, 20, 2}, {8, 4, 3}, {6, 5, 4}};
  return {l};
}

TEST(BitAllocationTest, HandSolvedCaseWithTopAndMiddle) {
  // With one expert at 3 and one at 2 required, total <= 8: (2,3,2,1) costs 10+2+4+6 = 22,
  // better than the greedy-looking (3,2,2,1) = 31. c = 0.25 * 0.25^1.5 * Q = Q / 32.
  AllocationOptions o;
  o.layer_budget = 8;
  for (auto solve : {AllocateBits, AllocateBitsExhaustive}) {
    ASSERT_OK_AND_ASSIGN(Allocation a, solve(HandCase(), o));
    EXPECT_THAT(a.bits, ElementsAre(ElementsAre(2, 3, 2, 1)));
    EXPECT_DOUBLE_EQ(a.objective, 22.0 / 32);
    EXPECT_EQ(a.total_bits, 8);
    EXPECT_DOUBLE_EQ(a.average_bits, 2.0);
    EXPECT_THAT(a.budget_bits, ElementsAre(8));
    EXPECT_TRUE(a.proven_optimal);
  }
  // Without the constraint two experts take 3 bits: (3,3,1,1) = 1+2+8+6 = 17.
  o.require_top_and_middle = false;
  ASSERT_OK_AND_ASSIGN(Allocation free, AllocateBits(HandCase(), o));
  EXPECT_THAT(free.bits, ElementsAre(ElementsAre(3, 3, 1, 1)));
  EXPECT_DOUBLE_EQ(free.objective, 17.0 / 32);
  // average_bits 2.0 is the same budget.
  o.layer_budget.reset();
  o.average_bits = 2.0;
  ASSERT_OK_AND_ASSIGN(Allocation avg, AllocateBits(HandCase(), o));
  EXPECT_EQ(avg.bits, free.bits);
}

TEST(BitAllocationTest, HandSolvedNormalizationAndExponents) {
  // f = (0.75, 0.25), a = (0.25, 0.75); bits {1,2}, average 1.5 -> 3 bits.
  LayerFactors l;
  l.frequency = {300, 100};
  l.weight = {10, 30};
  l.loss = {{4, 1}, {2, 1}};
  AllocationOptions o;
  o.bits = {1, 2};
  o.average_bits = 1.5;
  ASSERT_OK_AND_ASSIGN(Allocation a, AllocateBits({l}, o));
  EXPECT_THAT(a.bits, ElementsAre(ElementsAre(2, 1)));
  EXPECT_NEAR(a.objective, 0.75 * std::pow(0.25, 1.5) * 1 + 0.25 * std::pow(0.75, 1.5) * 2, 1e-15);
  // alpha = 0, beta = 0, gamma = 1 with losses (4,1),(9,1): (1,2)=5 beats (2,1)=10.
  o.alpha = 0;
  o.beta = 0;
  l.loss = {{4, 1}, {9, 1}};
  ASSERT_OK_AND_ASSIGN(Allocation b, AllocateBits({l}, o));
  EXPECT_THAT(b.bits, ElementsAre(ElementsAre(1, 2)));
  EXPECT_DOUBLE_EQ(b.objective, 5.0);
  o.gamma = 0;  // every cost is 1: any allocation is optimal, objective 2
  ASSERT_OK_AND_ASSIGN(Allocation c, AllocateBits({l}, o));
  EXPECT_DOUBLE_EQ(c.objective, 2.0);
}

TEST(BitAllocationTest, AverageBudgetIsFlooredToWholeBits) {
  std::mt19937_64 rng(7);
  AllocationOptions o;
  o.require_top_and_middle = false;
  for (auto [experts, average, budget] :
       {std::tuple<int, double, int64_t>{10, 2.3, 23},  // 2.3 * 10 = 22.999999999999996
        {8, 2.3, 18},                                   // 18.4 -> 18
        {8, 2.375, 19},
        {8, 2.49, 19},  // 19.92 -> 19, never rounded up
        {6, 1.0, 6}}) {
    auto f = RandomFactors(rng, 1, experts, experts, 3, true, false);
    o.average_bits = average;
    ASSERT_OK_AND_ASSIGN(Allocation a, AllocateBits(f, o));
    EXPECT_THAT(a.budget_bits, ElementsAre(budget)) << average << " x " << experts;
    EXPECT_EQ(a.total_bits, budget) << "losses fall with width, so the budget is spent";
  }
  // Scope model: floor over all experts, 2.3 * (5 + 7) = 27.6 -> 27.
  LayerFactors a = RandomFactors(rng, 1, 5, 5, 3, true, false)[0];
  LayerFactors b = RandomFactors(rng, 1, 7, 7, 3, true, false)[0];
  o.scope = Scope::kModel;
  o.average_bits = 2.3;
  ASSERT_OK_AND_ASSIGN(Allocation m, AllocateBits({a, b}, o));
  EXPECT_THAT(m.budget_bits, ElementsAre(27));
  o.average_bits.reset();
  o.layer_budget = 12;  // K per layer, times the layer count
  ASSERT_OK_AND_ASSIGN(Allocation k, AllocateBits({a, b}, o));
  EXPECT_THAT(k.budget_bits, ElementsAre(24));
}

TEST(BitAllocationTest, RejectsInfeasibleBudgets) {
  const auto layers = HandCase();  // 4 experts, bits {1,2,3}
  AllocationOptions o;
  o.average_bits = 0.9;
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("average_bits 0.9"), HasSubstr("range 1 .. 3"))));
  o.average_bits = 3.2;
  EXPECT_THAT(AllocateBitsExhaustive(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("average_bits 3.2")));
  // 1.25 * 4 = 5 bits, but one expert at 3 and one at 2 need 3+2+1+1 = 7.
  o.average_bits = 1.25;
  for (auto solve : {AllocateBits, AllocateBitsExhaustive}) {
    EXPECT_THAT(
        solve(layers, o),
        StatusIs(absl::StatusCode::kFailedPrecondition,
                 AllOf(HasSubstr("layer 0: budget 5 bits for 4 experts"), HasSubstr("minimum 7"),
                       HasSubstr("feasible budgets: 7 .. 12"), HasSubstr("average 1.75 .. 3"))));
  }
  o.require_top_and_middle = false;
  EXPECT_OK(AllocateBits(layers, o));
  o.average_bits.reset();
  o.layer_budget = 13;
  EXPECT_THAT(
      AllocateBits(layers, o),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("layer_budget 13 bits for 4 experts is outside the range 4 .. 12")));
  o.layer_budget = 3;
  EXPECT_THAT(AllocateBits(layers, o), StatusIs(absl::StatusCode::kInvalidArgument));
  // One width per layer, one program per layer: "top and middle" cannot hold.
  o.layer_budget = 12;
  o.granularity = Granularity::kLayer;
  o.require_top_and_middle = true;
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("cannot be met")));
  o.scope = Scope::kModel;  // over the layers of the model: one layer is too few
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("too few layers")));
  EXPECT_OK(AllocateBits({layers[0], layers[0]}, o));
  // A layer with a single expert cannot have both a 3-bit and a 2-bit expert.
  LayerFactors single;
  single.frequency = {1};
  single.weight = {1};
  single.loss = {{3, 2, 1}};
  AllocationOptions one;
  one.average_bits = 3;
  EXPECT_THAT(AllocateBits({single}, one),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("too few experts")));
  // Scope model: a global budget that two layers' constraints exceed.
  AllocationOptions model;
  model.scope = Scope::kModel;
  model.average_bits = 1.5;  // 12 bits for 8 experts; each layer needs 3+2+1+1 = 7
  EXPECT_THAT(AllocateBits({layers[0], layers[0]}, model),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("model: budget 12 bits"), HasSubstr("minimum 14"))));
}

TEST(BitAllocationTest, RejectsMalformedInput) {
  auto layers = HandCase();
  AllocationOptions o;
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exactly one")));
  o.average_bits = 2;
  o.layer_budget = 8;
  EXPECT_THAT(AllocateBits(layers, o), StatusIs(absl::StatusCode::kInvalidArgument));
  o.layer_budget.reset();
  o.bits = {1, 2, 2};
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("repeated")));
  o.bits = {1, 2, 3};
  o.beta = -1;
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("beta")));
  o.beta = 1.5;
  o.time_limit_s = 0;
  EXPECT_THAT(AllocateBits(layers, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("time_limit_s")));
  o.time_limit_s = 60;
  EXPECT_THAT(AllocateBits({}, o), StatusIs(absl::StatusCode::kInvalidArgument));
  auto bad = layers;
  bad[0].loss[2].pop_back();
  EXPECT_THAT(AllocateBits(bad, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expert 2 has 2 losses")));
  bad = layers;
  bad[0].loss[1][0] = std::nan("");
  EXPECT_THAT(AllocateBits(bad, o), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = layers;
  bad[0].frequency[3] = -1;
  EXPECT_THAT(AllocateBits(bad, o), StatusIs(absl::StatusCode::kInvalidArgument));
  bad = layers;
  bad[0].weight = {0, 0, 0, 0};
  EXPECT_THAT(AllocateBits(bad, o),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be > 0")));
  bad = layers;
  bad[0].weight.pop_back();
  EXPECT_THAT(AllocateBits(bad, o), StatusIs(absl::StatusCode::kInvalidArgument));
  // The exhaustive oracle refuses large programs.
  std::mt19937_64 rng(3);
  o.scope = Scope::kModel;
  EXPECT_THAT(AllocateBitsExhaustive(RandomFactors(rng, 2, 8, 8, 3, true, false), o),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("2^22")));
}

// Exact reference for the expert-granularity model-wide program by dynamic programming over
// total width: per layer (with the top/middle flags as state), then over layers.
constexpr int kMediumInstances = 100;

double DynamicProgramOptimum(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                             int64_t budget) {
  const double inf = std::numeric_limits<double>::infinity();
  const bool require = o.require_top_and_middle.value_or(true);
  std::vector<double> model(budget + 1, inf);
  model[0] = 0;
  for (const LayerFactors& l : layers) {
    double fs = 0, as = 0;
    for (size_t e = 0; e < l.frequency.size(); ++e) fs += l.frequency[e], as += l.weight[e];
    const int max_w = 3 * l.frequency.size();
    // dp[flags][w]: flags bit 0 = some expert at 3, bit 1 = some expert at 2.
    std::vector<std::vector<double>> dp(4, std::vector<double>(max_w + 1, inf));
    dp[0][0] = 0;
    for (size_t e = 0; e < l.frequency.size(); ++e) {
      std::vector<std::vector<double>> next(4, std::vector<double>(max_w + 1, inf));
      for (int flags = 0; flags < 4; ++flags) {
        for (int w = 0; w <= max_w; ++w) {
          if (dp[flags][w] == inf) continue;
          for (int b = 1; b <= 3; ++b) {
            if (w + b > max_w) continue;
            const double c = std::pow(l.frequency[e] / fs, o.alpha) *
                             std::pow(l.weight[e] / as, o.beta) *
                             std::pow(l.loss[e][b - 1], o.gamma);
            const int nf = flags | (b == 3 ? 1 : 0) | (b == 2 ? 2 : 0);
            next[nf][w + b] = std::min(next[nf][w + b], dp[flags][w] + c);
          }
        }
      }
      dp = std::move(next);
    }
    std::vector<double> layer(max_w + 1, inf);
    for (int flags = 0; flags < 4; ++flags) {
      if (require && flags != 3) continue;
      for (int w = 0; w <= max_w; ++w) layer[w] = std::min(layer[w], dp[flags][w]);
    }
    std::vector<double> next(budget + 1, inf);
    for (int64_t t = 0; t <= budget; ++t) {
      if (model[t] == inf) continue;
      for (int w = 0; w <= max_w && t + w <= budget; ++w) {
        if (layer[w] != inf) next[t + w] = std::min(next[t + w], model[t] + layer[w]);
      }
    }
    model = std::move(next);
  }
  return *std::min_element(model.begin(), model.end());
}

TEST(BitAllocationTest, LargeModelWideProgramIsFastAndOptimal) {
  std::mt19937_64 rng(32 * 64);
  const auto layers = RandomFactors(rng, 32, 64, 64, 3, true, false);
  for (double average : {2.5, 2.0, 1.6}) {
    AllocationOptions o;
    o.scope = Scope::kModel;
    o.average_bits = average;
    const auto start = std::chrono::steady_clock::now();
    ASSERT_OK_AND_ASSIGN(Allocation a, AllocateBits(layers, o));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "32 layers x 64 experts, scope model, average " << average << ": " << seconds
              << " s, objective " << a.objective << ", average bits " << a.average_bits
              << (a.proven_optimal ? " (proven optimal)" : " (NOT proven optimal)") << "\n";
    EXPECT_TRUE(a.proven_optimal);
    EXPECT_LT(seconds, 20.0);
    ExpectValid(layers, o, a, absl::StrCat("large ", average));
    const double dp = DynamicProgramOptimum(layers, o, a.budget_bits[0]);
    EXPECT_TRUE(SameObjective(a.objective, dp)) << "cbc " << a.objective << " dp " << dp;
  }
  // The per-layer programs and one width per layer, same size.
  for (Scope scope : {Scope::kLayer, Scope::kModel}) {
    for (Granularity gran : {Granularity::kExpert, Granularity::kLayer}) {
      AllocationOptions o;
      o.scope = scope;
      o.granularity = gran;
      o.average_bits = 2.25;
      const auto start = std::chrono::steady_clock::now();
      ASSERT_OK_AND_ASSIGN(Allocation a, AllocateBits(layers, o));
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::cout << "32 x 64, scope " << (scope == Scope::kLayer ? "layer" : "model")
                << ", granularity " << (gran == Granularity::kExpert ? "expert" : "layer")
                << ", average 2.25: " << seconds << " s\n";
      EXPECT_TRUE(a.proven_optimal);
      ExpectValid(layers, o, a, "large variants");
    }
  }
}

TEST(BitAllocationTest, MatchesDynamicProgramOnMediumInstances) {
  // Expert granularity, bits {1,2,3}, both scopes: CBC against the exact DP, with skewed,
  // unused and non-monotone experts, on programs too large for the exhaustive search.
  std::mt19937_64 rng(555);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int instances = kMediumInstances;
  for (int instance = 0; instance < instances; ++instance) {
    const auto layers = RandomFactors(rng, 1 + instance % 8, 8, 64, 3,
                                      /*monotone=*/instance % 4 != 3, /*zeros=*/instance % 3 == 1);
    for (Scope scope : {Scope::kLayer, Scope::kModel}) {
      AllocationOptions o;
      o.scope = scope;
      o.average_bits = 1.4 + 1.6 * u(rng);
      if (instance % 5 == 2) o.require_top_and_middle = false;
      if (instance % 6 == 5) o.beta = 3 * u(rng), o.gamma = 0.5 + u(rng);
      const std::string what = absl::StrCat("instance ", instance, " scope ",
                                            static_cast<int>(scope), " average ", *o.average_bits);
      auto a = AllocateBits(layers, o);
      if (!a.ok()) {
        EXPECT_THAT(a, StatusIs(absl::StatusCode::kFailedPrecondition)) << what;
        continue;
      }
      EXPECT_TRUE(a->proven_optimal) << what;
      ExpectValid(layers, o, *a, what);
      double dp = 0;
      if (scope == Scope::kModel) {
        dp = DynamicProgramOptimum(layers, o, a->budget_bits[0]);
      } else {
        for (size_t l = 0; l < layers.size(); ++l) {
          dp += DynamicProgramOptimum({layers[l]}, o, a->budget_bits[l]);
        }
      }
      EXPECT_TRUE(SameObjective(a->objective, dp))
          << what << ": cbc " << a->objective << " dp " << dp;
    }
  }
}

TEST(BitAllocationTest, MatchesDynamicProgramWhenCostsSpanManyOrders) {
  // Heavy-tailed counts and losses spread over e^20: costs span ~20 orders of magnitude,
  // far beyond CBC's absolute tolerances unless the objective is rescaled (SolveWithCbc).
  int compared = 0;
  for (int seed = 0; seed < 80; ++seed) {
    std::mt19937_64 rng(seed);
    std::lognormal_distribution<double> heavy(0.0, 3.0);
    std::uniform_real_distribution<double> u(0, 1);
    std::vector<LayerFactors> layers(1 + seed % 6);
    const int experts = 8 + seed % 57;
    for (LayerFactors& f : layers) {
      for (int e = 0; e < experts; ++e) {
        const int64_t count = static_cast<int64_t>(heavy(rng) * 100);
        f.frequency.push_back(count);
        f.weight.push_back(count * u(rng) + (u(rng) < 0.1 ? 1e-9 : 0));
        const double q3 = std::exp(20 * u(rng) - 10);
        if (seed % 2 == 1) {
          f.loss.push_back({q3 * (1 + 100 * u(rng)), q3 * (1 + 10 * u(rng)), q3});
        } else {
          f.loss.push_back({std::exp(20 * u(rng) - 10), std::exp(20 * u(rng) - 10), q3});
        }
      }
      f.frequency[0] += 1;
      f.weight[0] += 1;
    }
    for (Scope scope : {Scope::kLayer, Scope::kModel}) {
      AllocationOptions o;
      o.scope = scope;
      o.average_bits = 1.4 + 1.6 * u(rng);
      if (seed % 3 == 0) o.require_top_and_middle = false;
      const std::string what = absl::StrCat("seed ", seed, " scope ", static_cast<int>(scope));
      auto a = AllocateBits(layers, o);
      if (!a.ok()) {
        EXPECT_THAT(a, StatusIs(absl::StatusCode::kFailedPrecondition)) << what;
        continue;
      }
      EXPECT_TRUE(a->proven_optimal) << what;
      ExpectValid(layers, o, *a, what);
      double dp = 0;
      if (scope == Scope::kModel) {
        dp = DynamicProgramOptimum(layers, o, a->budget_bits[0]);
      } else {
        for (size_t l = 0; l < layers.size(); ++l) {
          dp += DynamicProgramOptimum({layers[l]}, o, a->budget_bits[l]);
        }
      }
      EXPECT_TRUE(SameObjective(a->objective, dp))
          << what << ": cbc " << a->objective << " dp " << dp;
      ++compared;
    }
  }
  EXPECT_GT(compared, 120);
}

TEST(BitAllocationTest, IsDeterministic) {
  std::mt19937_64 rng(99);
  const auto layers = RandomFactors(rng, 8, 16, 64, 3, true, true);
  for (Scope scope : {Scope::kLayer, Scope::kModel}) {
    AllocationOptions o;
    o.scope = scope;
    o.average_bits = 2.1;
    ASSERT_OK_AND_ASSIGN(Allocation first, AllocateBits(layers, o));
    for (int i = 0; i < 3; ++i) {
      ASSERT_OK_AND_ASSIGN(Allocation again, AllocateBits(layers, o));
      EXPECT_EQ(again.bits, first.bits);
      EXPECT_EQ(again.objective, first.objective);
    }
  }
}

}  // namespace
}  // namespace moec::quant
