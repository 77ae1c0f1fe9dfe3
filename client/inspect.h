// `moec inspect MODEL`: what a Hugging Face MoE checkpoint directory holds (architecture, layer
// kinds, experts, parameter counts, stored dtypes, shards, moec's per-layer overrides), read
// from config.json and the safetensors headers only (no tensor data is touched).
#ifndef MOEC_CLIENT_INSPECT_H_
#define MOEC_CLIENT_INSPECT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"

namespace moec::client {

// moec's overrides of one layer (only layers with at least one override are listed).
struct LayerOverride {
  int layer = 0;
  std::optional<int> experts;                    // moec.experts_per_layer
  std::optional<std::vector<int>> kept_experts;  // moec.kept_experts
  bool moe_dropped = false;                      // in moec.dropped_moe_layers
  std::optional<double> skip_beta;               // moec.skip_beta
  std::optional<double> odp_beta;                // moec.odp.beta (ODP enabled at this layer)
};

struct ModelInspection {
  std::string model_dir;
  std::string model_type;
  std::vector<std::string> architectures;  // config.json "architectures" (may be empty)
  int num_layers = 0;
  int num_moe_layers = 0;      // layers holding a MoE block
  int num_dense_layers = 0;    // layers holding a dense MLP
  int num_dropped_moe_layers = 0;
  int num_experts = 0;         // routed experts per MoE layer, as configured
  int top_k = 0;               // num_experts_per_tok
  std::vector<int> routed_experts_per_layer;  // NumRoutedExperts(l), 0 for non-MoE layers
  int shared_experts = 0;      // DeepSeek n_shared_experts; Qwen2-MoE 1 shared MLP; else 0
  int64_t shared_expert_intermediate_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  std::string torch_dtype;           // config.json's, may be empty
  model::ParameterCounts parameters;  // from config.json (CountParameters)

  // From the safetensors headers; all zero/empty when the directory holds no weights.
  bool has_weights = false;
  std::map<std::string, int64_t> tensors_by_dtype;  // "BF16" -> tensors stored as BF16
  int64_t num_tensors = 0;
  uint64_t tensor_bytes = 0;   // sum of tensor data sizes
  int num_shards = 0;          // .safetensors files
  uint64_t size_on_disk = 0;   // sum of the .safetensors file sizes (headers included)
  // Tensors config.json expects but the checkpoint lacks, and the reverse; tensors present in
  // both whose shape differs. Sorted names.
  std::vector<std::string> missing_tensors;
  std::vector<std::string> unexpected_tensors;
  std::vector<std::string> mismatched_shapes;

  bool has_moec_overrides = false;  // config.json has a "moec" object
  std::vector<LayerOverride> layer_overrides;
  std::optional<model::OdpSettings> odp;
};

// Inspects the model directory `model_dir`.
// Possible errors: NotFound (no such directory; no config.json), FailedPrecondition (not a
// directory), as LoadModelConfig (InvalidArgument for a malformed config or an unsupported
// model_type), as SafetensorsCheckpoint::Open when weights are present but unreadable.
absl::StatusOr<ModelInspection> InspectModel(const std::string& model_dir);

}  // namespace moec::client

#endif  // MOEC_CLIENT_INSPECT_H_
