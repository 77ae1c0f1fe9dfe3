// Gangs of every size give the same bytes: each expert-parallel stage run over gangs of 1, 2 and
// 3 ranks (threads with in-process or Gloo collectives) writes identical outputs
// (docs/data_plane.md).
#include <ATen/ATen.h>

#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "comm/communicator.h"
#include "comm/gang_test_util.h"
#include "common/recipe/stage_catalog.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/stage_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stages/calibrate_stage.h"
#include "stages/expert_prune_stage.h"
#include "stages/prune_weights_stage.h"
#include "stages/quant_loss_stage.h"
#include "stages/quantize_stage.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::stages {

using comm::OnRanks;
using dataplane::MapFactorIo;
using dataplane::TestRecipe;
using dataplane::TestStage;
using ::moec::testing::TempDir;

namespace {

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
    const std::string stage_kind = kind.rfind("expert_", 0) == 0  ? "expert_prune"
                                   : kind.rfind("prune_", 0) == 0 ? "prune_weights"
                                                                  : kind;
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
    // The parameters the kind has (rtn has no act_order, ...).
    nlohmann::json with = nlohmann::json::object();
    for (const auto& [name, value] : params.items()) {
      if (recipe::FindStageKind(stage_kind)->FindParam(name) != nullptr) with[name] = value;
    }
    nlohmann::json stages = {TestStage("q", stage_kind, with)};
    if (needs_stats) stages = {TestStage("stats", "calibrate"), TestStage("q", stage_kind, with, {"stats"})};
    const std::shared_ptr<const recipe::Recipe> recipe = TestRecipe(
        {{"model", dir.Join("model")},
         {"calibration", {{"path", dir.Join("calib.txt")}, {"samples", 20}, {"seqlen", 12}, {"seed", 3}}},
         {"stages", stages}});
    ASSERT_NE(recipe, nullptr);
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
            ctx.SetRecipe(recipe, id);
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
}  // namespace moec::stages
