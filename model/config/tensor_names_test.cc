// Tensor names/shapes per architecture and parameter counts worked out by hand for the tiny
// configs of config_test_util.h.
#include "model/config/tensor_names.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config_test_util.h"
#include "model/config/parameter_count.h"
#include "tests/testing/status_matchers.h"

namespace moec::model {
namespace {

using ::nlohmann::json;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;

ModelConfig MustParse(const json& j) {
  auto c = Parse(j);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

std::vector<int64_t> ShapeOf(const std::vector<TensorSpec>& specs, const std::string& name) {
  for (const TensorSpec& s : specs) {
    if (s.name == name) return s.shape;
  }
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

TEST(TensorNamesTest, MixtralLayer) {
  const ModelConfig c = MustParse(TinyMixtral());
  std::vector<std::string> expected = {"model.layers.1.input_layernorm.weight",
                                       "model.layers.1.self_attn.q_proj.weight",
                                       "model.layers.1.self_attn.k_proj.weight",
                                       "model.layers.1.self_attn.v_proj.weight",
                                       "model.layers.1.self_attn.o_proj.weight",
                                       "model.layers.1.post_attention_layernorm.weight",
                                       "model.layers.1.block_sparse_moe.gate.weight"};
  for (int e = 0; e < 4; ++e) {
    for (const char* w : {"w1", "w3", "w2"}) {
      expected.push_back("model.layers.1.block_sparse_moe.experts." + std::to_string(e) + "." + w +
                         ".weight");
    }
  }
  EXPECT_THAT(LayerTensorNames(c, 1), ElementsAreArray(expected));
  EXPECT_EQ(RouterTensorName(c, 0), "model.layers.0.block_sparse_moe.gate.weight");
  EXPECT_EQ(ExpertTensorName(c, 0, 3, ExpertProj::kGate),
            "model.layers.0.block_sparse_moe.experts.3.w1.weight");
  EXPECT_EQ(ExpertTensorName(c, 0, 3, ExpertProj::kUp),
            "model.layers.0.block_sparse_moe.experts.3.w3.weight");
  EXPECT_EQ(ExpertTensorName(c, 0, 3, ExpertProj::kDown),
            "model.layers.0.block_sparse_moe.experts.3.w2.weight");
  EXPECT_THAT(SharedExpertTensorNames(c, 0), IsEmpty());
  const std::vector<TensorSpec> specs = LayerTensors(c, 1);
  EXPECT_THAT(ShapeOf(specs, "model.layers.1.self_attn.k_proj.weight"), ElementsAre(4, 8));
  EXPECT_THAT(ShapeOf(specs, "model.layers.1.self_attn.o_proj.weight"), ElementsAre(8, 8));
  EXPECT_THAT(ShapeOf(specs, "model.layers.1.block_sparse_moe.gate.weight"), ElementsAre(4, 8));
  EXPECT_THAT(ShapeOf(specs, "model.layers.1.block_sparse_moe.experts.2.w2.weight"),
              ElementsAre(8, 16));
  EXPECT_EQ(EmbeddingTensorName(), "model.embed_tokens.weight");
  EXPECT_EQ(FinalNormTensorName(), "model.norm.weight");
  EXPECT_EQ(LmHeadTensorName(c), "lm_head.weight");
}

TEST(TensorNamesTest, DeepseekDenseAndMoeLayers) {
  const ModelConfig c = MustParse(TinyDeepseek());
  EXPECT_THAT(
      LayerTensorNames(c, 1),
      ElementsAre(
          "model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.q_proj.weight",
          "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
          "model.layers.1.self_attn.o_proj.weight",
          "model.layers.1.post_attention_layernorm.weight", "model.layers.1.mlp.gate_proj.weight",
          "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"));
  const std::vector<std::string> moe = LayerTensorNames(c, 2);
  ASSERT_EQ(moe.size(), 6u + 1 + 4 * 3 + 3);
  EXPECT_EQ(moe[6], "model.layers.2.mlp.gate.weight");
  EXPECT_EQ(moe[7], "model.layers.2.mlp.experts.0.gate_proj.weight");
  EXPECT_EQ(moe[18], "model.layers.2.mlp.experts.3.down_proj.weight");
  EXPECT_THAT(SharedExpertTensorNames(c, 2),
              ElementsAre("model.layers.2.mlp.shared_experts.gate_proj.weight",
                          "model.layers.2.mlp.shared_experts.up_proj.weight",
                          "model.layers.2.mlp.shared_experts.down_proj.weight"));
  EXPECT_THAT(SharedExpertTensorNames(c, 1), IsEmpty());
  const std::vector<TensorSpec> specs = LayerTensors(c, 2);
  EXPECT_THAT(ShapeOf(specs, "model.layers.2.mlp.shared_experts.down_proj.weight"),
              ElementsAre(8, 8));
  EXPECT_THAT(ShapeOf(specs, "model.layers.2.mlp.experts.1.up_proj.weight"), ElementsAre(4, 8));
  EXPECT_THAT(ShapeOf(LayerTensors(c, 0), "model.layers.0.mlp.down_proj.weight"),
              ElementsAre(8, 24));
  EXPECT_EQ(LmHeadTensorName(c), "model.embed_tokens.weight");  // tied
  const std::vector<TensorSpec> all = ModelTensors(c);
  EXPECT_EQ(all.back().name, "model.norm.weight");  // no lm_head when tied
}

TEST(TensorNamesTest, Qwen2MoeBiasesSharedExpertAndGate) {
  const ModelConfig c = MustParse(TinyQwen2Moe());
  EXPECT_THAT(
      AttentionTensorNames(c, 0),
      ElementsAre("model.layers.0.self_attn.q_proj.weight",
                  "model.layers.0.self_attn.k_proj.weight",
                  "model.layers.0.self_attn.v_proj.weight",
                  "model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                  "model.layers.0.self_attn.k_proj.bias", "model.layers.0.self_attn.v_proj.bias"));
  EXPECT_THAT(SharedExpertTensorNames(c, 2),
              ElementsAre("model.layers.2.mlp.shared_expert.gate_proj.weight",
                          "model.layers.2.mlp.shared_expert.up_proj.weight",
                          "model.layers.2.mlp.shared_expert.down_proj.weight",
                          "model.layers.2.mlp.shared_expert_gate.weight"));
  EXPECT_EQ(RouterTensorName(c, 2), "model.layers.2.mlp.gate.weight");
  EXPECT_EQ(ExpertTensorName(c, 2, 1, ExpertProj::kUp),
            "model.layers.2.mlp.experts.1.up_proj.weight");
  EXPECT_THAT(ShapeOf(SharedExpertTensors(c, 0), "model.layers.0.mlp.shared_expert_gate.weight"),
              ElementsAre(1, 8));
  EXPECT_THAT(ShapeOf(AttentionTensors(c, 0), "model.layers.0.self_attn.k_proj.bias"),
              ElementsAre(4));
  // Layer 1 is mlp-only: a dense MLP of intermediate_size.
  EXPECT_THAT(ShapeOf(LayerTensors(c, 1), "model.layers.1.mlp.gate_proj.weight"),
              ElementsAre(12, 8));
}

TEST(TensorNamesTest, OlmoeFullWidthQkNorm) {
  const ModelConfig c = MustParse(TinyOlmoe());
  const std::vector<TensorSpec> attn = AttentionTensors(c, 1);
  ASSERT_EQ(attn.size(), 6u);
  EXPECT_EQ(attn[4].name, "model.layers.1.self_attn.q_norm.weight");
  EXPECT_THAT(attn[4].shape, ElementsAre(8));
  EXPECT_EQ(attn[5].name, "model.layers.1.self_attn.k_norm.weight");
  EXPECT_THAT(attn[5].shape, ElementsAre(4));
  EXPECT_EQ(RouterTensorName(c, 1), "model.layers.1.mlp.gate.weight");
  EXPECT_EQ(ExpertTensorName(c, 1, 0, ExpertProj::kDown),
            "model.layers.1.mlp.experts.0.down_proj.weight");
}

TEST(TensorNamesTest, Qwen3MoePerHeadQkNormNoSharedExpert) {
  const ModelConfig c = MustParse(TinyQwen3Moe());
  const std::vector<TensorSpec> attn = AttentionTensors(c, 0);
  EXPECT_THAT(ShapeOf(attn, "model.layers.0.self_attn.q_proj.weight"), ElementsAre(16, 8));
  EXPECT_THAT(ShapeOf(attn, "model.layers.0.self_attn.o_proj.weight"), ElementsAre(8, 16));
  EXPECT_THAT(ShapeOf(attn, "model.layers.0.self_attn.q_norm.weight"), ElementsAre(4));
  EXPECT_THAT(ShapeOf(attn, "model.layers.0.self_attn.k_norm.weight"), ElementsAre(4));
  EXPECT_THAT(SharedExpertTensorNames(c, 0), IsEmpty());
  EXPECT_EQ(LayerTensorNames(c, 0).size(), 1u + 6 + 1 + 1 + 4 * 3);
}

TEST(TensorNamesTest, PrunedAndDroppedLayers) {
  json j = TinyMixtral();
  j["num_hidden_layers"] = 3;
  j["moec"] = {{"experts_per_layer", {2, nullptr, 0}}, {"dropped_moe_layers", {1}}};
  const ModelConfig c = MustParse(j);
  const std::vector<std::string> kept = LayerTensorNames(c, 0);
  ASSERT_EQ(kept.size(), 7u + 2 * 3);
  EXPECT_EQ(kept.back(), "model.layers.0.block_sparse_moe.experts.1.w2.weight");
  EXPECT_THAT(ShapeOf(LayerTensors(c, 0), "model.layers.0.block_sparse_moe.gate.weight"),
              ElementsAre(2, 8));
  // Dropped: no post_attention_layernorm, no MoE.
  EXPECT_THAT(LayerTensorNames(c, 1), ElementsAre("model.layers.1.input_layernorm.weight",
                                                  "model.layers.1.self_attn.q_proj.weight",
                                                  "model.layers.1.self_attn.k_proj.weight",
                                                  "model.layers.1.self_attn.v_proj.weight",
                                                  "model.layers.1.self_attn.o_proj.weight"));
  // No routed experts left: no router either.
  EXPECT_EQ(LayerTensorNames(c, 2).back(), "model.layers.2.post_attention_layernorm.weight");
}

// --------------------------------------------------------------------------------------------
// Parameter counts. Notation: h = hidden 8, V = vocab 10.

TEST(ParameterCountTest, Mixtral) {
  // attention/layer: q 8x8 + k 4x8 + v 4x8 + o 8x8 = 192; expert 3*8*16 = 384; router 4x8 = 32.
  const ParameterCounts p = CountParameters(MustParse(TinyMixtral()));
  EXPECT_EQ(p.embedding, 80);
  EXPECT_EQ(p.lm_head, 80);
  EXPECT_EQ(p.norms, 2 * 16 + 8);
  EXPECT_EQ(p.attention, 2 * 192);
  EXPECT_EQ(p.routers, 2 * 32);
  EXPECT_EQ(p.routed_experts, 2 * 4 * 384);
  EXPECT_EQ(p.shared_experts, 0);
  EXPECT_EQ(p.dense_mlp, 0);
  EXPECT_EQ(p.activated_routed_experts, 2 * 2 * 384);
  EXPECT_EQ(p.total, 3720);      // 80 + 80 + 40 + 384 + 64 + 3072
  EXPECT_EQ(p.activated, 2184);  // 3720 - 3072 + 1536
}

TEST(ParameterCountTest, DeepseekTiedWithDenseAndSharedExperts) {
  // attention/layer 4 x 8x8 = 256 (x5); dense MLP 3*8*24 = 576 (layers 0, 1, 3); MoE layers
  // 2, 4: router 32, experts 4 x 3*8*4 = 384, shared 3*8*8 = 192; lm_head tied.
  const ParameterCounts p = CountParameters(MustParse(TinyDeepseek()));
  EXPECT_EQ(p.embedding, 80);
  EXPECT_EQ(p.lm_head, 0);
  EXPECT_EQ(p.norms, 5 * 16 + 8);
  EXPECT_EQ(p.attention, 1280);
  EXPECT_EQ(p.dense_mlp, 1728);
  EXPECT_EQ(p.routers, 64);
  EXPECT_EQ(p.routed_experts, 768);
  EXPECT_EQ(p.shared_experts, 384);
  EXPECT_EQ(p.total, 4392);
  EXPECT_EQ(p.activated, 4008);  // 4392 - 768 + 2 layers x 2 x 96
}

TEST(ParameterCountTest, Qwen2Moe) {
  // attention/layer 192 + biases 8 + 4 + 4 = 208 (x3); dense layer 1: 3*8*12 = 288; MoE layers
  // 0, 2: router 32 + shared gate 8, experts 384, shared expert 3*8*6 = 144.
  const ParameterCounts p = CountParameters(MustParse(TinyQwen2Moe()));
  EXPECT_EQ(p.attention, 624);
  EXPECT_EQ(p.dense_mlp, 288);
  EXPECT_EQ(p.routers, 80);
  EXPECT_EQ(p.routed_experts, 768);
  EXPECT_EQ(p.shared_experts, 288);
  EXPECT_EQ(p.norms, 56);
  EXPECT_EQ(p.total, 2264);
  EXPECT_EQ(p.activated, 1880);
}

TEST(ParameterCountTest, Olmoe) {
  // attention/layer 192 + q_norm 8 + k_norm 4 = 204; experts 4 x 3*8*4 = 384 per layer.
  const ParameterCounts p = CountParameters(MustParse(TinyOlmoe()));
  EXPECT_EQ(p.attention, 408);
  EXPECT_EQ(p.routed_experts, 768);
  EXPECT_EQ(p.total, 1440);
  EXPECT_EQ(p.activated, 1056);
}

TEST(ParameterCountTest, Qwen3Moe) {
  // attention/layer: q 16x8 + k 8x8 + v 8x8 + o 8x16 + q_norm 4 + k_norm 4 = 392.
  const ParameterCounts p = CountParameters(MustParse(TinyQwen3Moe()));
  EXPECT_EQ(p.attention, 784);
  EXPECT_EQ(p.total, 1816);
  EXPECT_EQ(p.activated, 1432);
}

TEST(ParameterCountTest, HonoursPruningAndDroppedLayers) {
  // Layer 0: 3 experts (active 2); layer 1: dropped (no norm, router, experts); layer 2: one
  // expert (active min(2, 1) = 1).
  json j = TinyMixtral();
  j["num_hidden_layers"] = 3;
  j["moec"] = {{"kept_experts", {{0, 1, 3}, nullptr, {2}}}, {"dropped_moe_layers", {1}}};
  const ParameterCounts p = CountParameters(MustParse(j));
  EXPECT_EQ(p.routers, 3 * 8 + 1 * 8);
  EXPECT_EQ(p.routed_experts, 4 * 384);
  EXPECT_EQ(p.activated_routed_experts, 3 * 384);
  EXPECT_EQ(p.norms, 3 * 8 + 2 * 8 + 8);
  EXPECT_EQ(p.total, 80 + 80 + 48 + 3 * 192 + 32 + 4 * 384);
  EXPECT_EQ(p.activated, p.total - 384);
}

// Sanity check at real scale: Mixtral-8x7B has 46.7B parameters, 12.9B active.
TEST(ParameterCountTest, Mixtral8x7BPublishedFigures) {
  json j = TinyMixtral();
  j["hidden_size"] = 4096;
  j["intermediate_size"] = 14336;
  j["num_hidden_layers"] = 32;
  j["num_attention_heads"] = 32;
  j["num_key_value_heads"] = 8;
  j["vocab_size"] = 32000;
  j["num_local_experts"] = 8;
  const ParameterCounts p = CountParameters(MustParse(j));
  EXPECT_EQ(p.total, 46702792704);
  // 32 x (attention 41943040 + 2 x expert 176160768 + router 32768 + norms 8192) + embedding,
  // lm_head and final norm 262148096.
  EXPECT_EQ(p.activated, 12879925248);
}

}  // namespace
}  // namespace moec::model
