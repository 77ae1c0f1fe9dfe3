// Hugging Face safetensors tensor names and shapes of the supported MoE architectures, derived
// from a ModelConfig (honouring moec's per-layer overrides). Shapes follow nn.Linear: [out, in].
// Names are those of the transformers modeling files (DeepSeek: its remote modeling_deepseek.py);
// docs/formats/model_config.md lists them per architecture.
#ifndef MOEC_MODEL_CONFIG_TENSOR_NAMES_H_
#define MOEC_MODEL_CONFIG_TENSOR_NAMES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "model/config/config.h"

namespace moec::model {

// What a tensor is for (parameter accounting, per-role processing).
enum class TensorRole {
  kEmbedding,
  kLmHead,
  kNorm,       // input/post-attention/final RMSNorm weights
  kAttention,  // q/k/v/o projections, their biases, q_norm/k_norm
  kRouter,     // routed-expert gate, and Qwen2-MoE's shared_expert_gate
  kRoutedExpert,
  kSharedExpert,
  kDenseMlp,
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kAttention;
  int expert = -1;  // routed experts: index within the layer (0..NumRoutedExperts-1), else -1

  int64_t NumElements() const;
};

// The three matrices of a SwiGLU expert. Mixtral names them w1 (gate), w3 (up), w2 (down).
enum class ExpertProj { kGate, kUp, kDown };

// "model.embed_tokens.weight".
std::string EmbeddingTensorName();
// "model.norm.weight".
std::string FinalNormTensorName();
// The output projection: "lm_head.weight", or EmbeddingTensorName() when embeddings are tied.
std::string LmHeadTensorName(const ModelConfig& config);

// REQUIRES (for all per-layer functions): 0 <= layer < config.num_hidden_layers.

// q/k/v/o_proj weights, then biases where present, then q_norm/k_norm weights where present.
std::vector<TensorSpec> AttentionTensors(const ModelConfig& config, int layer);
std::vector<std::string> AttentionTensorNames(const ModelConfig& config, int layer);

// The router of a MoE layer: "model.layers.{l}.block_sparse_moe.gate.weight" (Mixtral) or
// "model.layers.{l}.mlp.gate.weight". REQUIRES: config.IsMoeLayer(layer).
std::string RouterTensorName(const ModelConfig& config, int layer);

// Routed expert `expert` (0-based within the layer, i.e. after moec pruning re-indexed) of a
// MoE layer. REQUIRES: config.IsMoeLayer(layer), 0 <= expert < NumRoutedExperts(layer).
std::string ExpertTensorName(const ModelConfig& config, int layer, int expert, ExpertProj which);

// Shared-expert tensors of a MoE layer (gate, up, down; then Qwen2-MoE's shared_expert_gate);
// empty for architectures without shared experts or layers without a MoE block.
std::vector<TensorSpec> SharedExpertTensors(const ModelConfig& config, int layer);
std::vector<std::string> SharedExpertTensorNames(const ModelConfig& config, int layer);

// Every tensor of decoder layer `layer`, in this order: input_layernorm, attention,
// post_attention_layernorm, then the MLP: a dense MLP (gate, up, down), or a MoE block (router
// unless the layer has no routed experts; experts 0..n-1 each gate, up, down; shared experts).
// A layer whose MoE block was dropped (moec.dropped_moe_layers) has neither
// post_attention_layernorm nor MLP.
std::vector<TensorSpec> LayerTensors(const ModelConfig& config, int layer);
std::vector<std::string> LayerTensorNames(const ModelConfig& config, int layer);

// The whole checkpoint: embedding, layers 0..L-1, final norm, lm_head (absent when tied).
std::vector<TensorSpec> ModelTensors(const ModelConfig& config);

}  // namespace moec::model

#endif  // MOEC_MODEL_CONFIG_TENSOR_NAMES_H_
