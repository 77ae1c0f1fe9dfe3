// Total and activated-per-token parameter counts of a MoE model described by a ModelConfig
// (honouring moec's per-layer overrides), summed over the tensors of model/tensor_names.h.
#ifndef MOEC_MODEL_CONFIG_PARAMETER_COUNT_H_
#define MOEC_MODEL_CONFIG_PARAMETER_COUNT_H_

#include <cstdint>

#include "model/config/config.h"

namespace moec::model {

// Parameter counts (elements, not bytes). Tied embeddings are counted once (lm_head = 0).
struct ParameterCounts {
  int64_t embedding = 0;       // model.embed_tokens
  int64_t lm_head = 0;         // 0 when tie_word_embeddings
  int64_t norms = 0;           // input/post-attention layernorms and the final norm
  int64_t attention = 0;       // q/k/v/o projections, biases, q_norm/k_norm
  int64_t routers = 0;         // routers, and Qwen2-MoE's shared_expert_gate
  int64_t routed_experts = 0;  // all routed experts
  int64_t shared_experts = 0;  // DeepSeek shared_experts, Qwen2-MoE shared_expert
  int64_t dense_mlp = 0;       // dense layers' MLPs (DeepSeek first_k_dense_replace, Qwen mlp_only)
  // Routed experts a token runs: per MoE layer NumActiveExperts(l) experts.
  int64_t activated_routed_experts = 0;

  // Sum of every group above except activated_routed_experts.
  int64_t total = 0;
  // Parameters one token touches: total - routed_experts + activated_routed_experts. As usual
  // for published "activated" figures, the whole embedding and lm_head are included.
  int64_t activated = 0;
};

ParameterCounts CountParameters(const ModelConfig& config);

}  // namespace moec::model

#endif  // MOEC_MODEL_CONFIG_PARAMETER_COUNT_H_
