#include "quant/bit_allocation_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace moec::quant::allocation_testing {
namespace {

using Scope = AllocationOptions::Scope;
using Granularity = AllocationOptions::Granularity;

// What ExpectValid sums up of one layer.
struct LayerWidths {
  int64_t total = 0;
  bool top = false;  // some expert at the largest width
  bool mid = false;  // some expert at the second-largest width
};

// ExpectValid's checks of layer l (its width count already checked); `sorted`: o.bits, largest
// first.
LayerWidths ExpectLayerValid(const AllocationOptions& o, const Allocation& a, size_t l,
                             const std::vector<int>& sorted, bool need_top, bool need_mid) {
  const auto& b = a.bits[l];
  int64_t total = 0;
  bool top = false, mid = false;
  for (int w : b) {
    EXPECT_NE(std::find(o.bits.begin(), o.bits.end(), w), o.bits.end()) << w;
    total += w;
    top |= w == sorted[0];
    mid |= sorted.size() >= 2 && w == sorted[1];
  }
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
  return {total, top, mid};
}

using Table = std::vector<std::vector<double>>;

// dp[flags][w] (flags bit 0 = some expert at 3, bit 1 = some expert at 2) after expert e of l
// (fs, as: the layer's sums of frequency and weight) takes 1, 2 or 3 bits.
Table AddExpert(const Table& dp, const LayerFactors& l, size_t e, double fs, double as,
                const AllocationOptions& o) {
  const double inf = std::numeric_limits<double>::infinity();
  const int max_w = static_cast<int>(dp[0].size()) - 1;
  Table next(4, std::vector<double>(max_w + 1, inf));
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
  return next;
}

// The cheapest cost of layer l by total width (inf: none), with the top/middle flags when
// `require`.
std::vector<double> LayerOptimum(const LayerFactors& l, const AllocationOptions& o, bool require) {
  const double inf = std::numeric_limits<double>::infinity();
  double fs = 0, as = 0;
  for (size_t e = 0; e < l.frequency.size(); ++e) fs += l.frequency[e], as += l.weight[e];
  const int max_w = 3 * l.frequency.size();
  // dp[flags][w]: flags bit 0 = some expert at 3, bit 1 = some expert at 2.
  Table dp(4, std::vector<double>(max_w + 1, inf));
  dp[0][0] = 0;
  for (size_t e = 0; e < l.frequency.size(); ++e) dp = AddExpert(dp, l, e, fs, as, o);
  std::vector<double> layer(max_w + 1, inf);
  for (int flags = 0; flags < 4; ++flags) {
    if (require && flags != 3) continue;
    for (int w = 0; w <= max_w; ++w) layer[w] = std::min(layer[w], dp[flags][w]);
  }
  return layer;
}

}  // namespace

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
    const LayerWidths widths = ExpectLayerValid(o, a, l, sorted, need_top, need_mid);
    any_top |= widths.top;
    any_mid |= widths.mid;
    model_total += widths.total;
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

std::vector<LayerFactors> HandCase() {
  LayerFactors l;
  l.frequency = {7, 7, 7, 7};
  l.weight = {2, 2, 2, 2};
  l.loss = {{100, 10, 1}, {50, 20, 2}, {8, 4, 3}, {6, 5, 4}};
  return {l};
}

double DynamicProgramOptimum(const std::vector<LayerFactors>& layers, const AllocationOptions& o,
                             int64_t budget) {
  const double inf = std::numeric_limits<double>::infinity();
  const bool require = o.require_top_and_middle.value_or(true);
  std::vector<double> model(budget + 1, inf);
  model[0] = 0;
  for (const LayerFactors& l : layers) {
    const std::vector<double> layer = LayerOptimum(l, o, require);
    const int max_w = static_cast<int>(layer.size()) - 1;
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

}  // namespace moec::quant::allocation_testing
