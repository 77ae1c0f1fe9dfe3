// Cross-checks the C++ forward against an independent reference written in Python (run by the
// project .venv python with its torch; tests/oracle/hf_reference.py), for every architecture and for checkpoints
// modified the way moec's exports modify them (pruned experts, dropped MoE sub-blocks, dynamic
// skipping, online dynamic pruning). Skips when that python cannot import torch.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "tests/testing/oracle.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::model {
namespace {

namespace fs = std::filesystem;
using ::moec::testing::TempDir;
using nlohmann::json;

using ::moec::testing::OracleLogits;
using ::moec::testing::PythonTorchAvailable;
constexpr const char* kPython = ::moec::testing::kOraclePython;

tools::TinyModelOptions Tiny(const std::string& type) {
  tools::TinyModelOptions o;
  o.model_type = type;
  o.num_layers = 3;
  o.hidden = 32;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.top_k = 2;
  o.moe_intermediate = 24;
  o.intermediate = 40;
  o.vocab = 300;
  o.seed = 11;
  return o;
}

// Copies `src` to `dst` with config.json's "moec" object set to `moec` (unless null), the keys of
// `fields` set, and the tensors edited by `edit` (which gets every tensor of the source, in F32,
// by name).
void RewriteModel(const std::string& src, const std::string& dst, const json& moec,
                  const std::function<void(std::map<std::string, at::Tensor>*)>& edit,
                  const json& fields = json::object()) {
  fs::create_directories(dst);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    fs::copy_file(fs::path(src) / f, fs::path(dst) / f);
  }
  json config = json::parse(*storage::ReadFileToString(src + "/config.json", 1 << 20));
  if (!moec.is_null()) config["moec"] = moec;
  for (const auto& [key, value] : fields.items()) config[key] = value;
  ASSERT_OK(storage::WriteFileAtomically(dst + "/config.json", config.dump(2)));
  ASSERT_OK_AND_ASSIGN(auto loader, WeightLoader::Open(src, at::kFloat));
  std::map<std::string, at::Tensor> tensors;
  for (const std::string& name : loader->checkpoint().TensorNames()) {
    ASSERT_OK_AND_ASSIGN(storage::TensorView view, loader->checkpoint().Get(name));
    ASSERT_OK_AND_ASSIGN(tensors[name], TensorFromView(view, at::kFloat));
  }
  if (edit) edit(&tensors);
  std::vector<NamedTensor> out;
  for (auto& [name, t] : tensors) out.push_back({name, t, std::nullopt});
  ASSERT_OK(WriteCheckpointTensors(dst, out));
}

// Runs the oracle on `tokens` [B, S] and returns its logits.
// Residual stream after every layer, as the oracle's --hidden-out lays it out.
class ResidualRecorder : public ForwardObserver {
 public:
  void OnLayerInput(int layer, const at::Tensor& h) override {
    if (layer == 0) states.push_back(h.clone());
  }
  void OnLayerOutput(int layer, const at::Tensor& h) override { states.push_back(h.clone()); }
  std::vector<at::Tensor> states;
};

void ExpectMatchesOracle(const std::string& model, int64_t seq, uint64_t seed) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(auto runner, ModelRunner::Open(model));
  at::manual_seed(seed);
  at::Tensor tokens = at::randint(0, runner->config().vocab_size, {2, seq}, at::kLong);
  ResidualRecorder recorder;
  ASSERT_OK_AND_ASSIGN(at::Tensor logits, runner->Forward(tokens, &recorder));
  at::Tensor hidden;
  at::Tensor ref = OracleLogits(model, tokens, tmp, &hidden);
  ASSERT_TRUE(ref.defined());
  ASSERT_EQ(ref.sizes(), logits.sizes());
  // Layer by layer first: the first divergence names the layer.
  at::Tensor ours = at::stack(recorder.states).reshape(-1);
  ASSERT_EQ(hidden.numel(), ours.numel());
  const int64_t per = ours.numel() / static_cast<int64_t>(recorder.states.size());
  for (size_t i = 0; i < recorder.states.size(); ++i) {
    at::Tensor a = ours.narrow(0, i * per, per), b = hidden.narrow(0, i * per, per);
    EXPECT_TRUE(at::allclose(a, b, 1e-4, 1e-5))
        << "residual stream after " << (i == 0 ? "the embedding" : "layer " + std::to_string(i - 1))
        << ": max diff " << (a - b).abs().max().item<float>();
  }
  const double max_diff = (logits - ref).abs().max().item<double>();
  EXPECT_TRUE(at::allclose(logits, ref, 1e-4, 1e-5)) << "max logit diff " << max_diff;
}

class OracleTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!PythonTorchAvailable()) GTEST_SKIP() << kPython << " cannot import torch and numpy";
  }
};

TEST_P(OracleTest, LogitsMatchTheReference) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  ExpectMatchesOracle(dir.Join("m"), 20, 1);
}

TEST_P(OracleTest, Bf16CheckpointMatchesTheReference) {
  TempDir dir;
  tools::TinyModelOptions o = Tiny(GetParam());
  o.dtype = "BF16";
  o.max_shard_bytes = 40000;  // sharded, too
  ASSERT_OK(tools::WriteTinyModel(o, dir.Join("m")));
  ExpectMatchesOracle(dir.Join("m"), 12, 2);
}

// Expert pruning: layer with MoE keeps experts {0, 2, 3} (re-indexed 0..2), another keeps none.
TEST_P(OracleTest, PrunedExpertsMatchTheReference) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("m")));
  std::vector<int> moe_layers;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(l)) moe_layers.push_back(l);
  }
  ASSERT_GE(moe_layers.size(), 2u);
  const int pruned = moe_layers[0], emptied = moe_layers[1];
  json per_layer = json::array(), kept = json::array();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.IsMoeLayer(l)) {
      per_layer.push_back(nullptr);
      kept.push_back(nullptr);
    } else if (l == pruned) {
      per_layer.push_back(3);
      kept.push_back({0, 2, 3});
    } else if (l == emptied) {
      per_layer.push_back(0);
      kept.push_back(json::array());
    } else {
      per_layer.push_back(4);
      kept.push_back({0, 1, 2, 3});
    }
  }
  RewriteModel(dir.Join("m"), dir.Join("pruned"),
               {{"experts_per_layer", per_layer}, {"kept_experts", kept}},
               [&](std::map<std::string, at::Tensor>* t) {
                 const std::string router = RouterTensorName(c, pruned);
                 (*t)[router] = (*t)[router].index_select(0, at::tensor({0, 2, 3}, at::kLong));
                 for (ExpertProj p : {ExpertProj::kGate, ExpertProj::kUp, ExpertProj::kDown}) {
                   // 1 <- 2, 2 <- 3, drop 3; and the emptied layer loses all experts.
                   (*t)[ExpertTensorName(c, pruned, 1, p)] = (*t)[ExpertTensorName(c, pruned, 2, p)];
                   (*t)[ExpertTensorName(c, pruned, 2, p)] = (*t)[ExpertTensorName(c, pruned, 3, p)];
                   t->erase(ExpertTensorName(c, pruned, 3, p));
                   for (int e = 0; e < 4; ++e) t->erase(ExpertTensorName(c, emptied, e, p));
                 }
                 t->erase(RouterTensorName(c, emptied));
               });
  ExpectMatchesOracle(dir.Join("pruned"), 16, 3);
}

// Layer drop: the MoE sub-block (post-attention norm + MLP) of the last layer is removed.
TEST_P(OracleTest, DroppedMoeLayerMatchesTheReference) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("m")));
  const int last = c.num_hidden_layers - 1;
  ASSERT_TRUE(c.IsMoeLayer(last));
  std::vector<TensorSpec> before = LayerTensors(c, last);
  RewriteModel(dir.Join("m"), dir.Join("dropped"), {{"dropped_moe_layers", {last}}},
               [&](std::map<std::string, at::Tensor>* t) {
                 for (const TensorSpec& s : before) {
                   if (s.role != TensorRole::kAttention &&
                       s.name.find("input_layernorm") == std::string::npos) {
                     t->erase(s.name);
                   }
                 }
               });
  ExpectMatchesOracle(dir.Join("dropped"), 16, 4);
}

json PerMoeLayer(const ModelConfig& c, double value) {
  json out = json::array();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    out.push_back(c.IsMoeLayer(l) ? json(value) : json(nullptr));
  }
  return out;
}

TEST_P(OracleTest, DynamicSkippingMatchesTheReference) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("m")));
  RewriteModel(dir.Join("m"), dir.Join("skip"), {{"skip_beta", PerMoeLayer(c, 0.8)}}, nullptr);
  ExpectMatchesOracle(dir.Join("skip"), 16, 5);
}

TEST_P(OracleTest, OnlineDynamicPruningMatchesTheReference) {
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny(GetParam()), dir.Join("m")));
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("m")));
  std::vector<int> enabled;
  json beta = json::array();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const bool on = c.IsMoeLayer(l) && enabled.size() < 2;
    if (on) enabled.push_back(l);
    beta.push_back(on ? json(0.85) : json(nullptr));
  }
  for (bool prior : {false, true}) {
    const std::string out = dir.Join(prior ? "odp_prior" : "odp");
    RewriteModel(dir.Join("m"), out,
                 {{"odp",
                   {{"enabled_layers", enabled},
                    {"beta", beta},
                    {"tau_low", 0.1},
                    {"tau_high", 0.2},
                    {"positional_prior", prior}}}},
                 nullptr);
    ExpectMatchesOracle(out, 20, 6);
  }
}

TEST(OracleOlmoeTest, ClipQkvMatchesTheReference) {
  if (!PythonTorchAvailable()) GTEST_SKIP() << kPython << " cannot import torch and numpy";
  TempDir dir;
  ASSERT_OK(tools::WriteTinyModel(Tiny("olmoe"), dir.Join("m")));
  RewriteModel(dir.Join("m"), dir.Join("clip"), nullptr, nullptr, {{"clip_qkv", 0.1}});
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.Join("clip")));
  ASSERT_TRUE(c.clip_qkv.has_value());
  ExpectMatchesOracle(dir.Join("clip"), 16, 7);
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, OracleTest,
                         ::testing::Values("mixtral", "deepseek", "qwen2_moe", "olmoe",
                                           "qwen3_moe"));

}  // namespace
}  // namespace moec::model
