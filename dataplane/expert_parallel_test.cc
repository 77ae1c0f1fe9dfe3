#include "dataplane/expert_parallel.h"

#include <ATen/ATen.h>

#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "dataplane/map_factor_io_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/runtime/layers.h"
#include "stages/calibrate_stage.h"
#include "stages/expert_prune_stage.h"
#include "stages/prune_weights_stage.h"
#include "stages/quant_loss_stage.h"
#include "stages/quantize_stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::dataplane {

using stages::CalibrateStage;
using stages::ExpertPruneStage;
using stages::PruneWeightsStage;
using stages::QuantLossStage;
using stages::QuantizeStage;

using ::moec::testing::TempDir;

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

// Runs fn(rank) on one thread per rank of a group of `size`: in memory, or real Gloo over
// loopback TCP.
void OnRanks(int size, const std::function<void(comm::Communicator&)>& fn, bool gloo = false) {
  std::vector<std::thread> threads;
  if (!gloo) {
    auto group = comm::NewLocalGroup(size);
    for (auto& c : group) threads.emplace_back([&fn, &c] { fn(*c); });
    for (auto& t : threads) t.join();
    return;
  }
  auto store = comm::NewMemoryRendezvousStore();
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      comm::GlooOptions o;
      o.rank = r;
      o.size = size;
      o.timeout = absl::Seconds(30);
      auto c = comm::NewGlooCommunicator(store, o);
      ASSERT_TRUE(c.ok()) << c.status();
      fn(**c);
    });
  }
  for (auto& t : threads) t.join();
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
                       at::empty({0}, at::kLong), nullptr);
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

// MapFactorIo for concurrent ranks: one lock, and per-rank task fingerprints.
class SharedStore {
 public:
  class Io : public FactorIo {
   public:
    Io(SharedStore* s, std::string fp) : s_(s), fp_(std::move(fp)) {}
    absl::StatusOr<std::string> PutOutput(absl::string_view name, storage::DType dtype,
                                          absl::Span<const int64_t> shape,
                                          absl::string_view data) override {
      std::lock_guard<std::mutex> lock(s_->mu_);
      MapFactorIo io(&s_->factors_);
      io.SetTask(fp_);
      return io.PutOutput(name, dtype, shape, data);
    }
    absl::StatusOr<storage::Factor> Get(absl::string_view key) override {
      std::lock_guard<std::mutex> lock(s_->mu_);
      MapFactorIo io(&s_->factors_);
      return io.Get(key);
    }

   private:
    SharedStore* s_;
    std::string fp_;
  };
  std::map<std::string, storage::Factor>& factors() { return factors_; }

 private:
  std::mutex mu_;
  std::map<std::string, storage::Factor> factors_;
};

class QuantizeGangTest : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

// Every output of gptq and rtn (codes, scales, hidden chunks, summary), of calibrate (router
// statistics, hidden chunks), of quant_loss (per-expert losses) and of prune_weights (Wanda,
// SparseGPT and 2:4, shared experts included: pruned matrices, hidden chunks, summary) is
// byte-identical for gangs of 1, 2 and 3 ranks: the determinism the data plane promises
// (docs/data_plane.md).
TEST_P(QuantizeGangTest, OutputsAreTheSameBytesForEveryGangSize) {
  TempDir dir;
  tools::TinyModelOptions o;
  const auto [arch, gloo] = GetParam();
  o.model_type = arch;
  o.num_layers = 2;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 5;
  o.moe_intermediate = 24;
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("model")));
  std::string text;
  for (int i = 0; i < 80; ++i) text += "experts share the tokens of layer " + std::to_string(i) + "\n";
  dir.WriteFile("calib.txt", text);
  for (const std::string kind :
       {"gptq", "rtn", "calibrate", "quant_loss", "prune_wanda", "prune_sparsegpt", "prune_2of4",
        "expert_layerwise", "expert_progressive", "expert_greedy"}) {
    // Stages that read the calibrate chain run after it, under fingerprints S<layer>.
    const bool needs_stats = kind == "quant_loss" || kind.rfind("expert_", 0) == 0;
    nlohmann::json stages = {{{"id", "q"}, {"kind", kind}, {"needs", nlohmann::json::array()}}};
    if (needs_stats) {
      stages = {{{"id", "stats"}, {"kind", "calibrate"}, {"needs", nlohmann::json::array()}},
                {{"id", "q"}, {"kind", kind.rfind("expert_", 0) == 0 ? "expert_prune" : kind},
                 {"needs", {"stats"}}}};
    }
    const nlohmann::json recipe = {
        {"model", dir.Join("model")},
        {"calibration", {{"path", dir.Join("calib.txt")}, {"samples", 20}, {"seqlen", 12}, {"seed", 3}}},
        {"stages", stages}};
    nlohmann::json params = {{"bits", 3},       {"attn_bits", 4}, {"shared_bits", 4},
                             {"group_size", 16}, {"act_order", true}, {"true_sequential", true},
                             {"damp", 0.01}};
    if (kind == "quant_loss") params["bits"] = {1, 2, 3};
    if (kind.rfind("prune_", 0) == 0) {
      params = {{"method", kind == "prune_wanda" ? "wanda" : "sparsegpt"},
                {"sparsity", 0.5},
                {"pattern", kind == "prune_2of4" ? "2:4" : "unstructured"},
                {"shared_experts", true}};
    }
    if (kind.rfind("expert_", 0) == 0) {
      // 5 experts keep 3: C(5, 2) = 10 candidates exhaustively, or greedy with a limit of 1.
      params = {{"keep", 3},
                {"mode", kind == "expert_progressive" ? "progressive" : "layerwise"},
                {"batch_size", 8},
                {"exhaustive_limit", kind == "expert_greedy" ? 1 : 100000}};
    }
    std::map<int, std::map<std::string, std::string>> outputs;  // gang size -> name -> bytes
    for (int size : {1, 2, 3}) {
      SharedStore store;
      for (int layer = 0; layer < 2; ++layer) {
        const std::map<std::string, std::string> inputs = {
            {"job/q/L0", "L0"}, {"job/stats/L0", "S0"}, {"job/stats/L1", "S1"}};
        // Runs stage `id` of layer `layer` on every rank; its outputs go under `fp`.
        auto run = [&](const std::string& id, const std::string& fp, const std::string& what) {
          OnRanks(size, [&](comm::Communicator& c) {
            v1::TaskRecord task;
            task.set_job_id("job");
            task.set_stage_id(id);
            task.set_layer(layer);
            task.set_task_id("job/" + id + "/L" + std::to_string(layer));
            SharedStore::Io io(&store, fp);
            StageContext ctx;
            ctx.task = &task;
            ctx.params = params;
            ctx.recipe = recipe;
            ctx.inputs = inputs;
            ctx.rank = c.rank();
            ctx.group.resize(c.size());
            ctx.comm = &c;
            ctx.io = &io;
            QuantizeStage quantize(what == "gptq");
            CalibrateStage calibrate;
            QuantLossStage quant_loss;
            PruneWeightsStage prune;
            ExpertPruneStage expert_prune;
            absl::Status s = what == "calibrate"              ? calibrate.Run(ctx)
                             : what == "quant_loss"           ? quant_loss.Run(ctx)
                             : what.rfind("prune_", 0) == 0  ? prune.Run(ctx)
                             : what.rfind("expert_", 0) == 0 ? expert_prune.Run(ctx)
                                                              : quantize.Run(ctx);
            EXPECT_TRUE(s.ok()) << what << " W=" << size << " rank " << c.rank() << ": " << s;
          }, gloo);
        };
        if (needs_stats) run("stats", "S" + std::to_string(layer), "calibrate");
        run("q", "L" + std::to_string(layer), kind);
      }
      for (const auto& [key, f] : store.factors()) outputs[size][key] = f.data;
    }
    ASSERT_FALSE(outputs[1].empty());
    // 20 windows: chunks of 8, 8, 4.
    const bool chain = !needs_stats || kind == "expert_progressive";
    EXPECT_EQ(outputs[1].count(chain ? "L1/hidden.c00002" : "S1/hidden.c00002"), 1u) << kind;
    EXPECT_EQ(outputs[1].count(kind == "calibrate"                ? "L1/expert_tokens"
                               : kind == "quant_loss"             ? "L1/quant_loss"
                               : kind.rfind("expert_", 0) == 0    ? "L1/kept_experts"
                                                                  : "L0/summary"),
              1u) << kind;
    for (int size : {2, 3}) {
      ASSERT_EQ(outputs[size].size(), outputs[1].size()) << kind << " W=" << size;
      for (const auto& [key, bytes] : outputs[1]) {
        EXPECT_TRUE(outputs[size][key] == bytes) << kind << " W=" << size << ": " << key << " differs";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Arch, QuantizeGangTest,
                         ::testing::Combine(::testing::Values("mixtral", "deepseek"),
                                            ::testing::Bool()));

}  // namespace
}  // namespace moec::dataplane
