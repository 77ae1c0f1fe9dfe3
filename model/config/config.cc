#include "model/config/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <regex>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_depth.h"
#include "common/status_macros.h"
#include "model/config/config_json.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"

namespace moec::model {
namespace {

using internal::ConfigObject;
using nlohmann::json;

// config.json nests at most 3 levels (moec.odp.beta); nlohmann's recursive parser must never
// see hostile nesting.
constexpr int kMaxJsonDepth = 16;
constexpr int64_t kMaxDim = int64_t{1} << 40;
constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();

struct ArchInfo {
  Architecture arch;
  absl::string_view model_type;
  absl::string_view experts_field;
  double rms_norm_eps;  // transformers' config class defaults
  double rope_theta;
  int64_t max_position_embeddings;
  int64_t kv_heads;  // num_key_value_heads when absent (0: num_attention_heads)
};

constexpr ArchInfo kArchitectures[] = {
    {Architecture::kMixtral, "mixtral", "num_local_experts", 1e-5, 1e6, 4096 * 32, 8},
    {Architecture::kDeepseek, "deepseek", "n_routed_experts", 1e-6, 10000.0, 2048, 0},
    {Architecture::kQwen2Moe, "qwen2_moe", "num_experts", 1e-6, 10000.0, 32768, 16},
    {Architecture::kOlmoe, "olmoe", "num_experts", 1e-5, 10000.0, 4096, 0},
    {Architecture::kQwen3Moe, "qwen3_moe", "num_experts", 1e-6, 10000.0, 32768, 4},
};


absl::StatusOr<const ArchInfo*> FindArchitecture(const ConfigObject& root) {
  const json* v = root.Find("model_type");
  if (v == nullptr) return root.Error("model_type", "missing required string");
  if (!v->is_string()) return root.Error("model_type", "expected a string");
  const std::string name = v->get<std::string>();
  std::vector<std::string> supported;
  for (const ArchInfo& info : kArchitectures) {
    if (info.model_type == name) return &info;
    supported.emplace_back(info.model_type);
  }
  return absl::InvalidArgumentError(absl::StrCat("config file ", root.source(),
                                                 ": unsupported model_type '", name,
                                                 "'; supported: ", absl::StrJoin(supported, ", ")));
}

// Attention heads: num_attention_heads, num_key_value_heads and head_dim.
absl::Status ParseHeads(const ConfigObject& root, const ArchInfo& info, ModelConfig* c) {
  MOEC_ASSIGN_OR_RETURN(int64_t heads, root.RequiredInt("num_attention_heads", 1, 1 << 20));
  c->num_attention_heads = static_cast<int>(heads);
  // Absent: transformers' config class default (Mixtral 8, Qwen2-MoE 16, Qwen3-MoE 4); null or
  // the others: num_attention_heads.
  const int64_t kv_default =
      !root.Has("num_key_value_heads") && info.kv_heads > 0 ? info.kv_heads : heads;
  if (kv_default > heads) {
    return root.Error("num_key_value_heads",
                      absl::StrCat("absent, and transformers' default ", kv_default,
                                   " exceeds num_attention_heads ", heads));
  }
  MOEC_ASSIGN_OR_RETURN(int64_t kv,
                        root.OptionalInt("num_key_value_heads", kv_default, 1, heads));
  if (heads % kv != 0) {
    return root.Error("num_key_value_heads",
                      absl::StrCat(kv, " does not divide num_attention_heads ", heads));
  }
  c->num_key_value_heads = static_cast<int>(kv);
  const json* head_dim = root.Find("head_dim");
  if (head_dim != nullptr) {
    MOEC_ASSIGN_OR_RETURN(c->head_dim, root.AsInt(*head_dim, "head_dim", 1, kMaxDim));
  } else {
    if (c->hidden_size % heads != 0) {
      return root.Error("num_attention_heads",
                        absl::StrCat(heads, " does not divide hidden_size ", c->hidden_size,
                                     " and there is no head_dim"));
    }
    c->head_dim = c->hidden_size / heads;
  }
  return absl::OkStatus();
}

// RoPE: plain rotary embeddings only. Newer transformers move rope_theta into
// rope_parameters; scaled variants (linear, dynamic, yarn, llama3 ...) are refused rather than
// silently computed wrong.
absl::Status ParseRope(const ConfigObject& root, const ArchInfo& info, ModelConfig* c) {
  double theta = info.rope_theta;
  if (const json* rp = root.Find("rope_parameters"); rp != nullptr && !rp->is_null()) {
    if (!rp->is_object()) return root.Error("rope_parameters", "expected an object");
    const ConfigObject rpr(*rp, root.source(), "rope_parameters");
    MOEC_ASSIGN_OR_RETURN(std::string type, rpr.OptionalString("rope_type"));
    if (!type.empty() && type != "default") {
      return rpr.Error(rpr.Path("rope_type"),
                       absl::StrCat("'", type, "' is not supported; supported: default"));
    }
    MOEC_ASSIGN_OR_RETURN(theta, rpr.OptionalPositive("rope_theta", theta));
  }
  if (const json* rs = root.Find("rope_scaling"); rs != nullptr && !rs->is_null()) {
    return root.Error("rope_scaling", "scaled rotary embeddings are not supported");
  }
  MOEC_ASSIGN_OR_RETURN(c->rope_theta, root.OptionalPositive("rope_theta", theta));
  return absl::OkStatus();
}

// Sliding-window attention (Mixtral's sliding_window; Qwen's when use_sliding_window) and
// OLMoE's clip_qkv.
absl::Status ParseWindowAndClip(const ConfigObject& root, const ArchInfo& info,
                                ModelConfig* c) {
  bool window_on = info.arch == Architecture::kMixtral;
  if (info.arch == Architecture::kQwen2Moe || info.arch == Architecture::kQwen3Moe) {
    MOEC_ASSIGN_OR_RETURN(window_on, root.OptionalBool("use_sliding_window", false));
  }
  if (const json* sw = root.Find("sliding_window"); window_on && sw != nullptr && !sw->is_null()) {
    MOEC_ASSIGN_OR_RETURN(int64_t window, root.AsInt(*sw, "sliding_window", 1, kMaxDim));
    c->sliding_window = window;
  }
  if (info.arch == Architecture::kOlmoe) {
    if (const json* clip = root.Find("clip_qkv"); clip != nullptr && !clip->is_null()) {
      MOEC_ASSIGN_OR_RETURN(double v, root.AsNumber(*clip, "clip_qkv", 0.0, 1e30));
      c->clip_qkv = v;
    }
  }
  return absl::OkStatus();
}

// Fields every architecture shares (attention, embeddings, norms).
absl::Status ParseCommon(const ConfigObject& root, const ArchInfo& info, ModelConfig* c) {
  MOEC_ASSIGN_OR_RETURN(c->hidden_size, root.RequiredInt("hidden_size", 1, kMaxDim));
  MOEC_ASSIGN_OR_RETURN(c->intermediate_size, root.RequiredInt("intermediate_size", 1, kMaxDim));
  MOEC_ASSIGN_OR_RETURN(int64_t layers, root.RequiredInt("num_hidden_layers", 1, 1 << 20));
  c->num_hidden_layers = static_cast<int>(layers);
  MOEC_RETURN_IF_ERROR(ParseHeads(root, info, c));
  MOEC_ASSIGN_OR_RETURN(c->rms_norm_eps, root.OptionalPositive("rms_norm_eps", info.rms_norm_eps));
  MOEC_RETURN_IF_ERROR(ParseRope(root, info, c));
  MOEC_RETURN_IF_ERROR(ParseWindowAndClip(root, info, c));
  MOEC_ASSIGN_OR_RETURN(c->vocab_size, root.RequiredInt("vocab_size", 1, kMaxCount));
  MOEC_ASSIGN_OR_RETURN(
      c->max_position_embeddings,
      root.OptionalInt("max_position_embeddings", info.max_position_embeddings, 1, kMaxDim));
  MOEC_ASSIGN_OR_RETURN(c->tie_word_embeddings, root.OptionalBool("tie_word_embeddings", false));
  MOEC_ASSIGN_OR_RETURN(c->torch_dtype, root.OptionalString("torch_dtype"));
  if (c->torch_dtype.empty()) {
    MOEC_ASSIGN_OR_RETURN(c->torch_dtype, root.OptionalString("dtype"));  // transformers >= 4.56
  }
  return absl::OkStatus();
}

// The routed experts: how many, how many per token, and their width.
absl::Status ParseExperts(const ConfigObject& root, const ArchInfo& info, ModelConfig* c) {
  const json* experts = root.Find(info.experts_field);
  if (experts != nullptr && experts->is_array()) {
    return root.Error(info.experts_field,
                      "per-layer lists (Unified-MoE-Compression exports) are not supported; "
                      "moec writes per-layer counts to moec.experts_per_layer");
  }
  MOEC_ASSIGN_OR_RETURN(int64_t n, root.RequiredInt(info.experts_field, 1, kMaxCount));
  c->num_experts = static_cast<int>(n);
  MOEC_ASSIGN_OR_RETURN(int64_t k, root.RequiredInt("num_experts_per_tok", 1, n));
  c->num_experts_per_tok = static_cast<int>(k);
  const Architecture arch = info.arch;
  const bool has_moe_width = arch == Architecture::kDeepseek || arch == Architecture::kQwen2Moe ||
                             arch == Architecture::kQwen3Moe;
  if (has_moe_width) {
    MOEC_ASSIGN_OR_RETURN(c->moe_intermediate_size,
                          root.RequiredInt("moe_intermediate_size", 1, kMaxDim));
  } else {
    c->moe_intermediate_size = c->intermediate_size;
  }
  return absl::OkStatus();
}

// DeepSeek's shared experts, dense first layers, MoE layer frequency and scoring function.
absl::Status ParseDeepseekMoe(const ConfigObject& root, ModelConfig* c) {
  const int layers = c->num_hidden_layers;
  MOEC_ASSIGN_OR_RETURN(int64_t shared, root.OptionalInt("n_shared_experts", 0, 0, kMaxCount));
  c->n_shared_experts = static_cast<int>(shared);
  MOEC_ASSIGN_OR_RETURN(int64_t first, root.OptionalInt("first_k_dense_replace", 0, 0, layers));
  c->first_k_dense_replace = static_cast<int>(first);
  MOEC_ASSIGN_OR_RETURN(int64_t freq, root.OptionalInt("moe_layer_freq", 1, 1, kMaxCount));
  c->moe_layer_freq = static_cast<int>(freq);
  MOEC_ASSIGN_OR_RETURN(std::string scoring, root.OptionalString("scoring_func"));
  if (!scoring.empty() && scoring != "softmax") {
    return root.Error("scoring_func", absl::StrCat("'", scoring,
                                                   "' is not supported "
                                                   "(DeepSeek-MoE v1 uses softmax)"));
  }
  return absl::OkStatus();
}

// Qwen2-MoE's shared expert, and the sparse step and MLP-only layers of both Qwen MoEs.
absl::Status ParseQwenMoe(const ConfigObject& root, Architecture arch, ModelConfig* c) {
  if (arch == Architecture::kQwen2Moe) {
    MOEC_ASSIGN_OR_RETURN(c->shared_expert_intermediate_size,
                          root.RequiredInt("shared_expert_intermediate_size", 1, kMaxDim));
    c->has_shared_expert_gate = true;
  }
  MOEC_ASSIGN_OR_RETURN(int64_t step, root.OptionalInt("decoder_sparse_step", 1, 1, kMaxCount));
  c->decoder_sparse_step = static_cast<int>(step);
  MOEC_ASSIGN_OR_RETURN(c->mlp_only_layers,
                        root.OptionalIndexSet("mlp_only_layers", 0, c->num_hidden_layers - 1));
  return absl::OkStatus();
}

// The per-architecture attention layout: projection biases and q/k norms.
absl::Status ParseAttentionLayout(const ConfigObject& root, Architecture arch,
                                  bool attention_bias, ModelConfig* c) {
  if (arch == Architecture::kQwen2Moe) {
    // Qwen2MoeAttention: q/k/v always biased, o_proj never; "qkv_bias" in newer exports.
    MOEC_ASSIGN_OR_RETURN(c->qkv_bias, root.OptionalBool("qkv_bias", true));
    c->o_bias = false;
  } else {
    c->qkv_bias = attention_bias;
    c->o_bias = attention_bias;
  }
  if (arch == Architecture::kOlmoe) {
    c->qk_norm = QkNorm::kFullWidth;
    if (c->head_dim * c->num_attention_heads != c->hidden_size) {
      return root.Error("head_dim", absl::StrCat("OLMoE needs head_dim * num_attention_heads == "
                                                 "hidden_size, got ",
                                                 c->head_dim, " * ", c->num_attention_heads));
    }
  } else if (arch == Architecture::kQwen3Moe) {
    c->qk_norm = QkNorm::kPerHead;
  }
  return absl::OkStatus();
}

// MoE fields and the per-architecture attention layout.
absl::Status ParseMoe(const ConfigObject& root, const ArchInfo& info, ModelConfig* c) {
  MOEC_RETURN_IF_ERROR(ParseExperts(root, info, c));
  MOEC_ASSIGN_OR_RETURN(c->norm_topk_prob, root.OptionalBool("norm_topk_prob", false));
  MOEC_ASSIGN_OR_RETURN(bool attention_bias, root.OptionalBool("attention_bias", false));
  const Architecture arch = info.arch;
  if (arch == Architecture::kMixtral) {
    c->norm_topk_prob = true;  // MixtralSparseMoeBlock always renormalizes the top-k
    attention_bias = false;    // MixtralAttention has no biases
  }
  if (arch == Architecture::kDeepseek) {
    MOEC_RETURN_IF_ERROR(ParseDeepseekMoe(root, c));
  }
  if (arch == Architecture::kQwen2Moe || arch == Architecture::kQwen3Moe) {
    MOEC_RETURN_IF_ERROR(ParseQwenMoe(root, arch, c));
  }
  return ParseAttentionLayout(root, arch, attention_bias, c);
}

// The top-level object of config.json `text`.
absl::StatusOr<json> ParseRoot(absl::string_view text, absl::string_view source) {
  if (!JsonNestingWithin(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", source, ": JSON nested deeper than ", kMaxJsonDepth));
  }
  json root = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", source, ": malformed JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", source, ": top level is not a JSON object"));
  }
  return root;
}

// quantization_config.dynamic: the "+:<regex>" entries that set a module's bits.
absl::Status ParseDynamicBits(const ConfigObject& qr, QuantizationConfig* quant) {
  if (const nlohmann::json* dyn =
          qr.object().contains("dynamic") ? &qr.object()["dynamic"] : nullptr;
      dyn != nullptr && !dyn->is_null()) {
    if (!dyn->is_object()) return qr.Error(qr.Path("dynamic"), "must be an object");
    for (const auto& [key, value] : dyn->items()) {
      if (key.rfind("+:", 0) != 0 || !value.is_object() || !value.contains("bits")) continue;
      const nlohmann::json& b = value["bits"];
      if (!b.is_number_integer() || b.get<int64_t>() < 1 || b.get<int64_t>() > 8) {
        return qr.Error(qr.Path("dynamic"), absl::StrCat("'", key, "': bits must be 1..8"));
      }
      try {
        std::regex check(key.substr(2));
      } catch (const std::regex_error&) {
        return qr.Error(qr.Path("dynamic"), absl::StrCat("'", key, "' is not a valid regex"));
      }
      quant->dynamic_bits.emplace_back(key.substr(2), b.get<int>());
    }
  }
  return absl::OkStatus();
}

// The quantization_config object (GPTQ or HQQ).
absl::StatusOr<QuantizationConfig> ParseQuantization(const json& q, absl::string_view source) {
  const ConfigObject qr(q, source, "quantization_config");
  QuantizationConfig quant;
  MOEC_ASSIGN_OR_RETURN(quant.quant_method, qr.OptionalString("quant_method"));
  if (quant.quant_method != "gptq" && quant.quant_method != "hqq") {
    return qr.Error(qr.Path("quant_method"),
                    absl::StrCat("unsupported quantization method '", quant.quant_method,
                                 "'; supported: gptq, hqq"));
  }
  MOEC_ASSIGN_OR_RETURN(int64_t bits, qr.OptionalInt("bits", 4, 1, 8));
  quant.bits = static_cast<int>(bits);
  MOEC_ASSIGN_OR_RETURN(quant.group_size, qr.OptionalInt("group_size", 128, -1, 1 << 20));
  if (quant.group_size == 0) return qr.Error(qr.Path("group_size"), "must be -1 or positive");
  MOEC_ASSIGN_OR_RETURN(quant.desc_act, qr.OptionalBool("desc_act", false));
  MOEC_ASSIGN_OR_RETURN(quant.sym, qr.OptionalBool("sym", true));
  MOEC_ASSIGN_OR_RETURN(std::string format, qr.OptionalString("checkpoint_format"));
  if (!format.empty()) quant.checkpoint_format = format;
  if (quant.quant_method == "gptq" && quant.checkpoint_format != "gptq" &&
      quant.checkpoint_format != "gptq_v2") {
    return qr.Error(qr.Path("checkpoint_format"),
                    absl::StrCat("unsupported checkpoint format '", quant.checkpoint_format,
                                 "'; supported: gptq, gptq_v2"));
  }
  MOEC_RETURN_IF_ERROR(ParseDynamicBits(qr, &quant));
  return quant;
}

}  // namespace

absl::string_view ModelTypeName(Architecture arch) {
  for (const ArchInfo& info : kArchitectures) {
    if (info.arch == arch) return info.model_type;
  }
  return "unknown";
}

bool ModelConfig::IsArchitecturalMoeLayer(int layer) const {
  if (layer < 0 || layer >= num_hidden_layers || num_experts <= 0) return false;
  switch (arch) {
    case Architecture::kDeepseek:
      return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
    case Architecture::kQwen2Moe:
    case Architecture::kQwen3Moe:
      return !std::binary_search(mlp_only_layers.begin(), mlp_only_layers.end(), layer) &&
             (layer + 1) % decoder_sparse_step == 0;
    case Architecture::kMixtral:
    case Architecture::kOlmoe:
      return true;
  }
  return false;
}

bool ModelConfig::IsMoeDropped(int layer) const {
  return std::binary_search(moec.dropped_moe_layers.begin(), moec.dropped_moe_layers.end(), layer);
}

bool ModelConfig::IsMoeLayer(int layer) const {
  return IsArchitecturalMoeLayer(layer) && !IsMoeDropped(layer);
}

bool ModelConfig::IsDenseLayer(int layer) const {
  return layer >= 0 && layer < num_hidden_layers && !IsArchitecturalMoeLayer(layer) &&
         !IsMoeDropped(layer);
}

int ModelConfig::NumRoutedExperts(int layer) const {
  if (!IsMoeLayer(layer)) return 0;
  if (!moec.experts_per_layer.empty() && moec.experts_per_layer[layer].has_value()) {
    return *moec.experts_per_layer[layer];
  }
  if (!moec.kept_experts.empty() && moec.kept_experts[layer].has_value()) {
    return static_cast<int>(moec.kept_experts[layer]->size());
  }
  return num_experts;
}

int ModelConfig::NumActiveExperts(int layer) const {
  return std::min(num_experts_per_tok, NumRoutedExperts(layer));
}

std::optional<std::vector<int>> ModelConfig::OriginalExpertIndices(int layer) const {
  if (!moec.kept_experts.empty() && layer >= 0 && layer < num_hidden_layers &&
      moec.kept_experts[layer].has_value()) {
    return moec.kept_experts[layer];
  }
  const int n = NumRoutedExperts(layer);
  if (IsMoeLayer(layer) && n != num_experts) return std::nullopt;
  std::vector<int> identity(n);
  for (int i = 0; i < n; ++i) identity[i] = i;
  return identity;
}

int64_t ModelConfig::DownInputsPerToken(int layer) const {
  if (IsMoeLayer(layer)) {
    return NumActiveExperts(layer) * moe_intermediate_size + SharedExpertIntermediateSize();
  }
  return IsDenseLayer(layer) ? intermediate_size : 0;
}

int64_t ModelConfig::SharedExpertIntermediateSize() const {
  if (arch == Architecture::kDeepseek) return n_shared_experts * moe_intermediate_size;
  if (arch == Architecture::kQwen2Moe) return shared_expert_intermediate_size;
  return 0;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view text, absl::string_view source) {
  MOEC_ASSIGN_OR_RETURN(const json root, ParseRoot(text, source));
  const ConfigObject reader(root, source, "");
  MOEC_ASSIGN_OR_RETURN(const ArchInfo* info, FindArchitecture(reader));
  ModelConfig config;
  config.source = std::string(source);
  config.model_type = std::string(info->model_type);
  config.arch = info->arch;
  MOEC_RETURN_IF_ERROR(ParseCommon(reader, *info, &config));
  MOEC_RETURN_IF_ERROR(ParseMoe(reader, *info, &config));
  if (const json* moec = reader.Find("moec"); moec != nullptr) {
    MOEC_RETURN_IF_ERROR(internal::ParseMoecOverrides(*moec, &config));
  }
  if (const json* q = reader.Find("quantization_config"); q != nullptr && !q->is_null()) {
    if (!q->is_object()) {
      return reader.Error("quantization_config", "must be an object");
    }
    MOEC_ASSIGN_OR_RETURN(config.quantization, ParseQuantization(*q, source));
  }
  return config;
}

int QuantizationConfig::BitsOf(const std::string& module) const {
  for (const auto& [pattern, b] : dynamic_bits) {
    if (std::regex_search(module, std::regex(pattern), std::regex_constants::match_continuous)) return b;
  }
  return bits;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  absl::StatusOr<std::string> text = storage::ReadFileToString(path, kMaxModelConfigBytes);
  if (!text.ok()) return Annotate(text.status(), "model config");
  return ParseModelConfig(*text, path);
}

}  // namespace moec::model
