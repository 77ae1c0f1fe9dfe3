// Tests of the Hessian accumulation (HessianAccumulator, quant/gptq.h).
#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/gptq.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

TEST(HessianAccumulatorTest, RunningAverageCountsSamples) {
  const int64_t in = 12;
  HessianAccumulator acc(in);
  at::manual_seed(30);
  std::vector<std::pair<at::Tensor, int64_t>> batches = {
      {at::randn({7, in}), 1}, {at::randn({2, 5, in}), 2}, {at::randn({0, in}), 1},
      {at::randn({3, in}), 1}};
  at::Tensor sum = at::zeros({in, in}, at::kDouble);
  int64_t n = 0, tokens = 0;
  for (auto& [x, s] : batches) {
    ASSERT_OK(acc.Add(x, s));
    at::Tensor f = x.reshape({-1, in}).to(at::kDouble);
    sum += at::matmul(f.t(), f);
    n += s;
    tokens += f.size(0);
  }
  EXPECT_EQ(acc.samples(), 5);
  EXPECT_EQ(acc.tokens(), tokens);
  at::Tensor want = (2.0 / n) * sum;
  EXPECT_TRUE(at::allclose(acc.hessian().to(at::kDouble), want, 1e-5, 1e-5));
  bool fb = true;
  EXPECT_TRUE(at::equal(acc.HessianForSolve(tokens, &fb), acc.hessian()));
  EXPECT_FALSE(fb);
  EXPECT_TRUE(at::equal(acc.HessianForSolve(tokens + 1, &fb), at::eye(in)));
  EXPECT_TRUE(fb);
}

// Add scales H inside the GEMM (beta); the bits are those of scaling H first and adding the
// product after, which is what the accumulation did before and what GPTQ's outputs were.
TEST(HessianAccumulatorTest, ScalingInsideTheGemmKeepsTheBitsOfScalingFirst) {
  at::manual_seed(31);
  for (int64_t in : {64, 1000, 2816}) {
    HessianAccumulator acc(in);
    at::Tensor h = at::zeros({in, in});
    int64_t n = 0;
    for (int64_t rows : {37, 256, 0, 300}) {
      const at::Tensor x = at::randn({rows, in});
      ASSERT_OK(acc.Add(x, 2));
      const double n_old = static_cast<double>(n);
      n += 2;
      h.mul_(n_old / n);
      h.addmm_(x.t(), x, /*beta=*/1.0, /*alpha=*/2.0 / n);
    }
    EXPECT_TRUE(at::equal(acc.hessian(), h)) << in;
  }
}

TEST(HessianAccumulatorTest, AddGramMatchesAddOfTheRows) {
  const int64_t in = 10;
  HessianAccumulator rows(in), grams(in);
  at::manual_seed(31);
  for (auto [t, s] : std::vector<std::pair<int64_t, int64_t>>{{6, 1}, {0, 1}, {9, 3}}) {
    at::Tensor x = at::randn({t, in});
    ASSERT_OK(rows.Add(x, s));
    ASSERT_OK(grams.AddGram(at::matmul(x.t(), x), t, s));
  }
  EXPECT_EQ(grams.samples(), rows.samples());
  EXPECT_EQ(grams.tokens(), rows.tokens());
  EXPECT_TRUE(at::allclose(grams.hessian(), rows.hessian(), 1e-5, 1e-6));
  EXPECT_THAT(grams.AddGram(at::zeros({in, in + 1}), 1, 1),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(grams.AddGram(at::zeros({in, in}), 3, 0),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(HessianAccumulatorTest, NoTokensFallsBackAndBadInputIsRejected) {
  HessianAccumulator acc(4);
  bool fb = false;
  EXPECT_TRUE(at::equal(acc.HessianForSolve(0, &fb), at::eye(4)));
  EXPECT_TRUE(fb);
  EXPECT_THAT(acc.Add(at::ones({3, 5}), 1),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(acc.Add(at::ones({3, 4}), 0),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(acc.Add(at::ones({3, 4}, at::kInt), 1),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_OK(acc.Add(at::ones({0, 4}), 0));
  EXPECT_EQ(acc.samples(), 0);
}

}  // namespace
}  // namespace moec::quant
