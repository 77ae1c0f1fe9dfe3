#include "model/config/parameter_count.h"

#include "model/config/tensor_names.h"

namespace moec::model {

ParameterCounts CountParameters(const ModelConfig& config) {
  ParameterCounts c;
  for (const TensorSpec& t : ModelTensors(config)) {
    const int64_t n = t.NumElements();
    switch (t.role) {
      case TensorRole::kEmbedding:
        c.embedding += n;
        break;
      case TensorRole::kLmHead:
        c.lm_head += n;
        break;
      case TensorRole::kNorm:
        c.norms += n;
        break;
      case TensorRole::kAttention:
        c.attention += n;
        break;
      case TensorRole::kRouter:
        c.routers += n;
        break;
      case TensorRole::kRoutedExpert:
        c.routed_experts += n;
        break;
      case TensorRole::kSharedExpert:
        c.shared_experts += n;
        break;
      case TensorRole::kDenseMlp:
        c.dense_mlp += n;
        break;
    }
  }
  // Every routed expert has gate, up [w, h] and down [h, w].
  const int64_t per_expert = 3 * config.hidden_size * config.moe_intermediate_size;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    c.activated_routed_experts += per_expert * config.NumActiveExperts(l);
  }
  c.total = c.embedding + c.lm_head + c.norms + c.attention + c.routers + c.routed_experts +
            c.shared_experts + c.dense_mlp;
  c.activated = c.total - c.routed_experts + c.activated_routed_experts;
  return c;
}

}  // namespace moec::model
