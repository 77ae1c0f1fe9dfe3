// ParseModelConfig / LoadModelConfig: one minimal config per architecture, layer patterns,
// error messages, and the "moec" overrides object. Fixtures live in config_test_util.h.
#include "model/config/config.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config_test_util.h"
#include "nlohmann/json.hpp"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::model {
namespace {

using ::moec::testing::StatusIs;
using ::nlohmann::json;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Optional;

// Layers l with config.IsMoeLayer(l).
std::vector<int> MoeLayers(const ModelConfig& c) {
  std::vector<int> out;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(l)) out.push_back(l);
  }
  return out;
}

TEST(ModelConfigTest, ParsesMixtral) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(TinyMixtral()));
  EXPECT_EQ(c.arch, Architecture::kMixtral);
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.hidden_size, 8);
  EXPECT_EQ(c.intermediate_size, 16);
  EXPECT_EQ(c.moe_intermediate_size, 16);  // Mixtral experts use intermediate_size
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_EQ(c.qk_norm, QkNorm::kNone);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);  // Mixtral default
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);     // Mixtral default
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.SharedExpertIntermediateSize(), 0);
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 1));
  EXPECT_EQ(c.NumRoutedExperts(1), 4);
  EXPECT_EQ(c.NumActiveExperts(1), 2);
  EXPECT_THAT(c.OriginalExpertIndices(0), Optional(ElementsAre(0, 1, 2, 3)));
}

TEST(ModelConfigTest, ParsesDeepseekAndItsDenseLayerPattern) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(TinyDeepseek()));
  EXPECT_EQ(c.arch, Architecture::kDeepseek);
  EXPECT_EQ(c.num_experts, 4);  // n_routed_experts
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.moe_intermediate_size, 4);
  EXPECT_EQ(c.intermediate_size, 24);
  EXPECT_EQ(c.SharedExpertIntermediateSize(), 8);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.moe_layer_freq, 2);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.num_key_value_heads, 2);  // defaults to num_attention_heads
  // l >= 1 && l % 2 == 0 over layers 0..4.
  EXPECT_THAT(MoeLayers(c), ElementsAre(2, 4));
  EXPECT_TRUE(c.IsDenseLayer(0));
  EXPECT_TRUE(c.IsDenseLayer(1));
  EXPECT_TRUE(c.IsDenseLayer(3));
  EXPECT_EQ(c.NumRoutedExperts(1), 0);
  EXPECT_EQ(c.NumActiveExperts(3), 0);
  EXPECT_EQ(c.NumRoutedExperts(2), 4);
  // Down projections' inputs per token: the dense MLP's width; the active experts' and shared.
  EXPECT_EQ(c.DownInputsPerToken(1), 24);
  EXPECT_EQ(c.DownInputsPerToken(2), c.NumActiveExperts(2) * 4 + 8);
  EXPECT_EQ(c.DownInputsPerToken(99), 0);
}

TEST(ModelConfigTest, DeepseekDefaultsMakeEveryLayerMoe) {
  json j = TinyDeepseek();
  j.erase("first_k_dense_replace");
  j.erase("moe_layer_freq");
  j["n_shared_experts"] = nullptr;
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 1, 2, 3, 4));
  EXPECT_EQ(c.SharedExpertIntermediateSize(), 0);
}

TEST(ModelConfigTest, ParsesQwen2Moe) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(TinyQwen2Moe()));
  EXPECT_EQ(c.arch, Architecture::kQwen2Moe);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.shared_expert_intermediate_size, 6);
  EXPECT_EQ(c.SharedExpertIntermediateSize(), 6);
  EXPECT_TRUE(c.has_shared_expert_gate);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_THAT(c.mlp_only_layers, ElementsAre(1));
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 2));
}

TEST(ModelConfigTest, QwenDecoderSparseStep) {
  json j = TinyQwen2Moe();
  j["num_hidden_layers"] = 6;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  // (l + 1) % 2 == 0 -> 1, 3, 5; 3 is mlp-only.
  EXPECT_THAT(MoeLayers(c), ElementsAre(1, 5));
}

TEST(ModelConfigTest, ParsesOlmoe) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(TinyOlmoe()));
  EXPECT_EQ(c.arch, Architecture::kOlmoe);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.moe_intermediate_size, 4);  // OLMoE experts use intermediate_size
  EXPECT_EQ(c.qk_norm, QkNorm::kFullWidth);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 1));
}

TEST(ModelConfigTest, ParsesQwen3Moe) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(TinyQwen3Moe()));
  EXPECT_EQ(c.arch, Architecture::kQwen3Moe);
  EXPECT_EQ(c.head_dim, 4);  // explicit, not hidden / heads = 2
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.qk_norm, QkNorm::kPerHead);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.SharedExpertIntermediateSize(), 0);
  EXPECT_EQ(c.torch_dtype, "bfloat16");  // from the newer "dtype" key
  EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 1));
}

TEST(ModelConfigErrorTest, UnsupportedModelTypeNamesItAndTheSupportedOnes) {
  json j = TinyMixtral();
  j["model_type"] = "deepseek_v2";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 AllOf(HasSubstr("test/config.json"),
                                       HasSubstr("unsupported model_type 'deepseek_v2'"),
                                       HasSubstr("mixtral, deepseek, qwen2_moe, olmoe, "
                                                 "qwen3_moe"))));
}

TEST(ModelConfigErrorTest, MissingAndMistypedFieldsNameTheFieldAndFile) {
  json j = TinyQwen2Moe();
  j.erase("shared_expert_intermediate_size");
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "config file test/config.json: field "
                                 "'shared_expert_intermediate_size': missing required integer"));
  j = TinyMixtral();
  j["hidden_size"] = "8";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "field 'hidden_size': expected an integer"));
  j = TinyMixtral();
  j.erase("model_type");
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "field 'model_type': missing required string"));
  j = TinyDeepseek();
  j.erase("n_routed_experts");
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, "'n_routed_experts'"));
  j = TinyMixtral();
  j["num_experts_per_tok"] = 5;
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "field 'num_experts_per_tok': 5 is out of range [1, 4]"));
  j = TinyMixtral();
  j["num_key_value_heads"] = 3;
  j["num_attention_heads"] = 4;
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "3 does not divide num_attention_heads 4"));
  j = TinyMixtral();
  j["rms_norm_eps"] = -1;
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, "'rms_norm_eps'"));
  j = TinyMixtral();
  j["num_local_experts"] = {4, 3};
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 "per-layer lists (Unified-MoE-Compression exports)"));
  j = TinyDeepseek();
  j["scoring_func"] = "sigmoid";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, "'scoring_func'"));
  j = TinyOlmoe();
  j["head_dim"] = 8;
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, "OLMoE needs head_dim"));
}

TEST(ModelConfigErrorTest, MalformedJson) {
  EXPECT_THAT(ParseModelConfig("{\"model_type\": ", "a/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "a/config.json: malformed JSON"));
  EXPECT_THAT(ParseModelConfig("[1]", "a/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "top level is not a JSON object"));
  EXPECT_THAT(ParseModelConfig(std::string(100, '[') + std::string(100, ']'), "a/config.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "nested deeper"));
}

TEST(LoadModelConfigTest, ReadsConfigJsonFromTheDirectory) {
  moec::testing::TempDir dir;
  dir.WriteFile("config.json", TinyOlmoe().dump());
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir.path()));
  EXPECT_EQ(c.arch, Architecture::kOlmoe);
  EXPECT_EQ(c.source, dir.Join("config.json"));
}

TEST(LoadModelConfigTest, MissingAndOversizedFiles) {
  moec::testing::TempDir dir;
  EXPECT_THAT(LoadModelConfig(dir.path()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(dir.Join("config.json"))));
  json j = TinyOlmoe();
  j["padding"] = std::string(kMaxModelConfigBytes, ' ');
  dir.WriteFile("config.json", j.dump());
  EXPECT_THAT(LoadModelConfig(dir.path()), StatusIs(absl::StatusCode::kResourceExhausted));
}

// --------------------------------------------------------------------------------------------
// The "moec" overrides object.

TEST(MoecOverridesTest, PrunedAndDroppedLayers) {
  json j = TinyMixtral();
  j["num_hidden_layers"] = 4;
  j["moec"] = json::parse(R"({
      "format_version": 1,
      "experts_per_layer": [null, null, 2, 0],
      "kept_experts": [[0, 2, 3], null, [1, 3], []],
      "dropped_moe_layers": [1],
      "skip_beta": [0.5, null, 0.25, null]})");
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_THAT(c.moec.dropped_moe_layers, ElementsAre(1));
  EXPECT_THAT(MoeLayers(c), ElementsAre(0, 2, 3));
  EXPECT_TRUE(c.IsArchitecturalMoeLayer(1));
  EXPECT_TRUE(c.IsMoeDropped(1));
  EXPECT_FALSE(c.IsDenseLayer(1));
  EXPECT_EQ(c.NumRoutedExperts(0), 3);  // from kept_experts
  EXPECT_EQ(c.NumRoutedExperts(1), 0);  // dropped
  EXPECT_EQ(c.NumRoutedExperts(2), 2);
  EXPECT_EQ(c.NumRoutedExperts(3), 0);
  EXPECT_EQ(c.NumActiveExperts(0), 2);
  EXPECT_EQ(c.NumActiveExperts(3), 0);
  EXPECT_THAT(c.OriginalExpertIndices(0), Optional(ElementsAre(0, 2, 3)));
  EXPECT_THAT(c.OriginalExpertIndices(2), Optional(ElementsAre(1, 3)));
  EXPECT_THAT(c.moec.skip_beta,
              ElementsAre(Optional(0.5), std::nullopt, Optional(0.25), std::nullopt));
}

TEST(MoecOverridesTest, CountWithoutIndicesLeavesOriginalsUnknown) {
  json j = TinyMixtral();
  j["moec"] = {{"experts_per_layer", {3, nullptr}}};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_EQ(c.NumRoutedExperts(0), 3);
  EXPECT_EQ(c.OriginalExpertIndices(0), std::nullopt);
  EXPECT_THAT(c.OriginalExpertIndices(1), Optional(ElementsAre(0, 1, 2, 3)));
}

TEST(MoecOverridesTest, OdpSettings) {
  json j = TinyMixtral();
  j["moec"] = json::parse(R"({"odp": {"enabled_layers": [1], "beta": [null, 0.6],
                                      "tau_high": 0.05, "positional_prior": true}})");
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  ASSERT_TRUE(c.moec.odp.has_value());
  EXPECT_THAT(c.moec.odp->enabled_layers, ElementsAre(1));
  EXPECT_THAT(c.moec.odp->beta, ElementsAre(std::nullopt, Optional(0.6)));
  EXPECT_DOUBLE_EQ(c.moec.odp->tau_low, 0.0);
  EXPECT_DOUBLE_EQ(c.moec.odp->tau_high, 0.05);
  EXPECT_TRUE(c.moec.odp->positional_prior);
}

struct BadOverride {
  const char* moec;
  const char* message;
};

TEST(MoecOverridesTest, InvalidOverridesNameTheField) {
  const BadOverride cases[] = {
      {R"({"experts_per_layer": [4]})",
       "field 'moec.experts_per_layer': has 1 entries, expected one per layer "
       "(num_hidden_layers = 5)"},
      {R"({"experts_per_layer": [null, null, 5, null, null]})",
       "field 'moec.experts_per_layer[2]': 5 is out of range [0, 4]"},
      {R"({"experts_per_layer": [3, null, null, null, null]})",
       "field 'moec.experts_per_layer[0]': must be null: the layer has no MoE block"},
      {R"({"kept_experts": [null, null, [2, 1], null, null]})",
       "field 'moec.kept_experts[2]': expert indices must be strictly ascending"},
      {R"({"kept_experts": [null, null, [0, 4], null, null]})",
       "field 'moec.kept_experts[2][1]': 4 is out of range [0, 3]"},
      {R"({"experts_per_layer": [null, null, 3, null, null],
           "kept_experts": [null, null, [0, 1], null, null]})",
       "field 'moec.kept_experts[2]': lists 2 experts but moec.experts_per_layer[2] is 3"},
      {R"({"dropped_moe_layers": [1]})",
       "field 'moec.dropped_moe_layers': layer 1 is a dense layer, not a MoE layer"},
      {R"({"dropped_moe_layers": [5]})",
       "field 'moec.dropped_moe_layers[0]': 5 is out of range [0, 4]"},
      {R"({"dropped_moe_layers": [4], "skip_beta": [null, null, 0.5, null, 0.5]})",
       "field 'moec.skip_beta[4]': must be null: the layer's MoE block is dropped"},
      {R"({"skip_beta": [null, null, 1.5, null, null]})",
       "field 'moec.skip_beta[2]': 1.5 is out of range [0, 1]"},
      {R"({"odp": {"enabled_layers": [2], "beta": [null, null, null, null, null]}})",
       "field 'moec.odp.beta[2]': missing for an enabled layer"},
      {R"({"odp": {"enabled_layers": [3]}})",
       "field 'moec.odp.enabled_layers': layer 3 has no MoE block"},
      {R"({"odp": {"tau_low": 0.6, "tau_high": 0.6}})",
       "field 'moec.odp.tau_high': tau_low + tau_high must not exceed 1"},
      {R"({"format_version": 2})", "field 'moec.format_version': 2 is out of range [1, 1]"},
      {R"({"kept_expert": []})", "field 'moec.kept_expert': unknown field"},
      {R"([1])", "field 'moec': expected an object"},
  };
  for (const BadOverride& bad : cases) {
    json j = TinyDeepseek();  // MoE layers 2 and 4 of 0..4
    j["moec"] = json::parse(bad.moec);
    EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(bad.message)))
        << bad.moec;
  }
}

}  // namespace
}  // namespace moec::model

namespace moec::model {
namespace {

TEST(ModelConfigRuntimeFieldsTest, KeyValueHeadsDefaultLikeTransformers) {
  json mixtral = TinyMixtral();
  mixtral["num_attention_heads"] = 8;
  mixtral["hidden_size"] = 32;
  mixtral.erase("num_key_value_heads");
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(mixtral));
  EXPECT_EQ(c.num_key_value_heads, 8);  // MixtralConfig's default, not num_attention_heads
  mixtral["num_attention_heads"] = 4;
  EXPECT_THAT(Parse(mixtral), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("transformers' default 8")));
  mixtral["num_key_value_heads"] = nullptr;  // null: num_attention_heads
  ASSERT_OK_AND_ASSIGN(c, Parse(mixtral));
  EXPECT_EQ(c.num_key_value_heads, 4);
}

TEST(ModelConfigRuntimeFieldsTest, RopeVariantsAreRefusedAndRopeParametersRead) {
  json j = TinyMixtral();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rope_scaling")));
  j = TinyMixtral();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5000.0}};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  j["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("yarn")));
}

TEST(ModelConfigRuntimeFieldsTest, SlidingWindowAndClipQkv) {
  json j = TinyMixtral();
  j["sliding_window"] = 4096;
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  EXPECT_THAT(c.sliding_window, Optional(4096));
  j["sliding_window"] = nullptr;
  ASSERT_OK_AND_ASSIGN(c, Parse(j));
  EXPECT_FALSE(c.sliding_window.has_value());
  json o = TinyOlmoe();
  o["clip_qkv"] = 8.0;
  ASSERT_OK_AND_ASSIGN(c, Parse(o));
  EXPECT_THAT(c.clip_qkv, Optional(8.0));
}

TEST(ModelConfigRuntimeFieldsTest, QuantizationConfig) {
  json j = TinyMixtral();
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 3}, {"group_size", 64},
                              {"desc_act", true}, {"sym", false},
                              {"checkpoint_format", "gptq_v2"}};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->bits, 3);
  EXPECT_EQ(c.quantization->group_size, 64);
  EXPECT_TRUE(c.quantization->desc_act);
  EXPECT_FALSE(c.quantization->sym);
  EXPECT_EQ(c.quantization->checkpoint_format, "gptq_v2");
  j["quantization_config"]["quant_method"] = "awq";
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument,
                                 HasSubstr("unsupported quantization method 'awq'")));
}

TEST(ModelConfigRuntimeFieldsTest, GptqDynamicWidths) {
  json j = TinyMixtral();
  j["quantization_config"] = {
      {"quant_method", "gptq"}, {"bits", 2},
      {"dynamic", {{"+:model\\.layers\\.0\\.self_attn\\.q_proj", {{"bits", 4}}},
                   {"-:model\\.layers\\.1\\..*", json::object()},
                   {"+:model\\.layers\\.1", {{"bits", 8}}}}}};
  ASSERT_OK_AND_ASSIGN(ModelConfig c, Parse(j));
  const QuantizationConfig& q = *c.quantization;
  EXPECT_EQ(q.BitsOf("model.layers.0.self_attn.q_proj"), 4);
  EXPECT_EQ(q.BitsOf("model.layers.0.self_attn.k_proj"), 2);  // the default
  EXPECT_EQ(q.BitsOf("model.layers.1.self_attn.k_proj"), 8);  // matches the start of the name
  EXPECT_EQ(q.BitsOf("xmodel.layers.1.self_attn.k_proj"), 2);  // not at the start
  j["quantization_config"]["dynamic"] = {{"+:model(", {{"bits", 4}}}};
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a valid regex")));
  j["quantization_config"]["dynamic"] = {{"+:model", {{"bits", 9}}}};
  EXPECT_THAT(Parse(j), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bits must be 1..8")));
}

}  // namespace
}  // namespace moec::model
