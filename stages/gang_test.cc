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

// The tiny model of architecture `arch` the gangs run on.
tools::TinyModelOptions GangModel(const std::string& arch) {
  tools::TinyModelOptions o;
  o.model_type = arch;
  o.num_layers = 2;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 5;
  o.moe_intermediate = 24;
  return o;
}

// Stages that read the calibrate chain run after it, under fingerprints S<layer>.
bool NeedsStats(const std::string& kind) {
  return kind == "quant_loss" || kind.rfind("expert_", 0) == 0;
}

// The stage kind that test kind `kind` runs.
std::string StageKind(const std::string& kind) {
  return kind.rfind("expert_", 0) == 0  ? "expert_prune"
         : kind.rfind("prune_", 0) == 0 ? "prune_weights"
                                        : kind;
}

// The stage parameters of test kind `kind`: those its stage kind has (rtn has no act_order, ...).
nlohmann::json StageParams(const std::string& kind) {
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
  nlohmann::json with = nlohmann::json::object();
  for (const auto& [name, value] : params.items()) {
    if (recipe::FindStageKind(StageKind(kind))->FindParam(name) != nullptr) with[name] = value;
  }
  return with;
}

// The recipe of test kind `kind`: stage "q" (after calibrate stage "stats" when it needs it).
std::shared_ptr<const recipe::Recipe> GangRecipe(const std::string& kind, const TempDir& dir) {
  const nlohmann::json with = StageParams(kind);
  nlohmann::json stages = {TestStage("q", StageKind(kind), with)};
  if (NeedsStats(kind)) {
    stages = {TestStage("stats", "calibrate"), TestStage("q", StageKind(kind), with, {"stats"})};
  }
  const nlohmann::json calibration = {
      {"path", dir.Join("calib.txt")}, {"samples", 20}, {"seqlen", 12}, {"seed", 3}};
  return TestRecipe(
      {{"model", dir.Join("model")}, {"calibration", calibration}, {"stages", stages}});
}

// Runs stage `id` of `recipe` (test kind `what`) as the task of layer `layer` on every rank of a
// gang of `size`; its outputs go under `fp`.
void RunOnGang(const std::shared_ptr<const recipe::Recipe>& recipe, SharedStore& store, int size,
               bool gloo, int layer, const std::string& id, const std::string& fp,
               const std::string& what) {
  const std::map<std::string, std::string> inputs = {
      {"job/q/L0", "L0"}, {"job/stats/L0", "S0"}, {"job/stats/L1", "S1"}};
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
}

// Every output (name -> bytes) of test kind `kind` run on a gang of `size` ranks, layer by layer.
std::map<std::string, std::string> GangOutputs(const std::shared_ptr<const recipe::Recipe>& recipe,
                                               const std::string& kind, int size, bool gloo) {
  SharedStore store;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string l = std::to_string(layer);
    if (NeedsStats(kind)) {
      RunOnGang(recipe, store, size, gloo, layer, "stats", "S" + l, "calibrate");
    }
    RunOnGang(recipe, store, size, gloo, layer, "q", "L" + l, kind);
  }
  std::map<std::string, std::string> outputs;
  for (const auto& [key, f] : store.factors()) outputs[key] = f.data;
  return outputs;
}

// An output every run of test kind `kind` writes: its last hidden chunk (20 windows: chunks of
// 8, 8, 4) and its per-layer result.
std::string HiddenKey(const std::string& kind) {
  const bool chain = !NeedsStats(kind) || kind == "expert_progressive";
  return chain ? "L1/hidden.c00002" : "S1/hidden.c00002";
}
std::string ResultKey(const std::string& kind) {
  return kind == "calibrate"                ? "L1/expert_tokens"
         : kind == "quant_loss"             ? "L1/quant_loss"
         : kind.rfind("expert_", 0) == 0    ? "L1/kept_experts"
                                            : "L0/summary";
}

// Every output of gptq and rtn (codes, scales, hidden chunks, summary), of calibrate (router
// statistics, hidden chunks), of quant_loss (per-expert losses) and of prune_weights (Wanda,
// SparseGPT and 2:4, shared experts included: pruned matrices, hidden chunks, summary) is
// byte-identical for gangs of 1, 2 and 3 ranks: the determinism the data plane promises
// (docs/data_plane.md).
TEST_P(QuantizeGangTest, OutputsAreTheSameBytesForEveryGangSize) {
  TempDir dir;
  const auto [arch, gloo] = GetParam();
  ASSERT_OK(tools::WriteTinyModel(GangModel(arch), dir.Join("model")));
  std::string text;
  for (int i = 0; i < 80; ++i) text += "experts share the tokens of layer " + std::to_string(i) + "\n";
  dir.WriteFile("calib.txt", text);
  for (const std::string kind :
       {"gptq", "rtn", "calibrate", "quant_loss", "prune_wanda", "prune_sparsegpt", "prune_2of4",
        "expert_layerwise", "expert_progressive", "expert_greedy"}) {
    const std::shared_ptr<const recipe::Recipe> recipe = GangRecipe(kind, dir);
    ASSERT_NE(recipe, nullptr);
    std::map<int, std::map<std::string, std::string>> outputs;  // gang size -> name -> bytes
    for (int size : {1, 2, 3}) outputs[size] = GangOutputs(recipe, kind, size, gloo);
    ASSERT_FALSE(outputs[1].empty());
    EXPECT_EQ(outputs[1].count(HiddenKey(kind)), 1u) << kind;
    EXPECT_EQ(outputs[1].count(ResultKey(kind)), 1u) << kind;
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
