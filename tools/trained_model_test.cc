// Quality of the default trained tiny models (Mixtral- and DeepSeek-style) that the demo, the
// quality tests of the stages and the benchmarks use: trained once per build tree (cached in
// MOEC_TINY_MODEL_CACHE, default <build>/tiny-models) on /usr/share/common-licenses.
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config.h"
#include "tests/testing/status_matchers.h"
#include "tools/trainer.h"

namespace moec::tools {

using model::LoadModelConfig;
using model::ModelConfig;

namespace {

std::string CacheDir() {
  const char* env = std::getenv("MOEC_TINY_MODEL_CACHE");
  return env != nullptr ? env : MOEC_DEFAULT_TINY_MODEL_CACHE;
}

class TrainedModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainedModelTest, PerplexityFarBelowUnigramAndRoutersNotUniform) {
  TrainOptions o;
  o.arch = GetParam();
  const std::string dir = CacheDir() + "/" + GetParam();
  ASSERT_OK_AND_ASSIGN(TrainReport r, TrainOrReuseTinyModel(o, dir));
  std::printf("%s: %s, held-out perplexity %.2f, unigram %.2f, router entropy %.3f, %.0f s\n",
              GetParam().c_str(), r.reused ? "reused" : "trained", r.heldout_perplexity,
              r.unigram_perplexity, r.router_entropy, r.seconds);
  EXPECT_LT(r.heldout_perplexity, 0.35 * r.unigram_perplexity);
  EXPECT_LT(r.router_entropy, 0.9);
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir));
  EXPECT_EQ(c.model_type, GetParam());
  EXPECT_EQ(c.num_experts, 8);
}

INSTANTIATE_TEST_SUITE_P(Default, TrainedModelTest, ::testing::Values("mixtral", "deepseek"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace moec::tools
