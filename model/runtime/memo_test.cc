// LayerMemo: a pass that reuses what earlier passes kept gives the bits a full pass gives with
// the final weights, computes only what the kept parts do not cover, and counts (rather than
// uses) kept MLP inputs that do not fit the call.
#include "common/task_profile.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "model/runtime/runtime_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::model {
namespace {

using ::moec::testing::TempDir;

std::unique_ptr<ModelRunner> OpenMixtral(const TempDir& dir) { return OpenTinyMixtral(dir, 1, 5); }

// A pass that stops where true-sequential GPTQ's group passes stop.
class ExtentObserver : public ForwardObserver {
 public:
  explicit ExtentObserver(LayerExtent e) : extent_(e) {}
  LayerExtent Extent(int) const override { return extent_; }

 private:
  LayerExtent extent_;
};

// Stands in for quantizing a weight: any change the kept parts must not depend on.
void Perturb(at::Tensor& w, double scale) { w = w * scale + 0.01; }

double ForwardFlops(const std::function<void()>& run) {
  profile::TaskProfile p;
  {
    profile::BindToThread bind(&p);
    run();
  }
  return p.Snapshot()[static_cast<int>(profile::Phase::kForward)].flops;
}

TEST(LayerMemoTest, PassesOverKeptPartsGiveTheBitsOfAFullPassWithTheFinalWeights) {
  TempDir dir;
  auto runner = OpenMixtral(dir);
  ASSERT_NE(runner, nullptr);
  ASSERT_OK_AND_ASSIGN(LayerWeights w, runner->LoadLayer(0));
  at::manual_seed(2);
  const at::Tensor h = at::randn({3, 10, 32});
  LayerMemo memo;
  const auto pass = [&](LayerExtent e, unsigned record) {
    memo.record = record;
    memo.Rewind();
    ExtentObserver o(e);
    return runner->RunLayer(w, h, &o, nullptr, &memo);
  };
  // q/k/v, o, gate/up and down change in turn; each pass keeps what no later change affects.
  pass(LayerExtent::kQkvInputs, 0);
  for (at::Tensor* t : {&w.attention.q, &w.attention.k, &w.attention.v}) Perturb(*t, 0.9);
  pass(LayerExtent::kOInput, LayerMemo::kAttended);
  Perturb(w.attention.o, 1.1);
  pass(LayerExtent::kGateUpInputs, LayerMemo::kAfterAttention);
  for (MlpWeights& e : w.moe->experts) {
    Perturb(e.gate, 0.8);
    Perturb(e.up, 1.2);
  }
  pass(LayerExtent::kDownInputs, LayerMemo::kMlpHidden);
  for (MlpWeights& e : w.moe->experts) Perturb(e.down, 0.7);
  EXPECT_TRUE(memo.attended.defined());
  EXPECT_TRUE(memo.after_attention.defined());
  EXPECT_FALSE(memo.mlp_hidden.empty());

  at::Tensor reused;
  const double flops = ForwardFlops([&] { reused = pass(LayerExtent::kAll, 0); });
  const at::Tensor full = runner->RunLayer(w, h);
  EXPECT_TRUE(at::equal(reused, full));
  EXPECT_EQ(memo.misses, 0);
  // Only the router and the down projections ran: 2 multiply-adds per token and weight.
  const ModelConfig& c = runner->config();
  const int64_t tokens = 30, d = c.hidden_size;
  EXPECT_DOUBLE_EQ(flops, 2.0 * tokens * d * c.num_experts +
                              2.0 * tokens * c.num_experts_per_tok * d * c.moe_intermediate_size);
  EXPECT_GT(ForwardFlops([&] { runner->RunLayer(w, h); }), 4 * flops);
}

TEST(LayerMemoTest, KeptMlpInputsThatDoNotFitTheCallAreCountedAndRecomputed) {
  TempDir dir;
  auto runner = OpenMixtral(dir);
  ASSERT_NE(runner, nullptr);
  ASSERT_OK_AND_ASSIGN(LayerWeights w, runner->LoadLayer(0));
  at::manual_seed(3);
  LayerMemo memo;
  memo.record = LayerMemo::kMlpHidden;
  runner->RunLayer(w, at::randn({3, 10, 32}), nullptr, nullptr, &memo);
  // One token: one row for each of its experts, where every kept input has many.
  const at::Tensor other = at::randn({1, 1, 32});
  memo.record = 0;
  memo.Rewind();
  const at::Tensor y = runner->RunLayer(w, other, nullptr, nullptr, &memo);
  EXPECT_GT(memo.misses, 0);
  EXPECT_TRUE(at::equal(y, runner->RunLayer(w, other)));
}

}  // namespace
}  // namespace moec::model
