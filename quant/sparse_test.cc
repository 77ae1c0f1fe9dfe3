// Pruning kernels against naive references (ALGORITHMS.md 2.5).
#include "quant/sparse.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

// Per row, the indices of the k smallest values, ties by column (a stable sort).
std::vector<std::vector<int64_t>> SmallestPerRow(const at::Tensor& metric, int64_t k) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t r = 0; r < metric.size(0); ++r) {
    std::vector<int64_t> idx(metric.size(1));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
      return metric[r][a].item<float>() < metric[r][b].item<float>();
    });
    idx.resize(k);
    out.push_back(idx);
  }
  return out;
}

TEST(WandaTest, UnstructuredAndNmMasksMatchANaiveSelection) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({5, 16});
  const at::Tensor norm2 = at::rand({16}) * 3;
  ASSERT_OK_AND_ASSIGN(at::Tensor mask, WandaMask(w, norm2, 0.5, {}));
  const at::Tensor metric = w.abs() * norm2.sqrt();
  const auto smallest = SmallestPerRow(metric, 8);
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(mask[r].sum().item<int64_t>(), 8);
    for (int64_t c : smallest[r]) EXPECT_TRUE(mask[r][c].item<bool>()) << r << "," << c;
  }
  ASSERT_OK_AND_ASSIGN(at::Tensor nm, WandaMask(w, norm2, 0.5, {2, 4}));
  for (int64_t r = 0; r < 5; ++r) {
    for (int64_t g = 0; g < 16; g += 4) {
      const auto group = SmallestPerRow(metric[r].narrow(0, g, 4).reshape({1, 4}), 2)[0];
      EXPECT_EQ(nm[r].narrow(0, g, 4).sum().item<int64_t>(), 2);
      for (int64_t c : group) EXPECT_TRUE(nm[r][g + c].item<bool>());
    }
  }
  EXPECT_THAT(WandaMask(w, norm2, 0.5, {2, 5}).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(WandaMask(w, norm2, 1.0, {}).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

// Many equal scores (small integer weights, unit norms): the selection keeps the stable sort's
// tie order, every ratio.
TEST(WandaTest, TiesAreTakenInColumnOrderAsByAStableSort) {
  at::manual_seed(4);
  const at::Tensor w = at::randint(0, 3, {7, 24}).to(at::kFloat);
  const at::Tensor norm2 = at::ones({24});
  for (double ratio : {0.1, 0.25, 0.5, 0.8}) {
    ASSERT_OK_AND_ASSIGN(at::Tensor mask, WandaMask(w, norm2, ratio, {}));
    const int64_t k = static_cast<int64_t>(std::floor(24 * ratio));
    const auto smallest = SmallestPerRow(w.abs(), k);
    for (int64_t r = 0; r < 7; ++r) {
      at::Tensor expected = at::zeros({24}, at::kBool);
      for (int64_t c : smallest[r]) expected[c] = true;
      EXPECT_TRUE(at::equal(mask[r], expected)) << "ratio " << ratio << ", row " << r;
    }
  }
}

// The row-selection kernel against the same selection in tensor ops (kthvalue, then ties in
// column order), on scores with many ties and on continuous ones.
TEST(WandaTest, SelectionKernelMatchesTheTensorSelection) {
  at::manual_seed(9);
  // Integer scores (ties), continuous ones over many exponents, and ones within one binade (in
  // [1, 2): the kernel's histogram puts them in a few buckets).
  for (int kind : {0, 1, 2}) {
    const bool ties = kind == 0;
    const at::Tensor w = kind == 0   ? at::randint(-3, 4, {33, 300}).to(at::kFloat)
                         : kind == 1 ? at::randn({33, 300})
                                     : at::rand({33, 300}) + 1;
    const at::Tensor norm2 = kind == 0 ? at::randint(1, 3, {300}).to(at::kFloat)
                             : kind == 1 ? at::rand({300})
                                         : at::ones({300});
    const at::Tensor metric = w.abs() * norm2.sqrt().reshape({1, -1});
    for (double ratio : {0.01, 0.3, 0.5, 0.9}) {
      const int64_t k = static_cast<int64_t>(std::floor(300 * ratio));
      const at::Tensor t = std::get<0>(metric.kthvalue(k, 1, true));
      const at::Tensor equal = metric == t;
      const at::Tensor expected =
          (metric < t) | (equal & (equal.cumsum(1) <= k - (metric < t).sum(1, true)));
      ASSERT_OK_AND_ASSIGN(at::Tensor mask, WandaMask(w, norm2, ratio, {}));
      EXPECT_TRUE(at::equal(mask, expected)) << "ties " << ties << " ratio " << ratio;
      EXPECT_EQ(mask.sum().item<int64_t>(), 33 * k);
    }
  }
}

// The fused per-row pruning gives the bits of masking with WandaMask, on the radix path and on
// the fallback (a negative norm makes sqrt NaN: no radix selection), with the zeros counted.
TEST(WandaTest, FusedPruningEqualsMaskingWithTheMask) {
  at::manual_seed(10);
  for (int kind : {0, 1, 2, 3}) {
    at::Tensor w = kind == 0 ? at::randint(-3, 4, {37, 260}).to(at::kFloat) : at::randn({37, 260});
    at::Tensor norm2 = kind == 0 ? at::randint(0, 3, {260}).to(at::kFloat) : at::rand({260});
    if (kind == 2) norm2[5] = -1.0;  // NaN metrics: the tensor path
    if (kind == 3) w[3][7] = std::numeric_limits<float>::infinity();
    w[1][2] = -0.0f;  // kept or pruned, the stored mask must give its sign back
    for (double ratio : {0.0, 0.25, 0.5, 0.75}) {
      ASSERT_OK_AND_ASSIGN(PrunedWeight p, WandaPrune(w, norm2, ratio, {}));
      ASSERT_OK_AND_ASSIGN(at::Tensor mask, WandaMask(w, norm2, ratio, {}));
      const at::Tensor want = w.masked_fill(mask, 0);
      EXPECT_TRUE(at::equal(p.weight.view(at::kInt), want.view(at::kInt))) << "kind " << kind << " ratio " << ratio;
      EXPECT_EQ(p.zeros, (want == 0).sum().item<int64_t>()) << "kind " << kind << " ratio " << ratio;
      // The packed mask is the mask, and it gives the pruned matrix back bit for bit.
      EXPECT_TRUE(at::equal(p.mask, PackMask(mask))) << "kind " << kind << " ratio " << ratio;
      ASSERT_OK_AND_ASSIGN(at::Tensor back, ApplyPackedMask(w.clone(), p.mask));
      EXPECT_TRUE(at::equal(back.view(at::kInt), want.view(at::kInt))) << "kind " << kind << " ratio " << ratio;
    }
    ASSERT_OK_AND_ASSIGN(PrunedWeight nm, WandaPrune(w, norm2, 0.5, {2, 4}));
    ASSERT_OK_AND_ASSIGN(at::Tensor nm_mask, WandaMask(w, norm2, 0.5, {2, 4}));
    EXPECT_TRUE(at::equal(nm.weight, w.masked_fill(nm_mask, 0))) << "2:4, kind " << kind;
    EXPECT_TRUE(at::equal(nm.mask, PackMask(nm_mask))) << "2:4, kind " << kind;
  }
  EXPECT_EQ(WandaPrune(at::ones({2, 4}), at::ones({3}), 0.5, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// PackMask's layout by hand: 8 columns per byte, least significant bit first, the last byte of
// a row padded with zeros; a mask of another shape is DataLoss.
TEST(PackedMaskTest, BitsByHandAndShapesChecked) {
  at::Tensor mask = at::zeros({2, 10}, at::kBool);
  mask[0][0] = true;
  mask[0][7] = true;
  mask[0][8] = true;
  mask[1][3] = true;
  mask[1][9] = true;
  const at::Tensor packed = PackMask(mask);
  ASSERT_EQ(packed.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(packed, at::tensor({0x81, 0x01, 0x08, 0x02}, at::kByte).reshape({2, 2})));
  at::Tensor w = at::arange(1, 21, at::kFloat).reshape({2, 10});
  const at::Tensor want = w.masked_fill(mask, 0);
  ASSERT_OK_AND_ASSIGN(at::Tensor got, ApplyPackedMask(w.clone(), packed));
  EXPECT_TRUE(at::equal(got, want));
  EXPECT_EQ(ApplyPackedMask(at::ones({2, 17}), packed).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ApplyPackedMask(at::ones({3, 10}), packed).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ApplyPackedMask(at::ones({2, 10}), packed.to(at::kInt)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(MagnitudeTest, GlobalThresholdPerMatrix) {
  at::manual_seed(2);
  const at::Tensor w = at::randn({6, 10});
  ASSERT_OK_AND_ASSIGN(at::Tensor mask, MagnitudeMask(w, 0.3, {}));
  std::vector<float> mags(w.numel());
  for (int64_t i = 0; i < w.numel(); ++i) mags[i] = std::abs(w.reshape(-1)[i].item<float>());
  std::vector<float> sorted = mags;
  std::sort(sorted.begin(), sorted.end());
  const float threshold = sorted[18];  // floor(60 * 0.3)
  for (int64_t i = 0; i < w.numel(); ++i) {
    EXPECT_EQ(mask.reshape(-1)[i].item<bool>(), mags[i] <= threshold);
  }
  EXPECT_EQ(mask.sum().item<int64_t>(), 19);  // the reference prunes the threshold element too
}

// SparseGPT with an n:m mask, blocked, against a naive optimal-brain-surgeon elimination that
// inverts the remaining Hessian at every column.
TEST(SparseGptTest, BlockedNmEqualsNaiveObs) {
  at::manual_seed(3);
  const int64_t out = 6, in = 16;
  const at::Tensor x = at::randn({200, in}).matmul(at::randn({in, in}) * 0.5 + at::eye(in));
  const at::Tensor h = 2.0 / 200 * x.t().matmul(x);
  const at::Tensor w = at::randn({out, in});
  SparseGptOptions o;
  o.pattern = {2, 4};
  o.blocksize = 8;
  ASSERT_OK_AND_ASSIGN(at::Tensor pruned, SparseGptPrune(w, h, o));
  // Naive.
  at::Tensor hd = h.to(at::kDouble).clone();
  hd.diagonal().add_(0.01 * hd.diagonal().mean().item<double>());
  at::Tensor cur = w.to(at::kDouble).clone();
  std::vector<double> u(in);
  for (int64_t j = 0; j < in; ++j) {
    u[j] = std::sqrt(at::inverse(hd.narrow(0, j, in - j).narrow(1, j, in - j))[0][0].item<double>());
  }
  at::Tensor mask = at::zeros({out, in}, at::kBool);
  for (int64_t i = 0; i < in; ++i) {
    if (i % 4 == 0) {
      for (int64_t r = 0; r < out; ++r) {
        std::vector<std::pair<double, int64_t>> s;
        for (int64_t c = i; c < i + 4; ++c) {
          s.push_back({std::pow(cur[r][c].item<double>(), 2) / (u[c] * u[c]), c});
        }
        std::sort(s.begin(), s.end());
        mask[r][s[0].second] = true;
        mask[r][s[1].second] = true;
      }
    }
    const at::Tensor hinv = at::inverse(hd.narrow(0, i, in - i).narrow(1, i, in - i));
    for (int64_t r = 0; r < out; ++r) {
      if (!mask[r][i].item<bool>()) continue;
      const double delta = cur[r][i].item<double>();
      for (int64_t c = i + 1; c < in; ++c) {
        cur[r][c] -= delta / hinv[0][0].item<double>() * hinv[0][c - i].item<double>();
      }
      cur[r][i] = 0;
    }
  }
  EXPECT_TRUE(at::allclose(pruned.to(at::kDouble), cur, 1e-3, 1e-4))
      << (pruned.to(at::kDouble) - cur).abs().max().item<double>();
  EXPECT_EQ((pruned == 0).sum().item<int64_t>(), out * in / 2);
  // SparseGPT's output error is below magnitude pruning's on these correlated inputs.
  ASSERT_OK_AND_ASSIGN(at::Tensor mag, MagnitudeMask(w, 0.5, {2, 4}));
  const double e_sparsegpt = (w - pruned).matmul(x.t()).norm().item<double>();
  const double e_magnitude = (w * mag.logical_not()).sub(w).matmul(x.t()).norm().item<double>();
  EXPECT_LT(e_sparsegpt, e_magnitude);
}

TEST(SparseGptTest, UnstructuredReachesTheRatioPerBlock) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({100, 32});
  const at::Tensor h = 2.0 / 100 * x.t().matmul(x);
  const at::Tensor w = at::randn({8, 32});
  SparseGptOptions o;
  o.ratio = 0.5;
  o.blocksize = 16;
  ASSERT_OK_AND_ASSIGN(at::Tensor pruned, SparseGptPrune(w, h, o));
  // floor(128 * 0.5)-th smallest and everything below it: 65 of 128 per block (no ties).
  EXPECT_EQ((pruned.narrow(1, 0, 16) == 0).sum().item<int64_t>(), 65);
  EXPECT_EQ((pruned.narrow(1, 16, 16) == 0).sum().item<int64_t>(), 65);
  EXPECT_THAT(SparseGptPrune(w, at::eye(31), o).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace moec::quant
