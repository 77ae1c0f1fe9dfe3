#include "tools/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/config/parameter_count.h"
#include "model/tokenizer/pretokenizer.h"
#include "nlohmann/json.hpp"
#include "storage/dtype.h"
#include "storage/file_util.h"
#include "storage/safetensors_writer.h"
#include "tools/tokenizer_json.h"

namespace moec::tools {

using model::ByteLevelAlphabet;
using model::CountParameters;
using model::ModelConfig;
using model::ModelTensors;
using model::ParseModelConfig;
using model::TensorSpec;

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr int kMaxDim = 1 << 20;
constexpr int kMaxLayers = 4096;
constexpr int kMaxExperts = 4096;
constexpr int64_t kChunkElements = 1 << 14;  // elements generated per Write call
constexpr const char* kTransformersVersion = "4.51.0";
// Letters in English frequency order; the merges are "Ġ x" for each, then "x y" for each pair.
constexpr absl::string_view kLetters = "etaoinshrdlcumwfgypbvkjxqz";

struct ArchNames {
  absl::string_view model_type;
  absl::string_view architecture;  // transformers' *ForCausalLM class
};

constexpr ArchNames kArchNames[] = {
    {"mixtral", "MixtralForCausalLM"},  {"deepseek", "DeepseekForCausalLM"},
    {"qwen2_moe", "Qwen2MoeForCausalLM"}, {"olmoe", "OlmoeForCausalLM"},
    {"qwen3_moe", "Qwen3MoeForCausalLM"},
};

const ArchNames* FindArch(absl::string_view model_type) {
  for (const ArchNames& a : kArchNames) {
    if (a.model_type == model_type) return &a;
  }
  return nullptr;
}

absl::Status CheckRange(absl::string_view field, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("tiny model option ", field, " = ", v, " is outside [", lo, ", ", hi, "]"));
}

absl::string_view TorchDtype(absl::string_view dtype) {
  if (dtype == "BF16") return "bfloat16";
  if (dtype == "F16") return "float16";
  return "float32";
}

// Checks the options one by one (without building the config).
absl::Status ValidateFields(const TinyModelOptions& o) {
  if (FindArch(o.model_type) == nullptr) {
    std::vector<absl::string_view> names;
    for (const ArchNames& a : kArchNames) names.push_back(a.model_type);
    return absl::InvalidArgumentError(absl::StrCat("unsupported model_type '", o.model_type,
                                                   "'; supported: ", absl::StrJoin(names, ", ")));
  }
  MOEC_RETURN_IF_ERROR(CheckRange("num_layers", o.num_layers, 1, kMaxLayers));
  MOEC_RETURN_IF_ERROR(CheckRange("hidden", o.hidden, 1, kMaxDim));
  MOEC_RETURN_IF_ERROR(CheckRange("heads", o.heads, 1, o.hidden));
  MOEC_RETURN_IF_ERROR(CheckRange("kv_heads", o.kv_heads, 1, o.heads));
  if (o.hidden % o.heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tiny model option heads = ", o.heads, " does not divide hidden ", o.hidden));
  }
  if (o.heads % o.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tiny model option kv_heads = ", o.kv_heads, " does not divide heads ", o.heads));
  }
  MOEC_RETURN_IF_ERROR(CheckRange("experts", o.experts, 1, kMaxExperts));
  MOEC_RETURN_IF_ERROR(CheckRange("top_k", o.top_k, 1, o.experts));
  MOEC_RETURN_IF_ERROR(CheckRange("moe_intermediate", o.moe_intermediate, 1, kMaxDim));
  MOEC_RETURN_IF_ERROR(CheckRange("intermediate", o.intermediate, 1, kMaxDim));
  MOEC_RETURN_IF_ERROR(CheckRange("shared_experts", o.shared_experts,
                                  o.model_type == "qwen2_moe" ? 1 : 0, kMaxExperts));
  MOEC_RETURN_IF_ERROR(CheckRange("vocab", o.vocab, 256, 256 + kTinyMaxMerges));
  if (o.dtype != "F32" && o.dtype != "BF16" && o.dtype != "F16") {
    return absl::InvalidArgumentError(
        absl::StrCat("tiny model option dtype '", o.dtype, "' is not one of F32, BF16, F16"));
  }
  return absl::OkStatus();
}

// The fields of every architecture's config.json.
json CommonConfig(const TinyModelOptions& o) {
  const std::string& t = o.model_type;
  const int bos = o.vocab;
  return {
      {"architectures", {std::string(FindArch(t)->architecture)}},
      {"model_type", t},
      {"hidden_size", o.hidden},
      {"num_hidden_layers", o.num_layers},
      {"num_attention_heads", o.heads},
      {"num_key_value_heads", o.kv_heads},
      {"vocab_size", o.vocab + kTinyNumSpecialTokens},
      {"max_position_embeddings", 4096},
      {"hidden_act", "silu"},
      {"initializer_range", 0.02},
      {"attention_dropout", 0.0},
      {"tie_word_embeddings", false},
      {"use_cache", true},
      {"bos_token_id", bos},
      {"eos_token_id", bos + 1},
      {"torch_dtype", std::string(TorchDtype(o.dtype))},
      {"transformers_version", kTransformersVersion},
      {"num_experts_per_tok", o.top_k},
      {"output_router_logits", false},
  };
}

void AddMixtralConfig(const TinyModelOptions& o, json* c) {
  (*c)["intermediate_size"] = o.moe_intermediate;  // Mixtral's expert width
  (*c)["num_local_experts"] = o.experts;
  (*c)["router_aux_loss_coef"] = 0.02;
  (*c)["router_jitter_noise"] = 0.0;
  (*c)["sliding_window"] = nullptr;
  (*c)["rms_norm_eps"] = 1e-5;
  (*c)["rope_theta"] = 1e6;
}

void AddDeepseekConfig(const TinyModelOptions& o, json* c) {
  (*c)["intermediate_size"] = o.intermediate;
  (*c)["moe_intermediate_size"] = o.moe_intermediate;
  (*c)["n_routed_experts"] = o.experts;
  (*c)["n_shared_experts"] = o.shared_experts > 0 ? json(o.shared_experts) : json(nullptr);
  (*c)["first_k_dense_replace"] = o.num_layers > 1 ? 1 : 0;
  (*c)["moe_layer_freq"] = 1;
  (*c)["norm_topk_prob"] = false;
  (*c)["scoring_func"] = "softmax";
  (*c)["aux_loss_alpha"] = 0.001;
  (*c)["seq_aux"] = true;
  (*c)["attention_bias"] = false;
  (*c)["pretraining_tp"] = 1;
  (*c)["rope_scaling"] = nullptr;
  (*c)["rms_norm_eps"] = 1e-6;
  (*c)["rope_theta"] = 10000.0;
  (*c)["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekConfig"},
                      {"AutoModel", "modeling_deepseek.DeepseekModel"},
                      {"AutoModelForCausalLM", "modeling_deepseek.DeepseekForCausalLM"}};
}

// Qwen models: every layer MoE (no mlp_only_layers), as released.
void AddQwenCommonConfig(const TinyModelOptions& o, json* q) {
  (*q)["moe_intermediate_size"] = o.moe_intermediate;
  (*q)["intermediate_size"] = o.intermediate;
  (*q)["num_experts"] = o.experts;
  (*q)["decoder_sparse_step"] = 1;
  (*q)["mlp_only_layers"] = json::array();
  (*q)["router_aux_loss_coef"] = 0.001;
  (*q)["use_sliding_window"] = false;
  (*q)["sliding_window"] = nullptr;
  (*q)["max_window_layers"] = o.num_layers;
  (*q)["rms_norm_eps"] = 1e-6;
}

void AddQwen2MoeConfig(const TinyModelOptions& o, json* c) {
  AddQwenCommonConfig(o, c);
  (*c)["shared_expert_intermediate_size"] = int64_t{o.shared_experts} * o.moe_intermediate;
  (*c)["norm_topk_prob"] = false;
  (*c)["rope_theta"] = 1e6;
}

void AddOlmoeConfig(const TinyModelOptions& o, json* c) {
  (*c)["intermediate_size"] = o.moe_intermediate;  // OLMoE's expert width
  (*c)["num_experts"] = o.experts;
  (*c)["norm_topk_prob"] = false;
  (*c)["clip_qkv"] = nullptr;
  (*c)["attention_bias"] = false;
  (*c)["router_aux_loss_coef"] = 0.01;
  (*c)["rope_scaling"] = nullptr;
  (*c)["rms_norm_eps"] = 1e-5;
  (*c)["rope_theta"] = 10000.0;
}

void AddQwen3MoeConfig(const TinyModelOptions& o, json* c) {
  AddQwenCommonConfig(o, c);
  (*c)["head_dim"] = o.hidden / o.heads;
  (*c)["norm_topk_prob"] = true;
  (*c)["attention_bias"] = false;
  (*c)["rope_scaling"] = nullptr;
  (*c)["rope_theta"] = 1e6;
}

json BuildConfig(const TinyModelOptions& o) {
  const std::string& t = o.model_type;
  json c = CommonConfig(o);
  if (t == "mixtral") {
    AddMixtralConfig(o, &c);
  } else if (t == "deepseek") {
    AddDeepseekConfig(o, &c);
  } else if (t == "qwen2_moe") {
    AddQwen2MoeConfig(o, &c);
  } else if (t == "olmoe") {
    AddOlmoeConfig(o, &c);
  } else {  // qwen3_moe
    AddQwen3MoeConfig(o, &c);
  }
  return c;
}

std::string Dump(const json& j) { return j.dump(2) + "\n"; }
std::string Dump(const ordered_json& j) { return j.dump(2) + "\n"; }

// The (left, right) pieces of merge `rank` (0-based), as ByteLevel strings.
std::pair<std::string, std::string> Merge(int rank) {
  const std::string space = ByteLevelAlphabet()[' '];
  if (rank < 26) return {space, std::string(1, kLetters[rank])};
  rank -= 26;
  return {std::string(1, kLetters[rank / 26]), std::string(1, kLetters[rank % 26])};
}

std::string TokenizerJson(const TinyModelOptions& o) {
  ByteLevelBpeTokenizer t;
  for (int b = 0; b < 256; ++b) t.tokens.push_back(ByteLevelAlphabet()[b]);
  for (int r = 0; r < o.vocab - 256; ++r) {
    auto [left, right] = Merge(r);
    t.tokens.push_back(left + right);
    t.merges.push_back(left + " " + right);
  }
  t.specials = {{o.vocab, std::string(kTinyBosToken)}, {o.vocab + 1, std::string(kTinyEosToken)}};
  t.bos = std::string(kTinyBosToken);
  return ByteLevelBpeTokenizerJson(t);
}

std::string TokenizerConfigJson(const TinyModelOptions& o) {
  ordered_json decoder = ordered_json::object();
  for (int i = 0; i < kTinyNumSpecialTokens; ++i) {
    ordered_json t =
        AddedTokenJson(o.vocab + i, std::string(i == 0 ? kTinyBosToken : kTinyEosToken));
    t.erase("id");
    decoder[std::to_string(o.vocab + i)] = t;
  }
  const ordered_json config = {
      {"added_tokens_decoder", decoder},
      {"bos_token", std::string(kTinyBosToken)},
      {"eos_token", std::string(kTinyEosToken)},
      {"clean_up_tokenization_spaces", false},
      {"model_max_length", 4096},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
  };
  return Dump(config);
}

std::string GenerationConfigJson(const TinyModelOptions& o) {
  const json g = {{"_from_model_config", true},
                  {"bos_token_id", o.vocab},
                  {"eos_token_id", o.vocab + 1},
                  {"transformers_version", kTransformersVersion}};
  return Dump(g);
}

void AppendLittleEndian(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void AppendValue(float v, storage::DType dtype, std::string* out) {
  switch (dtype) {
    case storage::DType::kBF16:
      AppendLittleEndian(internal::FloatToBf16(v), 2, out);
      return;
    case storage::DType::kF16:
      AppendLittleEndian(internal::FloatToF16(v), 2, out);
      return;
    default: {
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      AppendLittleEndian(bits, 4, out);
    }
  }
}

// Generates tensor `spec` chunk by chunk and hands the bytes to `writer`.
absl::Status StreamTensor(const TensorSpec& spec, const ModelConfig& config, uint64_t seed,
                          storage::DType dtype, storage::ShardedSafetensorsWriter* writer) {
  const float a = internal::InitBound(spec, config);
  uint64_t state = internal::TensorStreamSeed(seed, spec.name);
  const int64_t n = spec.NumElements();
  std::string buf;
  for (int64_t begin = 0; begin < n; begin += kChunkElements) {
    const int64_t end = std::min(n, begin + kChunkElements);
    buf.clear();
    for (int64_t i = begin; i < end; ++i) {
      const float v = a == 0.0f ? 1.0f : internal::UniformFromBits(internal::SplitMix64(&state), a);
      AppendValue(v, dtype, &buf);
    }
    MOEC_RETURN_IF_ERROR(writer->Write(spec.name, buf));
  }
  return absl::OkStatus();
}

absl::Status WriteWeights(const TinyModelOptions& o, const ModelConfig& config,
                          const std::string& dir) {
  const storage::DType dtype = *storage::ParseDType(o.dtype);
  const std::vector<TensorSpec> specs = ModelTensors(config);
  absl::flat_hash_map<std::string, const TensorSpec*> by_name;
  std::vector<storage::TensorSpec> declared;
  for (const TensorSpec& s : specs) {
    by_name[s.name] = &s;
    declared.push_back(storage::TensorSpec{s.name, dtype, s.shape});
  }
  storage::ShardingOptions sharding;
  sharding.max_shard_bytes =
      o.max_shard_bytes == 0 ? std::numeric_limits<uint64_t>::max() : o.max_shard_bytes;
  MOEC_ASSIGN_OR_RETURN(auto writer,
                        storage::ShardedSafetensorsWriter::Create(dir, std::move(declared),
                                                                  {{"format", "pt"}}, sharding));
  for (const storage::TensorSpec& t : writer->order()) {
    MOEC_RETURN_IF_ERROR(StreamTensor(*by_name.at(t.name), config, o.seed, dtype, writer.get()));
  }
  return writer->Finish();
}

absl::Status PrepareDir(const std::string& dir) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) {
    if (!std::filesystem::is_directory(dir, ec)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
    }
    if (!std::filesystem::is_empty(dir, ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, " is not empty; refusing to write a tiny model into it"));
    }
    return absl::OkStatus();
  }
  if (!std::filesystem::create_directories(dir, ec) || ec) {
    return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TinyModelOptions::Validate() const {
  MOEC_RETURN_IF_ERROR(ValidateFields(*this));
  MOEC_ASSIGN_OR_RETURN(ModelConfig config,
                        ParseModelConfig(BuildConfig(*this).dump(), "tiny model config"));
  const int64_t params = CountParameters(config).total;
  if (params > max_parameters) {
    return absl::InvalidArgumentError(absl::StrCat("tiny model options give ", params,
                                                   " parameters; the limit is ",
                                                   max_parameters));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TinyModelConfigJson(const TinyModelOptions& options) {
  MOEC_RETURN_IF_ERROR(options.Validate());
  return Dump(BuildConfig(options));
}

absl::Status WriteTinyModel(const TinyModelOptions& options, const std::string& dir) {
  MOEC_ASSIGN_OR_RETURN(std::string config_text, TinyModelConfigJson(options));
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  MOEC_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(config_text, config_path));
  MOEC_RETURN_IF_ERROR(PrepareDir(dir));
  auto write = [&dir](const char* name, const std::string& text) {
    return storage::WriteFileAtomically((std::filesystem::path(dir) / name).string(), text);
  };
  MOEC_RETURN_IF_ERROR(write("config.json", config_text));
  MOEC_RETURN_IF_ERROR(write("generation_config.json", GenerationConfigJson(options)));
  MOEC_RETURN_IF_ERROR(write("tokenizer.json", TokenizerJson(options)));
  MOEC_RETURN_IF_ERROR(write("tokenizer_config.json", TokenizerConfigJson(options)));
  return Annotate(WriteWeights(options, config, dir), absl::StrCat("tiny model ", dir));
}

namespace internal {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

uint64_t TensorStreamSeed(uint64_t seed, absl::string_view name) { return seed ^ Fnv1a64(name); }

float InitBound(const TensorSpec& spec, const ModelConfig& config) {
  if (absl::EndsWith(spec.name, "norm.weight")) return 0.0f;
  const int64_t fan_in = spec.shape.size() >= 2 ? spec.shape[1] : config.hidden_size;
  return 1.0f / std::sqrt(static_cast<float>(fan_in));
}

float UniformFromBits(uint64_t x, float a) {
  const float u = static_cast<float>(x >> 40) * 0x1p-24f;  // exact: 24 bits
  return (2.0f * u - 1.0f) * a;                             // 2u - 1 exact too
}

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t mag = bits & 0x7FFFFFFFu;
  if (mag >= 0x7F800000u) return sign | (mag > 0x7F800000u ? 0x7E00 : 0x7C00);  // NaN, inf
  if (mag >= 0x477FF000u) return sign | 0x7C00;  // >= 65520 rounds to infinity
  if (mag < 0x38800000u) {                       // below 2^-14: a half subnormal (or zero)
    if (mag < 0x33000000u) return sign;          // below 2^-25: rounds to zero
    const uint32_t exp = mag >> 23;
    const uint32_t mant = (mag & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // value / 2^-24 = mant >> shift
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = mag - 0x38000000u;  // rebias the exponent from 127 to 15
  r = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  return sign | static_cast<uint16_t>(r);
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float F16ToFloat(uint16_t h) {
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 31) return mant == 0 ? sign * std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::quiet_NaN();
  return sign * std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
}

}  // namespace internal
}  // namespace moec::tools
