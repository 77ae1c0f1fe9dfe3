// Test fixtures: one tiny config.json per supported architecture (small enough that tensor
// shapes and parameter counts can be worked out by hand), and a Parse helper.
#ifndef MOEC_MODEL_CONFIG_CONFIG_TEST_UTIL_H_
#define MOEC_MODEL_CONFIG_CONFIG_TEST_UTIL_H_

#include "absl/status/statusor.h"
#include "model/config/config.h"
#include "nlohmann/json.hpp"

namespace moec::model {

inline absl::StatusOr<ModelConfig> Parse(const nlohmann::json& j) {
  return ParseModelConfig(j.dump(), "test/config.json");
}

// hidden 8, 2 layers, 2 heads (head_dim 4), 1 KV head, 4 experts of width 16, top-2.
inline nlohmann::json TinyMixtral() {
  return nlohmann::json::parse(R"({
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
    "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10,
    "num_local_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
    "torch_dtype": "bfloat16", "sliding_window": null})");
}

// 5 layers, MoE at 2 and 4 (first_k_dense_replace 1, moe_layer_freq 2); dense width 24; 4
// routed experts of width 4, 2 shared (one MLP of width 8); MHA (2 heads); tied embeddings.
inline nlohmann::json TinyDeepseek() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekForCausalLM"], "model_type": "deepseek",
    "hidden_size": 8, "intermediate_size": 24, "moe_intermediate_size": 4,
    "num_hidden_layers": 5, "num_attention_heads": 2, "vocab_size": 10,
    "n_routed_experts": 4, "n_shared_experts": 2, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "moe_layer_freq": 2, "norm_topk_prob": false,
    "scoring_func": "softmax", "attention_bias": false, "tie_word_embeddings": true,
    "aux_loss_alpha": 0.001, "seq_aux": true})");
}

// 3 layers, layer 1 mlp-only (dense width 12); 4 experts of width 4, top-2; shared expert width
// 6 with its sigmoid gate; 2 heads, 1 KV head; q/k/v biases.
inline nlohmann::json TinyQwen2Moe() {
  return nlohmann::json::parse(R"({
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
    "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
    "shared_expert_intermediate_size": 6, "num_hidden_layers": 3,
    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10,
    "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
    "mlp_only_layers": [1], "norm_topk_prob": false, "rope_theta": 1000000.0,
    "use_sliding_window": false})");
}

// 2 layers; 4 experts of width 4 (intermediate_size), top-2; 2 heads, 1 KV head; full-width
// q_norm (8) and k_norm (4).
inline nlohmann::json TinyOlmoe() {
  return nlohmann::json::parse(R"({
    "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
    "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10,
    "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": false,
    "clip_qkv": null, "attention_bias": false})");
}

// 2 layers; 4 heads of head_dim 4 (q width 16 != hidden 8), 2 KV heads; 4 experts of width 4,
// top-2; per-head q_norm/k_norm (4 each). Uses the newer "dtype" key.
inline nlohmann::json TinyQwen3Moe() {
  return nlohmann::json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
    "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 4, "vocab_size": 10, "num_experts": 4, "num_experts_per_tok": 2,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": true,
    "attention_bias": false, "rope_theta": 1000000, "dtype": "bfloat16"})");
}

}  // namespace moec::model

#endif  // MOEC_MODEL_CONFIG_CONFIG_TEST_UTIL_H_
