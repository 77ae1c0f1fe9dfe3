#include "client/inspect.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tools/tiny_model.h"

namespace moec::client {

using tools::kTinyNumSpecialTokens;

namespace {

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

namespace fs = std::filesystem;

uint64_t SafetensorsBytesOnDisk(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") total += fs::file_size(e.path());
  }
  return total;
}

int CountSafetensorsFiles(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().extension() == ".safetensors";
  return n;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

TEST(InspectTest, DeepseekBf16Sharded) {
  TempDir tmp;
  tools::TinyModelOptions o;
  o.model_type = "deepseek";
  o.num_layers = 3;
  o.experts = 6;
  o.top_k = 2;
  o.dtype = "BF16";
  o.max_shard_bytes = 50 * 1024;
  const std::string dir = tmp.Join("ds");
  ASSERT_OK(tools::WriteTinyModel(o, dir));
  ASSERT_OK_AND_ASSIGN(ModelInspection m, InspectModel(dir));
  ASSERT_OK_AND_ASSIGN(model::ModelConfig c, model::LoadModelConfig(dir));
  const model::ParameterCounts p = model::CountParameters(c);

  EXPECT_EQ(m.model_dir, dir);
  EXPECT_EQ(m.model_type, "deepseek");
  EXPECT_THAT(m.architectures, ElementsAre("DeepseekForCausalLM"));
  EXPECT_EQ(m.num_layers, 3);
  EXPECT_EQ(m.num_moe_layers, 2);  // first_k_dense_replace = 1
  EXPECT_EQ(m.num_dense_layers, 1);
  EXPECT_EQ(m.num_dropped_moe_layers, 0);
  EXPECT_EQ(m.num_experts, 6);
  EXPECT_EQ(m.top_k, 2);
  EXPECT_THAT(m.routed_experts_per_layer, ElementsAre(0, 6, 6));
  EXPECT_EQ(m.shared_experts, 1);
  EXPECT_EQ(m.shared_expert_intermediate_size, 96);
  EXPECT_EQ(m.hidden_size, 64);
  EXPECT_EQ(m.intermediate_size, 128);
  EXPECT_EQ(m.moe_intermediate_size, 96);
  EXPECT_EQ(m.num_attention_heads, 4);
  EXPECT_EQ(m.num_key_value_heads, 2);
  EXPECT_EQ(m.head_dim, 16);
  EXPECT_EQ(m.vocab_size, o.vocab + tools::kTinyNumSpecialTokens);
  EXPECT_EQ(m.torch_dtype, "bfloat16");
  EXPECT_EQ(m.parameters.total, p.total);
  EXPECT_EQ(m.parameters.activated, p.activated);
  // Activated: the routed experts of a token are 2 of 6 per MoE layer.
  EXPECT_EQ(p.total - p.activated, int64_t{2} * (6 - 2) * 3 * 64 * 96);

  EXPECT_TRUE(m.has_weights);
  EXPECT_EQ(m.num_tensors, static_cast<int64_t>(model::ModelTensors(c).size()));
  EXPECT_THAT(m.tensors_by_dtype, ElementsAre(Pair("BF16", m.num_tensors)));
  EXPECT_EQ(m.tensor_bytes, static_cast<uint64_t>(p.total) * 2);
  EXPECT_GT(m.num_shards, 1);
  EXPECT_EQ(m.num_shards, CountSafetensorsFiles(dir));
  EXPECT_EQ(m.size_on_disk, SafetensorsBytesOnDisk(dir));
  EXPECT_GT(m.size_on_disk, m.tensor_bytes);  // headers
  EXPECT_THAT(m.missing_tensors, IsEmpty());
  EXPECT_THAT(m.unexpected_tensors, IsEmpty());
  EXPECT_THAT(m.mismatched_shapes, IsEmpty());
  EXPECT_FALSE(m.has_moec_overrides);
  EXPECT_THAT(m.layer_overrides, IsEmpty());
}

TEST(InspectTest, SingleFileF32) {
  TempDir tmp;
  tools::TinyModelOptions o;
  o.model_type = "qwen3_moe";
  ASSERT_OK(tools::WriteTinyModel(o, tmp.path()));
  ASSERT_OK_AND_ASSIGN(ModelInspection m, InspectModel(tmp.path()));
  EXPECT_EQ(m.num_shards, 1);
  EXPECT_EQ(m.size_on_disk, fs::file_size(tmp.Join("model.safetensors")));
  EXPECT_THAT(m.tensors_by_dtype, ElementsAre(Pair("F32", m.num_tensors)));
  EXPECT_EQ(m.shared_experts, 0);
  EXPECT_EQ(m.num_moe_layers, 2);
  EXPECT_EQ(m.num_dense_layers, 0);
}

TEST(InspectTest, ReportsMoecOverridesAndTensorMismatches) {
  TempDir tmp;
  tools::TinyModelOptions o;
  o.model_type = "mixtral";
  ASSERT_OK(tools::WriteTinyModel(o, tmp.path()));
  // Pretend layer 1 was pruned to 6 experts (the weights still hold 8) with skipping.
  nlohmann::json config = nlohmann::json::parse(ReadFile(tmp.Join("config.json")));
  config["moec"] = nlohmann::json::parse(R"({"format_version": 1,
      "experts_per_layer": [null, 6], "kept_experts": [null, [0, 1, 2, 4, 5, 7]],
      "skip_beta": [0.25, null]})");
  WriteFile(tmp.Join("config.json"), config.dump());
  ASSERT_OK_AND_ASSIGN(ModelInspection m, InspectModel(tmp.path()));
  EXPECT_TRUE(m.has_moec_overrides);
  ASSERT_EQ(m.layer_overrides.size(), 2u);
  EXPECT_EQ(m.layer_overrides[0].layer, 0);
  EXPECT_EQ(m.layer_overrides[0].skip_beta, 0.25);
  EXPECT_FALSE(m.layer_overrides[0].experts.has_value());
  EXPECT_EQ(m.layer_overrides[1].layer, 1);
  EXPECT_EQ(m.layer_overrides[1].experts, 6);
  EXPECT_EQ(m.layer_overrides[1].kept_experts, (std::vector<int>{0, 1, 2, 4, 5, 7}));
  EXPECT_FALSE(m.layer_overrides[1].skip_beta.has_value());
  EXPECT_THAT(m.routed_experts_per_layer, ElementsAre(8, 6));
  EXPECT_THAT(m.unexpected_tensors,
              ElementsAre("model.layers.1.block_sparse_moe.experts.6.w1.weight",
                          "model.layers.1.block_sparse_moe.experts.6.w2.weight",
                          "model.layers.1.block_sparse_moe.experts.6.w3.weight",
                          "model.layers.1.block_sparse_moe.experts.7.w1.weight",
                          "model.layers.1.block_sparse_moe.experts.7.w2.weight",
                          "model.layers.1.block_sparse_moe.experts.7.w3.weight"));
  EXPECT_THAT(m.mismatched_shapes, ElementsAre("model.layers.1.block_sparse_moe.gate.weight"));
  EXPECT_THAT(m.missing_tensors, IsEmpty());
}

TEST(InspectTest, ConfigOnlyDirectoryHasNoWeights) {
  TempDir tmp;
  ASSERT_OK_AND_ASSIGN(std::string text, tools::TinyModelConfigJson(tools::TinyModelOptions{}));
  tmp.WriteFile("config.json", text);
  ASSERT_OK_AND_ASSIGN(ModelInspection m, InspectModel(tmp.path()));
  EXPECT_FALSE(m.has_weights);
  EXPECT_EQ(m.num_shards, 0);
  EXPECT_EQ(m.size_on_disk, 0u);
  EXPECT_GT(m.parameters.total, 0);
}

TEST(InspectTest, Errors) {
  TempDir tmp;
  EXPECT_THAT(InspectModel(tmp.Join("nope")),
              StatusIs(absl::StatusCode::kNotFound, "model directory " + tmp.Join("nope") +
                                                        " does not exist"));
  EXPECT_THAT(InspectModel(tmp.WriteFile("file", "x")),
              StatusIs(absl::StatusCode::kFailedPrecondition, "is not a directory"));
  EXPECT_THAT(InspectModel(tmp.path()), StatusIs(absl::StatusCode::kNotFound, "config.json"));
  tmp.WriteFile("config.json", "{not json");
  EXPECT_THAT(InspectModel(tmp.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, "malformed JSON"));
  tmp.WriteFile("config.json", R"({"model_type": "llama"})");
  EXPECT_THAT(InspectModel(tmp.path()),
              StatusIs(absl::StatusCode::kInvalidArgument, "unsupported model_type 'llama'"));
  // A valid config but a truncated weights file.
  ASSERT_OK_AND_ASSIGN(std::string text, tools::TinyModelConfigJson(tools::TinyModelOptions{}));
  tmp.WriteFile("config.json", text);
  tmp.WriteFile("model.safetensors", "short");
  EXPECT_THAT(InspectModel(tmp.path()), StatusIs(absl::StatusCode::kDataLoss));
}

}  // namespace
}  // namespace moec::client
