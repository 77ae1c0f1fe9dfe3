// Tests of GPTQ's device-generic ATen solve (GptqEngine::kAten, quant/gptq_aten.cc) on the CPU,
// where its oracles are the CPU kernels (same prepared Hessian: the same bits) and the naive
// double-precision GPTQ of gptq_test_util.h. On a GPU the same code runs with the tensors there
// (tests/gpu/gpu_stage_test.cc compares it against the CPU).
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/device_quantizer.h"
#include "quant/gptq.h"
#include "quant/gptq_test_util.h"
#include "quant/quantizer.h"
#include "tests/testing/status_matchers.h"

namespace moec::quant {
namespace {

using ::moec::testing::StatusIs;
using gptq_testing::CorrelatedInputs;
using gptq_testing::ExpectMatchesNaive;
using gptq_testing::HessianOf;

struct AtenCase {
  std::string name;
  GptqOptions options;
  // No range search (pow) and no 1-bit sign scale (a double sum): then the two agree to the bit.
  bool exact;
};

// A case named `name`: blocks of 32, then `edit`.
template <typename Edit>
void Add(std::vector<AtenCase>& cases, std::string name, Edit edit) {
  GptqOptions o;
  o.blocksize = 32;
  edit(o);
  const QuantizerOptions& q = o.quantizer;
  cases.push_back({std::move(name), o, !q.mse && !(q.bits == 1 && q.one_bit == OneBitMode::kSign)});
}

// Groups, orders and the compat switches.
std::vector<AtenCase> SolveCases() {
  std::vector<AtenCase> cases;
  auto add = [&](std::string name, auto edit) { Add(cases, std::move(name), edit); };
  add("w4_row", [](GptqOptions& o) { o.quantizer.bits = 4; });
  add("w3_g16_act", [](GptqOptions& o) {
    o.quantizer.bits = 3;
    o.groupsize = 16;
    o.actorder = true;
  });
  add("w4_g16_static_act_sym", [](GptqOptions& o) {
    o.groupsize = 16;
    o.static_groups = true;
    o.actorder = true;
    o.quantizer.sym = true;
  });
  add("w2_g48_crossing_blocks", [](GptqOptions& o) {
    o.quantizer.bits = 2;
    o.groupsize = 48;
  });
  add("w3_g24_reference_group_fit", [](GptqOptions& o) {
    o.quantizer.bits = 3;
    o.groupsize = 24;
    o.reference_group_fit = true;
  });
  add("w2_mcmoe_feedback_float_zero", [](GptqOptions& o) {
    o.quantizer = McMoeQuantizerOptions(2, /*float_zero=*/true);
    o.quantizer.mse = false;
    o.groupsize = 16;
    o.mcmoe_blockwise_feedback = true;
  });
  return cases;
}

// The other quantizers and the reference factorisation, after SolveCases().
std::vector<AtenCase> Cases() {
  std::vector<AtenCase> cases = SolveCases();
  auto add = [&](std::string name, auto edit) { Add(cases, std::move(name), edit); };
  add("w1_sign", [](GptqOptions& o) {
    o.quantizer = McMoeQuantizerOptions(1);
    o.groupsize = 16;
  });
  add("w3_g24_rgf_oneblock", [](GptqOptions& o) {
    o.quantizer.bits = 3;
    o.groupsize = 24;
    o.blocksize = 128;
    o.reference_group_fit = true;
  });
  add("w8_reference_factor", [](GptqOptions& o) {
    o.quantizer.bits = 8;
    o.inverse_factor = InverseFactorMethod::kReference;
  });
  add("w3_mse_reference_grid", [](GptqOptions& o) {
    o.quantizer.bits = 3;
    o.quantizer.mse = true;
    o.groupsize = 16;
  });
  add("w2_mse_mcmoe_grid_act", [](GptqOptions& o) {
    o.quantizer = McMoeQuantizerOptions(2);
    o.groupsize = 32;
    o.actorder = true;
  });
  return cases;
}

class GptqAtenTest : public ::testing::TestWithParam<AtenCase> {};

TEST_P(GptqAtenTest, SameBitsAsTheCpuKernelsAndMatchesNaive) {
  const AtenCase& k = GetParam();
  const int64_t out = 24, in = 104;  // 4 blocks of 32 (the last 8)
  at::Tensor x = CorrelatedInputs(300, in, 31);
  x.select(1, 5).zero_();  // a dead column
  at::manual_seed(32);
  const at::Tensor w = at::randn({out, in});
  const at::Tensor h = HessianOf(x) / 300.0;
  GptqOptions aten = k.options;
  aten.engine = GptqEngine::kAten;

  // With the CPU kernels' prepared Hessian, the ATen solve is the panel kernel's arithmetic.
  ASSERT_OK_AND_ASSIGN(GptqHessian prepared, PrepareGptqHessian(h, k.options));
  ASSERT_OK_AND_ASSIGN(GptqResult kernel, GptqQuantize(w, prepared, k.options));
  ASSERT_OK_AND_ASSIGN(GptqResult solve, GptqQuantize(w, prepared, aten));
  EXPECT_EQ(solve.dead_columns, 1);
  const double differing = solve.q.ne(kernel.q).sum().item<double>() / solve.q.numel();
  if (k.exact) {
    EXPECT_TRUE(at::equal(solve.q, kernel.q));
    EXPECT_TRUE(at::equal(solve.weight, kernel.weight));
    EXPECT_TRUE(at::equal(solve.scales, kernel.scales));
    EXPECT_TRUE(at::equal(solve.zeros, kernel.zeros));
  } else {
    EXPECT_LE(differing, 0.01) << "codes differ from the panel kernel's";
    EXPECT_TRUE(at::allclose(solve.scales, kernel.scales, 1e-4, 1e-7));
  }
  EXPECT_TRUE(at::equal(solve.g_idx, kernel.g_idx));
  EXPECT_TRUE(at::equal(solve.perm, kernel.perm));
  EXPECT_NEAR(solve.total_loss, kernel.total_loss, 1e-4 * kernel.total_loss + 1e-9);
  EXPECT_TRUE(at::allclose(solve.column_loss, kernel.column_loss, 1e-4, 1e-7));

  // The whole ATen path (its own Cholesky and triangular inverse) against the naive oracle.
  ASSERT_OK_AND_ASSIGN(GptqResult whole, GptqQuantize(w, h, aten));
  ExpectMatchesNaive(whole, w, h, aten);
}

INSTANTIATE_TEST_SUITE_P(Options, GptqAtenTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<AtenCase>& i) { return i.param.name; });

TEST(GptqAtenTest, RowFitsAreFitRowsOnEveryRow) {
  at::manual_seed(35);
  const at::Tensor x = at::randn({64, 24}) * at::rand({64, 1}) + 0.3 * at::rand({64, 1});
  for (const AtenCase& k : Cases()) {
    SCOPED_TRACE(k.name);
    const QuantizerOptions& qo = k.options.quantizer;
    ASSERT_OK_AND_ASSIGN(QuantParams cpu, FitRows(x, qo));
    auto [s, z] = internal::FitRowsOnDevice(x, qo);
    if (k.exact && qo.bits > 1) {
      EXPECT_TRUE(at::equal(s, cpu.scale)) << (s - cpu.scale).abs().max();
      EXPECT_TRUE(at::equal(z, cpu.zero));
    } else {
      EXPECT_LE(s.ne(cpu.scale).sum().item<int64_t>(), 2);
      EXPECT_TRUE(at::allclose(s, cpu.scale, 1e-6, 0));
    }
  }
}

TEST(GptqAtenTest, RoundToNearestGroupsAreQuantizeGroups) {
  at::manual_seed(36);
  const at::Tensor w = at::randn({40, 72});
  for (const AtenCase& k : Cases()) {
    for (int64_t g : {int64_t{-1}, int64_t{32}}) {
      SCOPED_TRACE(::testing::Message() << k.name << " group " << g);
      const QuantizerOptions& qo = k.options.quantizer;
      ASSERT_OK_AND_ASSIGN(QuantizedWeight cpu, QuantizeGroups(w, g, qo));
      const QuantizedWeight dev = internal::QuantizeGroupsOnDevice(w, g, qo);
      EXPECT_TRUE(at::equal(dev.g_idx, cpu.g_idx));
      if (k.exact && qo.bits > 1) {
        EXPECT_TRUE(at::equal(dev.q, cpu.q));
        EXPECT_TRUE(at::equal(dev.weight, cpu.weight));
        EXPECT_TRUE(at::equal(dev.scales, cpu.scales));
      } else {
        EXPECT_LE(dev.q.ne(cpu.q).sum().item<int64_t>(), 4);
        EXPECT_TRUE(at::allclose(dev.scales, cpu.scales, 1e-6, 0));
      }
    }
  }
}

TEST(GptqAtenTest, InverseFactorEqualsTheLapackOne) {
  at::Tensor x = CorrelatedInputs(500, 96, 33);
  at::Tensor h = HessianOf(x) / 500.0;
  for (bool actorder : {false, true}) {
    GptqOptions o;
    o.actorder = actorder;
    GptqOptions aten = o;
    aten.engine = GptqEngine::kAten;
    ASSERT_OK_AND_ASSIGN(GptqHessian lapack, PrepareGptqHessian(h, o));
    ASSERT_OK_AND_ASSIGN(GptqHessian ours, PrepareGptqHessian(h, aten));
    EXPECT_TRUE(at::equal(lapack.perm, ours.perm));
    EXPECT_TRUE(at::allclose(ours.u, lapack.u, 1e-4, 1e-6)) << (ours.u - lapack.u).abs().max();
    EXPECT_TRUE(at::equal(ours.u, ours.u.triu()));
  }
}

TEST(GptqAtenTest, FallbacksAndErrors) {
  at::manual_seed(34);
  const at::Tensor w = at::randn({8, 32});
  GptqOptions o;
  o.groupsize = 8;
  o.engine = GptqEngine::kAten;
  // No calibration token: RTN with the weights kept (decision 12), as on the CPU kernels.
  ASSERT_OK_AND_ASSIGN(GptqResult fb, GptqQuantize(w, at::zeros({32, 32}), o));
  EXPECT_TRUE(fb.identity_fallback);
  ASSERT_OK_AND_ASSIGN(QuantizedWeight rtn, QuantizeGroups(w, 8, o.quantizer));
  EXPECT_TRUE(at::equal(fb.q, rtn.q));
  EXPECT_TRUE(at::equal(fb.weight, rtn.weight));
  // Non-finite inputs and an indefinite Hessian are refused with the kernels' codes.
  at::Tensor bad = w.clone();
  bad[2][3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(GptqQuantize(bad, at::eye(32), o),
              StatusIs(absl::StatusCode::kInvalidArgument, ::testing::HasSubstr("non-finite")));
  at::Tensor h = at::eye(32);
  h[4][4] = -5.0f;
  o.percdamp = 0;
  EXPECT_THAT(GptqQuantize(w, h, o), StatusIs(absl::StatusCode::kFailedPrecondition,
                                              ::testing::HasSubstr("not positive definite")));
  at::Tensor hnan = at::eye(32);
  hnan[1][2] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(GptqQuantize(w, hnan, o), StatusIs(absl::StatusCode::kInvalidArgument,
                                                 ::testing::HasSubstr("non-finite")));
}

}  // namespace
}  // namespace moec::quant
