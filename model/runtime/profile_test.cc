// The forward's part of a task's profile (common/task_profile.h): the FLOPs it counts against a
// count made by hand from the model's shape, and its phases (load, forward, the observers'
// statistics) partitioning the time.
#include <chrono>

#include "common/task_profile.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "model/runtime/runtime_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::model {
namespace {

using ::moec::testing::TempDir;
using profile::Phase;

double Flops(const profile::TaskProfile& p, Phase phase) {
  return p.Snapshot()[static_cast<int>(phase)].flops;
}
double Seconds(const profile::TaskProfile& p, Phase phase) {
  return p.Snapshot()[static_cast<int>(phase)].seconds;
}

std::unique_ptr<ModelRunner> OpenMixtral(const TempDir& dir) { return OpenTinyMixtral(dir, 2, 3); }

// Every token through every projection, top_k experts of three matrices each, causal attention
// over S (S + 1) / 2 pairs per head, and the head's logits: 2 multiply-adds each.
TEST(ForwardProfileTest, CountsTheFlopsOfAForwardByHand) {
  TempDir dir;
  auto runner = OpenMixtral(dir);
  ASSERT_NE(runner, nullptr);
  const ModelConfig& c = runner->config();
  const int64_t batch = 3, seq = 10, tokens = batch * seq, d = c.hidden_size;
  const int64_t hd = c.head_dim, heads = c.num_attention_heads, kv = c.num_key_value_heads;
  const double per_layer =
      2.0 * tokens * d * (heads * hd + 2 * kv * hd) + 2.0 * tokens * heads * hd * d  // q k v o
      + 4.0 * batch * heads * hd * (seq * (seq + 1) / 2)                          // attention
      + 2.0 * tokens * d * c.num_experts                                       // router
      + 2.0 * tokens * c.num_experts_per_tok * 3 * d * c.moe_intermediate_size;    // experts
  const double expected = c.num_hidden_layers * per_layer + 2.0 * tokens * d * c.vocab_size;

  profile::TaskProfile p;
  {
    profile::BindToThread bind(&p);
    at::manual_seed(1);
    ASSERT_OK(runner->Forward(at::randint(0, c.vocab_size, {batch, seq}, at::kLong)).status());
  }
  EXPECT_DOUBLE_EQ(Flops(p, Phase::kForward), expected);
  EXPECT_EQ(Flops(p, Phase::kOther) + Flops(p, Phase::kLoad) + Flops(p, Phase::kStatistics), 0);
  EXPECT_GT(Seconds(p, Phase::kLoad), 0);
  EXPECT_GT(Seconds(p, Phase::kForward), 0);
}

// An observer's work is statistics, not forward, even though the forward calls it.
class SlowObserver : public ForwardObserver {
 public:
  void OnLayerInput(int layer, const at::Tensor& h) override {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(40);
    while (std::chrono::steady_clock::now() < end) {
    }
  }
};

TEST(ForwardProfileTest, ObserversTimeIsStatisticsNotForward) {
  TempDir dir;
  auto runner = OpenMixtral(dir);
  ASSERT_NE(runner, nullptr);
  profile::TaskProfile p;
  SlowObserver slow;
  const auto start = std::chrono::steady_clock::now();
  {
    profile::BindToThread bind(&p);
    ASSERT_OK(runner->Forward(at::zeros({1, 4}, at::kLong), &slow).status());
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double stats = Seconds(p, Phase::kStatistics), forward = Seconds(p, Phase::kForward);
  EXPECT_GE(stats, 2 * 0.04);  // one call per layer: not counted as forward alone
  EXPECT_LE(stats + forward, wall);  // nor as both
  profile::TaskProfile bare;
  {
    profile::BindToThread bind(&bare);
    ASSERT_OK(runner->Forward(at::zeros({1, 4}, at::kLong)).status());
  }
  EXPECT_EQ(Seconds(bare, Phase::kStatistics), 0);
  EXPECT_GT(Seconds(bare, Phase::kForward), 0);
}

}  // namespace
}  // namespace moec::model
