// Randomized tests of AllocateBits: against the exhaustive search on small programs, and
// against an exact dynamic program on programs too large for it.
#include "quant/bit_allocation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/bit_allocation_test_util.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

using ::moec::testing::StatusIs;
using Scope = AllocationOptions::Scope;
using Granularity = AllocationOptions::Granularity;
using allocation_testing::DynamicProgramOptimum;
using allocation_testing::ExpectValid;
using allocation_testing::RandomFactors;
using allocation_testing::SameObjective;

// One instance of CbcMatchesExhaustiveSearchOnRandomInstances: its widths and factors.
struct RandomInstance {
  std::vector<int> bits;
  int b_min = 0, b_max = 0;
  int layers = 0;
  std::vector<LayerFactors> factors;
  int64_t experts = 0, min_e = 1 << 30, max_e = 0;
};

RandomInstance MakeRandomInstance(std::mt19937_64& rng, int instance) {
  RandomInstance k;
  const bool wide = instance % 5 == 4;  // bits {4,2,8,3}: other widths, unsorted
  k.bits = wide ? std::vector<int>{4, 2, 8, 3} : std::vector<int>{1, 2, 3};
  k.b_min = wide ? 2 : 1;
  k.b_max = wide ? 8 : 3;
  k.layers = wide ? 2 : 2 + instance % 2;
  k.factors = RandomFactors(rng, k.layers, 4, k.layers == 2 ? 6 : 5, k.bits.size(),
                            /*monotone=*/instance % 3 != 2, /*zeros=*/instance % 4 == 1);
  for (const auto& f : k.factors) {
    const int64_t e = f.frequency.size();
    k.experts += e;
    k.min_e = std::min(k.min_e, e);
    k.max_e = std::max(k.max_e, e);
  }
  return k;
}

AllocationOptions InstanceOptions(const RandomInstance& k, int instance, Scope scope,
                                  Granularity gran, int require, std::mt19937_64& rng,
                                  std::uniform_real_distribution<double>& u) {
  AllocationOptions o;
  o.bits = k.bits;
  o.scope = scope;
  o.granularity = gran;
  if (require >= 0) o.require_top_and_middle = require == 1;
  if (instance % 7 == 3) {  // other exponents
    o.alpha = 0.5 + u(rng);
    o.beta = 2 * u(rng);
    o.gamma = 0.5 + 1.5 * u(rng);
  }
  if (instance % 3 == 0) {  // K in [max_e * b_min - 1, min_e * b_max + 1]
    const int64_t lo = k.max_e * k.b_min - 1, hi = k.min_e * k.b_max + 1;
    o.layer_budget = lo + static_cast<int64_t>(u(rng) * (hi - lo + 1));
  } else {
    o.average_bits = instance % 8 == 5   ? k.b_max
                     : instance % 8 == 6 ? k.b_min
                                         : k.b_min + (k.b_max - k.b_min) * u(rng);
  }
  return o;
}

// More than 2^22 assignments in one program: too large for the exhaustive search.
bool TooLargeForExhaustive(const RandomInstance& k, Scope scope, Granularity gran) {
  const int64_t units = gran == Granularity::kLayer ? (scope == Scope::kModel ? k.layers : 1)
                        : scope == Scope::kModel    ? k.experts
                                                    : k.max_e;
  return std::pow(k.bits.size(), units) > (1 << 22);
}

TEST(BitAllocationTest, CbcMatchesExhaustiveSearchOnRandomInstances) {
  std::mt19937_64 rng(20241006);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int solved[2][2] = {{0, 0}, {0, 0}};  // [scope][granularity] calls compared
  int rejected = 0, skipped = 0;
  for (int instance = 0; instance < 60; ++instance) {
    const RandomInstance k = MakeRandomInstance(rng, instance);
    for (Scope scope : {Scope::kLayer, Scope::kModel}) {
      for (Granularity gran : {Granularity::kExpert, Granularity::kLayer}) {
        for (int require = -1; require <= 1; ++require) {
          const AllocationOptions o = InstanceOptions(k, instance, scope, gran, require, rng, u);
          if (TooLargeForExhaustive(k, scope, gran)) {
            ++skipped;
            continue;
          }
          const std::string what =
              absl::StrCat("instance ", instance, " scope ", static_cast<int>(scope),
                           " granularity ", static_cast<int>(gran), " require ", require);
          auto cbc = AllocateBits(k.factors, o);
          auto exhaustive = AllocateBitsExhaustive(k.factors, o);
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
          ExpectValid(k.factors, o, *cbc, what + " cbc");
          ExpectValid(k.factors, o, *exhaustive, what + " exhaustive");
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

constexpr int kMediumInstances = 100;

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

}  // namespace
}  // namespace moec::quant
