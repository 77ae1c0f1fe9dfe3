// Tests of the quantizer (quant/quantizer.h) against hand-computed cases and a line-by-line
// tensor port of the GPTQ reference's quant.py (reference_quantizer_test_util.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"
#include "model/runtime/weights.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "quant/reference_quantizer_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::quant {
namespace {

using ::testing::HasSubstr;

using namespace ::moec::quant::reference;  // NOLINT: the reference port

// ---------------------------------------------------------------------------------------------
// Quantizer: hand-computed cases.

TEST(QuantizerTest, HandComputedAsymmetric2Bit) {
  QuantizerOptions o;
  o.bits = 2;
  at::Tensor w = at::tensor({-1.0f, 0.5f, 2.0f, 0.2f}).reshape({1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedWeight r, QuantizeGroups(w, -1, o));
  // xmin -1, xmax 2: scale 1, zero round(1) = 1; q = round(w) + 1 (0.5 rounds to even 0).
  EXPECT_FLOAT_EQ(r.scales.item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(r.zeros.item<float>(), 1.0f);
  EXPECT_TRUE(at::equal(r.q, at::tensor({0, 1, 3, 1}, at::kByte).reshape({1, 4})));
  EXPECT_TRUE(at::equal(r.weight, at::tensor({-1.0f, 0.0f, 2.0f, 0.0f}).reshape({1, 4})));
}

TEST(QuantizerTest, HandComputedSymmetric2Bit) {
  QuantizerOptions o;
  o.bits = 2;
  o.sym = true;
  at::Tensor w = at::tensor({-1.0f, 0.5f, 2.0f, 0.2f}).reshape({1, 4});
  ASSERT_OK_AND_ASSIGN(QuantizedWeight r, QuantizeGroups(w, -1, o));
  // Range [-2, 2]: scale 4/3, zero (3 + 1) / 2 = 2; q = round(0.75 w) + 2, clamped to 3.
  EXPECT_FLOAT_EQ(r.scales.item<float>(), 4.0f / 3.0f);
  EXPECT_FLOAT_EQ(r.zeros.item<float>(), 2.0f);
  EXPECT_TRUE(at::equal(r.q, at::tensor({1, 2, 3, 2}, at::kByte).reshape({1, 4})));
  const float s = 4.0f / 3.0f;
  EXPECT_TRUE(at::equal(r.weight, at::tensor({-s, 0.0f, s, 0.0f}).reshape({1, 4})));
}

TEST(QuantizerTest, HandComputedFloatZeroVsIntegerZero) {
  at::Tensor w = at::tensor({-0.4f, 1.1f, 0.0f}).reshape({1, 3});
  QuantizerOptions o;
  o.bits = 2;  // scale 1.5 / 3 = 0.5
  ASSERT_OK_AND_ASSIGN(QuantizedWeight ri, QuantizeGroups(w, -1, o));
  EXPECT_FLOAT_EQ(ri.zeros.item<float>(), 1.0f);  // round(0.8)
  EXPECT_TRUE(at::equal(ri.q, at::tensor({0, 3, 1}, at::kByte).reshape({1, 3})));
  EXPECT_TRUE(at::allclose(ri.weight, at::tensor({-0.5f, 1.0f, 0.0f}).reshape({1, 3})));
  o.mcmoe_float_zero = true;
  ASSERT_OK_AND_ASSIGN(QuantizedWeight rf, QuantizeGroups(w, -1, o));
  EXPECT_NEAR(rf.zeros.item<float>(), 0.8f, 1e-6);
  EXPECT_TRUE(at::equal(rf.q, at::tensor({0, 3, 1}, at::kByte).reshape({1, 3})));
  // The float zero keeps both ends exact; 0 is no longer representable.
  EXPECT_TRUE(at::allclose(rf.weight, at::tensor({-0.4f, 1.1f, 0.1f}).reshape({1, 3}), 1e-5, 1e-6));
  EXPECT_FALSE(o.IntegerZero());
}

TEST(QuantizerTest, HandComputedOneBitSignAndMinMax) {
  at::Tensor w = at::tensor({-1.0f, 3.0f, 0.0f, -2.0f}).reshape({1, 4});
  QuantizerOptions o;
  o.bits = 1;
  ASSERT_OK_AND_ASSIGN(QuantizedWeight r, QuantizeGroups(w, -1, o));
  EXPECT_FLOAT_EQ(r.scales.item<float>(), 3.0f);  // 2 * mean|w|
  EXPECT_FLOAT_EQ(r.zeros.item<float>(), 0.5f);
  EXPECT_TRUE(at::equal(r.q, at::tensor({0, 1, 1, 0}, at::kByte).reshape({1, 4})));
  EXPECT_TRUE(at::equal(r.weight, at::tensor({-1.5f, 1.5f, 1.5f, -1.5f}).reshape({1, 4})));
  o.one_bit = OneBitMode::kMinMax;  // reference: scale 5, zero round(0.2) = 0
  ASSERT_OK_AND_ASSIGN(QuantizedWeight m, QuantizeGroups(w, -1, o));
  EXPECT_FLOAT_EQ(m.scales.item<float>(), 5.0f);
  EXPECT_FLOAT_EQ(m.zeros.item<float>(), 0.0f);
  EXPECT_TRUE(at::equal(m.q, at::tensor({0, 1, 0, 0}, at::kByte).reshape({1, 4})));
}

TEST(QuantizerTest, AllZeroRowUsesUnitRange) {
  QuantizerOptions o;
  o.bits = 4;
  ASSERT_OK_AND_ASSIGN(QuantizedWeight r, QuantizeGroups(at::zeros({1, 8}), -1, o));
  EXPECT_FLOAT_EQ(r.scales.item<float>(), 2.0f / 15.0f);
  // zero = round(1 / (2/15)): the fp32 quotient is just below 7.5.
  EXPECT_FLOAT_EQ(r.zeros.item<float>(), std::nearbyint(1.0f / (2.0f / 15.0f)));
  EXPECT_TRUE(at::equal(r.weight, at::zeros({1, 8})));
}

TEST(QuantizerTest, MseSearchPicksAHandCheckedShrink) {
  // One outlier: shrinking the range clips it but represents the rest far better.
  std::vector<float> v(64, 0.0f);
  for (int i = 0; i < 63; ++i) v[i] = 0.01f * static_cast<float>((i % 7) - 3);
  v[63] = 1.0f;
  at::Tensor w = at::tensor(v).reshape({1, 64});
  QuantizerOptions o;
  o.bits = 2;
  o.mse = true;
  ASSERT_OK_AND_ASSIGN(QuantParams p, FitRows(w, o));
  // Brute force over the same candidates with the same metric.
  double best = std::numeric_limits<double>::infinity();
  float best_scale = 0;
  for (int i = 0; i < 80; ++i) {
    const float pc = static_cast<float>(1 - i / 100.0);
    const float lo = -0.03f * pc, hi = 1.0f * pc;
    const float s = (hi - lo) / 3.0f;
    const float z = std::nearbyint(-lo / s);
    double err = 0;
    for (float x : v) {
      float q = std::min(3.0f, std::max(0.0f, std::nearbyint(x / s) + z));
      err += std::pow(std::fabs(s * (q - z) - x), 2.4);
    }
    if (err < best) {
      best = err;
      best_scale = s;
    }
  }
  EXPECT_FLOAT_EQ(p.scale.item<float>(), best_scale);
  EXPECT_LT(p.scale.item<float>(), 1.03f / 3.0f);  // it did shrink
}

TEST(QuantizerTest, RejectsBadOptions) {
  QuantizerOptions o;
  o.bits = 9;
  EXPECT_THAT(QuantizeGroups(at::ones({2, 2}), -1, o).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bits")));
  o.bits = 4;
  EXPECT_THAT(QuantizeGroups(at::ones({2, 2}), 0, o).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("group_size")));
  EXPECT_THAT(QuantizeGroups(at::ones({2}), -1, o).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

// Quantizer vs the quant.py port, every bit width and mode, groups.
struct QuantizerCase {
  int bits;
  bool sym, mse, float_zero;
  RangeGrid grid;
  OneBitMode one_bit;
};

class QuantizerVsReferenceTest : public ::testing::TestWithParam<QuantizerCase> {};

QuantizerOptions OptionsOf(const QuantizerCase& k) {
  QuantizerOptions o;
  o.bits = k.bits;
  o.sym = k.sym;
  o.mse = k.mse;
  o.mcmoe_float_zero = k.float_zero;
  o.range_grid = k.grid;
  o.one_bit = k.one_bit;
  return o;
}

// Compares the groups of g columns of r = QuantizeGroups(w [48, 96]) with the quant.py port;
// returns the number of (row, group) parameters that differ.
int64_t CompareGroupsWithReference(const at::Tensor& w, const QuantizedWeight& r, int64_t g,
                                   const QuantizerOptions& o) {
  int64_t param_mismatch = 0;
  for (int64_t c0 = 0, gi = 0; c0 < 96; c0 += g, ++gi) {
    const int64_t n = std::min<int64_t>(g, 96 - c0);
    at::Tensor x = w.narrow(1, c0, n).contiguous();
    RefParams p = RefFindParams(x, o);
    at::Tensor scale = r.scales.select(1, gi), zero = r.zeros.select(1, gi);
    at::Tensor same = (scale - p.scale).abs().le(1e-6 * p.scale.abs()).logical_and(
        (zero - p.zero).abs().le(1e-5));
    param_mismatch += (~same).sum().item<int64_t>();
    // Where parameters agree, the dequantized weights agree.
    at::Tensor ref_w = RefQuantizeDequant(x, p.scale, p.zero, o);
    at::Tensor got_w = r.weight.narrow(1, c0, n);
    at::Tensor rows_ok = same.unsqueeze(1).expand_as(x);
    EXPECT_TRUE(at::allclose(got_w.masked_select(rows_ok), ref_w.masked_select(rows_ok), 1e-5,
                             1e-6));
    EXPECT_TRUE(at::equal(r.g_idx.narrow(0, c0, n), at::full({n}, gi, at::kInt)));
  }
  return param_mismatch;
}

// A naive element loop reference for the quantize step on given params (w [48, 96]).
void ExpectQuantizeRowsMatchesElementLoop(const at::Tensor& w, const QuantizerOptions& o) {
  ASSERT_OK_AND_ASSIGN(QuantParams rp, FitRows(w, o));
  ASSERT_OK_AND_ASSIGN(at::Tensor q, QuantizeRows(w, rp, o));
  for (int64_t r = 0; r < 48; ++r) {
    const float s = rp.scale[r].item<float>(), z = rp.zero[r].item<float>();
    for (int64_t c = 0; c < 96; c += 7) {
      const float x = w[r][c].item<float>();
      int want;
      if (o.bits == 1 && o.one_bit == OneBitMode::kSign) {
        want = x >= 0 ? 1 : 0;
      } else {
        double t = o.mcmoe_float_zero ? std::nearbyint(x / s + z) : std::nearbyint(x / s) + z;
        want = static_cast<int>(std::min<double>(o.maxq(), std::max(0.0, t)));
      }
      ASSERT_EQ(q[r][c].item<int>(), want) << "row " << r << " col " << c;
    }
  }
}

TEST_P(QuantizerVsReferenceTest, MatchesReferencePort) {
  const QuantizerCase k = GetParam();
  const QuantizerOptions o = OptionsOf(k);
  at::manual_seed(k.bits * 100 + k.sym * 10 + k.mse);
  at::Tensor w = at::randn({48, 96});
  w.narrow(0, 0, 4).abs_();     // rows with xmin = 0
  w.narrow(0, 4, 2).zero_();    // all-zero rows
  w.narrow(0, 6, 2).mul_(-1e-3).sub_(1e-3);  // all-negative tiny rows
  for (int64_t group : {int64_t{-1}, int64_t{32}, int64_t{40}}) {
    SCOPED_TRACE(::testing::Message() << "group " << group);
    ASSERT_OK_AND_ASSIGN(QuantizedWeight r, QuantizeGroups(w, group, o));
    const int64_t g = group < 0 ? 96 : group;
    const int64_t param_mismatch = CompareGroupsWithReference(w, r, g, o);
    // Without a range search the arithmetic is identical; with it, a candidate whose error ties
    // another's to float rounding may be chosen differently (summation order) in rare rows.
    if (k.mse) {
      EXPECT_LE(param_mismatch, 2);
    } else {
      EXPECT_EQ(param_mismatch, 0);
    }
    // Codes dequantize to the returned weight exactly; codes are in range.
    EXPECT_TRUE(at::equal(DequantizeGroups(r.q, r.scales, r.zeros, r.g_idx), r.weight));
    EXPECT_LE(r.q.max().item<int>(), o.maxq());
    if (o.IntegerZero()) {
      EXPECT_TRUE(at::equal(r.zeros, r.zeros.round()));
    }
  }
  ExpectQuantizeRowsMatchesElementLoop(w, o);
}

std::vector<QuantizerCase> AllQuantizerCases() {
  std::vector<QuantizerCase> cases;
  for (int bits = 1; bits <= 8; ++bits) {
    for (bool sym : {false, true}) {
      for (bool mse : {false, true}) {
        cases.push_back({bits, sym, mse, false, RangeGrid::kReferenceShrink, OneBitMode::kMinMax});
      }
    }
    cases.push_back({bits, false, true, false, RangeGrid::kMcMoe, OneBitMode::kSign});
    cases.push_back({bits, false, true, true, RangeGrid::kMcMoe, OneBitMode::kSign});
    cases.push_back({bits, true, false, true, RangeGrid::kMcMoe, OneBitMode::kSign});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllModes, QuantizerVsReferenceTest,
                         ::testing::ValuesIn(AllQuantizerCases()),
                         [](const ::testing::TestParamInfo<QuantizerCase>& i) {
                           const QuantizerCase& k = i.param;
                           return "b" + std::to_string(k.bits) + (k.sym ? "_sym" : "_asym") +
                                  (k.mse ? "_mse" : "") + (k.float_zero ? "_floatzero" : "") +
                                  (k.grid == RangeGrid::kMcMoe ? "_mcmoegrid" : "") +
                                  (k.one_bit == OneBitMode::kSign ? "_sign1" : "_minmax1");
                         });

}  // namespace
}  // namespace moec::quant
