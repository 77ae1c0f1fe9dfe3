// Tests of AllocateBits / AllocateBitsExhaustive on hand-solved cases, budgets and malformed
// input. Randomized cross-checks against the exhaustive search and a dynamic program are in
// bit_allocation_random_test.cc.
#include "quant/bit_allocation.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/bit_allocation_test_util.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

using ::moec::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Scope = AllocationOptions::Scope;
using Granularity = AllocationOptions::Granularity;
using allocation_testing::HandCase;
using allocation_testing::RandomFactors;

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
