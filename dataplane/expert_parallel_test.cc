#include "dataplane/expert_parallel.h"

#include <ATen/ATen.h>

#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "comm/gang_test_util.h"
#include "dataplane/stage_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/runtime/layers.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::dataplane {

using ::moec::testing::TempDir;

using comm::OnRanks;

namespace {

TEST(AssignExpertsTest, LongestFirstToTheLeastLoadedRank) {
  // By count: e1 (9) -> 0; e3 (7) -> 1; e4 (5) -> 1 (12); e0 (3) -> 0 (12); e5 (3): loads and
  // expert counts tie, so rank 0 (15); e2 (1) -> 1 (13).
  EXPECT_EQ(AssignExperts({3, 9, 1, 7, 5, 3}, 2), (std::vector<int>{0, 0, 1, 1, 1, 0}));
  // Without counts, experts spread evenly.
  EXPECT_EQ(AssignExperts({0, 0, 0, 0}, 3), (std::vector<int>{0, 1, 2, 0}));
  EXPECT_EQ(AssignExperts({4, 4}, 1), (std::vector<int>{0, 0}));
}

TEST(ChunkPlanTest, RoundRobinChunksInGlobalOrder) {
  ChunkPlan p;
  p.windows = 20;
  p.chunk_windows = 8;
  p.ranks = 2;
  p.rank = 1;
  EXPECT_EQ(p.chunks(), 3);
  EXPECT_EQ(p.rounds(), 2);
  EXPECT_EQ(p.ChunkOf(0), 1);
  EXPECT_EQ(p.ChunkOf(1), -1);
  EXPECT_EQ(p.Count(2), 4);
}

TEST(ChunkPlanTest, DefaultChunksHoldEightWindowsAndTheRecipesTokens) {
  // 4096 tokens of 128-token windows; never fewer than 8 windows.
  EXPECT_EQ(DefaultChunkWindows(128, 4096), 32);
  EXPECT_EQ(DefaultChunkWindows(100, 4096), 41);
  EXPECT_EQ(DefaultChunkWindows(512, 4096), 8);
  EXPECT_EQ(DefaultChunkWindows(2048, 4096), 8);
  EXPECT_EQ(DefaultChunkWindows(2048, 65536), 32);
  // chunk_tokens 0: 8 windows, as before it existed.
  EXPECT_EQ(DefaultChunkWindows(12, 0), 8);
}

TEST(ChunkPlanTest, GangsGetAtLeastTwoChunksPerRank) {
  // 128 x 2048 calibration tokens: 16 chunks of 8 windows for up to 8 ranks, then smaller.
  EXPECT_EQ(GangChunkWindows(128, 2048, 4096, 1), 8);
  EXPECT_EQ(GangChunkWindows(128, 2048, 4096, 8), 8);
  EXPECT_EQ(GangChunkWindows(128, 2048, 4096, 32), 2);   // 64 chunks
  EXPECT_EQ(GangChunkWindows(128, 2048, 4096, 64), 1);   // 128 chunks
  EXPECT_EQ(GangChunkWindows(128, 2048, 4096, 256), 1);  // never empty
  // 64 windows of 128 tokens (the shipped recipes): 2 chunks alone, 4 for a gang of 2.
  EXPECT_EQ(GangChunkWindows(64, 128, 4096, 1), 32);
  EXPECT_EQ(GangChunkWindows(64, 128, 4096, 2), 16);
  EXPECT_EQ(GangChunkWindows(64, 128, 4096, 3), 10);
}

TEST(ExpertParallelExecutorTest, MoeBlockOutputIsBitIdenticalToTheLocalOne) {
  at::manual_seed(5);
  model::ModelConfig config;
  config.model_type = "mixtral";
  config.hidden_size = 16;
  const int experts = 5;
  model::MoeWeights w;
  w.router = at::randn({experts, 16});
  for (int e = 0; e < experts; ++e) {
    w.experts.push_back({at::randn({24, 16}) * 0.2, at::randn({24, 16}) * 0.2,
                         at::randn({16, 24}) * 0.2});
  }
  model::RoutingRule rule;
  rule.top_k = 2;
  std::vector<at::Tensor> xs;
  for (int r = 0; r < 3; ++r) xs.push_back(at::randn({3 * 7, 16}));
  for (int size : {1, 2, 3}) {
    OnRanks(size, [&](comm::Communicator& c) {
      ExpertParallelExecutor executor(&c, AssignExperts({5, 1, 4, 2, 3}, c.size()));
      // Rank r handles xs[r], ..., so every rank runs the same number of blocks.
      for (int i = c.rank(); i < 3 + (size - 3 % size) % size; i += size) {
        if (i >= 3) {
          executor.Run(0, w, at::empty({0, 16}), std::vector<int64_t>(experts, 0),
                       at::empty({0}, at::kLong), nullptr, nullptr);
          continue;
        }
        at::Tensor local = model::MoeBlock(config, 0, w, rule, xs[i], 7, {}, nullptr);
        at::Tensor spread = model::MoeBlock(config, 0, w, rule, xs[i], 7, {}, nullptr, &executor);
        ASSERT_TRUE(executor.status().ok()) << executor.status();
        EXPECT_TRUE(at::equal(local, spread)) << "W=" << size << " chunk " << i;
      }
    });
  }
}

}  // namespace
}  // namespace moec::dataplane
