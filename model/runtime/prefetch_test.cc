// LayerPrefetcher: the order, errors and thread of its loads, and the forward with layers loaded
// ahead against the forward without.
#include "model/runtime/prefetch.h"

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/runtime/forward.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::model {
namespace {

using ::moec::testing::StatusIs;

LayerWeights Layer(int l) {
  LayerWeights w;
  w.layer = l;
  w.input_norm = at::full({4}, static_cast<float>(l));
  return w;
}

TEST(LayerPrefetcherTest, YieldsLayersInOrderLoadingOneAheadOnAnotherThread) {
  for (bool ahead : {false, true}) {
    std::vector<int> loaded;
    std::vector<std::thread::id> threads;
    std::mutex mu;
    LayerPrefetcher layers(
        [&](int l) -> absl::StatusOr<LayerWeights> {
          std::lock_guard<std::mutex> lock(mu);
          loaded.push_back(l);
          threads.push_back(std::this_thread::get_id());
          return Layer(l);
        },
        4, at::kCPU, ahead);
    for (int l = 0; l < 4; ++l) {
      ASSERT_OK_AND_ASSIGN(LayerWeights w, layers.Next());
      EXPECT_EQ(w.layer, l);
      EXPECT_EQ(w.input_norm[0].item<float>(), static_cast<float>(l));
      std::lock_guard<std::mutex> lock(mu);
      // Ahead: layer l + 1 is already asked for (or being loaded) when l is handed out.
      EXPECT_GE(static_cast<int>(loaded.size()), ahead ? std::min(l + 1, 4) : l + 1);
    }
    EXPECT_THAT(layers.Next().status(), StatusIs(absl::StatusCode::kOutOfRange));
    EXPECT_EQ(loaded, (std::vector<int>{0, 1, 2, 3}));
    for (const std::thread::id& id : threads) {
      EXPECT_EQ(id != std::this_thread::get_id(), ahead);
    }
  }
}

TEST(LayerPrefetcherTest, AFailedLoadIsReturnedAndNothingAfterItIsLoaded) {
  std::atomic<int> calls{0};
  LayerPrefetcher layers(
      [&](int l) -> absl::StatusOr<LayerWeights> {
        ++calls;
        if (l == 1) return absl::DataLossError("layer 1 is corrupt");
        return Layer(l);
      },
      4, at::kCPU, /*ahead=*/true);
  ASSERT_OK(layers.Next().status());
  EXPECT_THAT(layers.Next().status(), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(calls.load(), 2);
}

TEST(LayerPrefetcherTest, ForEachTensorVisitsEveryDefinedTensor) {
  LayerWeights w = Layer(0);
  w.attention.q = at::ones({2, 2});
  w.moe.emplace();
  w.moe->router = at::ones({3, 2});
  w.moe->experts.resize(3);
  for (MlpWeights& e : w.moe->experts) e = {at::ones({2, 2}), at::ones({2, 2}), at::ones({2, 2})};
  int n = 0;
  ForEachTensor(w, [&](at::Tensor& t) {
    ++n;
    t.zero_();
  });
  EXPECT_EQ(n, 1 + 1 + 1 + 9);
  EXPECT_EQ(w.moe->experts[2].down.sum().item<float>(), 0.0f);
}

// Loading ahead changes where layers are read, not what is computed: the same bits.
TEST(LayerPrefetcherTest, ForwardAndPerplexityWithLayersLoadedAheadAreBitIdentical) {
  testing::TempDir dir;
  tools::TinyModelOptions o;
  o.model_type = "mixtral";
  o.num_layers = 3;
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  RunnerOptions plain, ahead;
  plain.prefetch_layers = false;
  ahead.prefetch_layers = true;
  ASSERT_OK_AND_ASSIGN(auto a, ModelRunner::Open(dir.Join("m"), plain));
  ASSERT_OK_AND_ASSIGN(auto b, ModelRunner::Open(dir.Join("m"), ahead));
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, o.vocab, {3, 12}, at::kLong);
  ASSERT_OK_AND_ASSIGN(at::Tensor la, a->Forward(tokens));
  ASSERT_OK_AND_ASSIGN(at::Tensor lb, b->Forward(tokens));
  EXPECT_TRUE(at::equal(la, lb));
  TokenWindows windows;
  windows.seqlen = 12;
  const at::Tensor t32 = tokens.to(at::kInt).contiguous();
  windows.tokens.assign(t32.data_ptr<int32_t>(), t32.data_ptr<int32_t>() + t32.numel());
  ASSERT_OK_AND_ASSIGN(PerplexityResult pa, a->Perplexity(windows));
  ASSERT_OK_AND_ASSIGN(PerplexityResult pb, b->Perplexity(windows));
  EXPECT_EQ(pa.mean_nll, pb.mean_nll);
}

}  // namespace
}  // namespace moec::model
