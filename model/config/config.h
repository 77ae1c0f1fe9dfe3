// Hugging Face config.json of the supported Mixture-of-Experts architectures (Mixtral,
// DeepSeek-MoE v1, Qwen2-MoE, OLMoE, Qwen3-MoE), with moec's own per-layer overrides (the
// optional "moec" object its exports write). See docs/formats/model_config.md for the field
// mapping; tensor names are in model/tensor_names.h, parameter counts in parameter_count.h.
#ifndef MOEC_MODEL_CONFIG_CONFIG_H_
#define MOEC_MODEL_CONFIG_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec::model {

// config.json files larger than this are refused (ResourceExhausted) before they are parsed.
inline constexpr uint64_t kMaxModelConfigBytes = 16ull << 20;

enum class Architecture { kMixtral, kDeepseek, kQwen2Moe, kOlmoe, kQwen3Moe };

// The model_type string of `arch` ("mixtral", "deepseek", "qwen2_moe", "olmoe", "qwen3_moe").
absl::string_view ModelTypeName(Architecture arch);

// How an attention block normalizes queries and keys (RMSNorm weights).
enum class QkNorm {
  kNone,       // Mixtral, DeepSeek, Qwen2-MoE
  kFullWidth,  // OLMoE: q_norm over heads*head_dim, k_norm over kv_heads*head_dim
  kPerHead,    // Qwen3-MoE: q_norm and k_norm over head_dim, shared by all heads
};

// Online Dynamic Pruning (MC-MoE, ALGORITHMS.md 3.6) settings written by moec exports.
struct OdpSettings {
  std::vector<int> enabled_layers;          // ascending, distinct, each a MoE layer
  std::vector<std::optional<double>> beta;  // one per layer; set exactly at enabled layers
  double tau_low = 0.0;                     // fraction of least important tokens skipping both
  double tau_high = 0.02;                   // fraction of most important tokens protected
  bool positional_prior = false;            // compat: MC-MoE's degenerate attention statistic
};

// The optional "moec" object. Per-layer lists are empty when absent, else num_hidden_layers long.
struct MoecOverrides {
  int format_version = 1;
  // Routed experts kept per layer (nullopt: the architecture's count).
  std::vector<std::optional<int>> experts_per_layer;
  // Original expert index of each kept (re-indexed 0..n-1) expert, ascending; nullopt: unknown.
  std::vector<std::optional<std::vector<int>>> kept_experts;
  // Layers whose MoE sub-block (post_attention_layernorm + MoE) was removed; ascending.
  std::vector<int> dropped_moe_layers;
  // Dynamic-skipping threshold β per layer (Expert_Sparsity 1.5); nullopt: no skipping.
  std::vector<std::optional<double>> skip_beta;
  std::optional<OdpSettings> odp;
};

// config.json's "quantization_config" of a GPTQ checkpoint (GPTQModel / AutoGPTQ / transformers).
// Bit widths per module are read from the tensor shapes, so mixed-width checkpoints (with
// per-module "dynamic" overrides) load too.
struct QuantizationConfig {
  std::string quant_method;  // "gptq", or "hqq" (docs/formats/hqq.md: packed W_q/scale/zero)
  int bits = 4;
  int64_t group_size = 128;  // -1: one group per row
  bool desc_act = false;
  bool sym = true;
  // "gptq": zero points stored minus one (AutoGPTQ v1); "gptq_v2": stored as they are.
  std::string checkpoint_format = "gptq";
  // Per-module widths of mixed-width checkpoints: `dynamic` entries "+:<regex>": {"bits": b}, in
  // key order (GPTQModel uses file order; they differ only for overlapping patterns, which
  // moec's exports never write); a module takes the first whose regex matches the start of its
  // name (GPTQModel's re.match), else `bits`.
  std::vector<std::pair<std::string, int>> dynamic_bits;
  // The width of module `module` (a weight's name without ".weight") by the rules above.
  int BitsOf(const std::string& module) const;
};

// One parsed and validated config.json. Field names follow Hugging Face; where architectures
// name a quantity differently the comment lists the source fields. Copyable value type.
struct ModelConfig {
  std::string source;  // file (or caller-given name) it was parsed from, for messages
  std::string model_type;
  Architecture arch = Architecture::kMixtral;

  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width (Mixtral/OLMoE: the expert width)
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // default num_attention_heads
  int64_t head_dim = 0;         // "head_dim" when present and not null, else hidden/heads
  double rms_norm_eps = 0;      // default per architecture (transformers' config class)
  double rope_theta = 0;        // default per architecture
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  std::string torch_dtype;  // "torch_dtype" (or newer "dtype"); empty when absent

  // Routed experts per MoE layer: num_local_experts (Mixtral), n_routed_experts (DeepSeek),
  // num_experts (Qwen2-MoE, OLMoE, Qwen3-MoE).
  int num_experts = 0;
  int num_experts_per_tok = 0;
  // Routed expert FFN width: moe_intermediate_size (DeepSeek, Qwen); Mixtral/OLMoE have none
  // and use intermediate_size, copied here.
  int64_t moe_intermediate_size = 0;
  int n_shared_experts = 0;  // DeepSeek (null -> 0); shared MLP width = n * moe_intermediate_size
  int64_t shared_expert_intermediate_size = 0;  // Qwen2-MoE only
  bool has_shared_expert_gate = false;          // Qwen2-MoE: sigmoid(shared_expert_gate x)
  int first_k_dense_replace = 0;                // DeepSeek
  int moe_layer_freq = 1;                       // DeepSeek
  int decoder_sparse_step = 1;                  // Qwen2-MoE, Qwen3-MoE
  std::vector<int> mlp_only_layers;             // Qwen2-MoE, Qwen3-MoE (ascending)
  // Top-k weights renormalized to sum 1. Mixtral always (no field); others "norm_topk_prob".
  bool norm_topk_prob = false;
  std::string scoring_func = "softmax";  // DeepSeek "scoring_func"; others softmax

  bool qkv_bias = false;  // q/k/v_proj carry a bias (Qwen2-MoE always; else attention_bias)
  bool o_bias = false;    // o_proj carries a bias (attention_bias, not Qwen2-MoE/Mixtral)
  QkNorm qk_norm = QkNorm::kNone;
  // OLMoE "clip_qkv": q, k and v are clamped to [-clip, clip] after projection (and q/k norm).
  std::optional<double> clip_qkv;
  // Sliding-window attention span, when active (Mixtral "sliding_window"; Qwen with
  // "use_sliding_window"). The forward refuses sequences longer than the window.
  std::optional<int64_t> sliding_window;

  MoecOverrides moec;
  std::optional<QuantizationConfig> quantization;  // quantized checkpoints only

  // True when the architecture's rule makes `layer` a MoE layer, ignoring moec overrides:
  // DeepSeek: layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  // Qwen: layer not in mlp_only_layers && (layer + 1) % decoder_sparse_step == 0;
  // Mixtral, OLMoE: every layer. False outside [0, num_hidden_layers).
  bool IsArchitecturalMoeLayer(int layer) const;
  // True when `layer`'s MoE sub-block was removed (moec.dropped_moe_layers).
  bool IsMoeDropped(int layer) const;
  // True when `layer` holds a MoE block in this checkpoint: architectural and not dropped.
  bool IsMoeLayer(int layer) const;
  // True when `layer` holds a dense MLP (not MoE, not dropped).
  bool IsDenseLayer(int layer) const;
  // Routed experts present in `layer`: 0 unless IsMoeLayer; else moec.experts_per_layer, the
  // size of moec.kept_experts, or num_experts, in that order. May be 0 (all pruned).
  int NumRoutedExperts(int layer) const;
  // Experts each token uses in `layer`: min(num_experts_per_tok, NumRoutedExperts(layer)).
  int NumActiveExperts(int layer) const;
  // Original indices of the experts present in `layer` (identity when nothing was pruned);
  // nullopt when experts were pruned but moec.kept_experts does not say which.
  std::optional<std::vector<int>> OriginalExpertIndices(int layer) const;
  // Width of the shared expert MLP of a MoE layer (0 when the architecture has none).
  int64_t SharedExpertIntermediateSize() const;
  // Elements per token of the inputs of `layer`'s down projections: the active experts' widths
  // and the shared expert's in a MoE layer, intermediate_size in a dense one, 0 without an MLP.
  int64_t DownInputsPerToken(int layer) const;
};

// Parses and validates the text of a config.json. `source` names it in messages.
// Possible errors: InvalidArgument (malformed JSON; unsupported model_type, naming it and the
// supported ones; a missing, mistyped or out-of-range field, naming the field and `source`;
// an invalid "moec" object).
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json, absl::string_view source);

// Reads `model_dir`/config.json and parses it.
// Possible errors: NotFound (no config.json), ResourceExhausted (larger than
// kMaxModelConfigBytes), as ParseModelConfig otherwise.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace moec::model

#endif  // MOEC_MODEL_CONFIG_CONFIG_H_
