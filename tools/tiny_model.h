// A generator of tiny random Mixture-of-Experts checkpoints in Hugging Face layout (config.json,
// safetensors weights, tokenizer.json, tokenizer_config.json, generation_config.json) for every
// supported architecture. Values come from a documented PRNG, so the same options always give
// byte-identical files. See docs/formats/tiny_model.md.
#ifndef MOEC_TOOLS_TINY_MODEL_H_
#define MOEC_TOOLS_TINY_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"

namespace moec::tools {

// Byte-level BPE tokenizer of a tiny model: ids 0..255 are the bytes, then merges, then
// <|bos|> and <|eos|>. At most this many merges exist (ids 256..256+kTinyMaxMerges-1).
inline constexpr int kTinyMaxMerges = 26 + 26 * 26;
inline constexpr int kTinyNumSpecialTokens = 2;
inline constexpr absl::string_view kTinyBosToken = "<|bos|>";
inline constexpr absl::string_view kTinyEosToken = "<|eos|>";
// Models larger than this many parameters are refused ("tiny").
inline constexpr int64_t kTinyMaxParameters = int64_t{1} << 30;

struct TinyModelOptions {
  // "mixtral", "deepseek", "qwen2_moe", "olmoe" or "qwen3_moe".
  std::string model_type = "mixtral";
  int num_layers = 2;  // num_hidden_layers
  int hidden = 64;     // hidden_size; must be a multiple of `heads` (head_dim = hidden / heads)
  int heads = 4;       // num_attention_heads
  int kv_heads = 2;    // num_key_value_heads; must divide `heads`
  int experts = 8;     // routed experts per MoE layer
  int top_k = 2;       // num_experts_per_tok, in [1, experts]
  // Routed expert width (Mixtral and OLMoE write it as intermediate_size).
  int moe_intermediate = 96;
  // Dense MLP width (DeepSeek's first layer, which is dense when num_layers > 1).
  int intermediate = 128;
  // Shared experts: DeepSeek n_shared_experts (>= 0); Qwen2-MoE one shared MLP of width
  // shared_experts * moe_intermediate (>= 1). Ignored by the other architectures.
  int shared_experts = 1;
  // Tokens of the BPE model: 256 byte tokens plus (vocab - 256) merges, in
  // [256, 256 + kTinyMaxMerges]. config.json's vocab_size is vocab + kTinyNumSpecialTokens.
  int vocab = 288;
  uint64_t seed = 0;            // PRNG seed of every tensor
  std::string dtype = "F32";    // "F32", "BF16" or "F16"
  uint64_t max_shard_bytes = 0; // largest shard in tensor bytes; 0 = one model.safetensors
  // Models with more parameters are refused; benchmarks that need a synthetic model of several
  // GiB raise it.
  int64_t max_parameters = kTinyMaxParameters;

  // InvalidArgument naming the first bad field (also for models over max_parameters).
  absl::Status Validate() const;
};

// Writes a tiny random model into `dir` (created if missing). Tensors are exactly
// ModelTensors(config) and are streamed through ShardedSafetensorsWriter.
// Possible errors: InvalidArgument (bad options), FailedPrecondition (`dir` exists and is not an
// empty directory), errors of the file system and of the safetensors writer.
absl::Status WriteTinyModel(const TinyModelOptions& options, const std::string& dir);

// The config.json text WriteTinyModel writes (indent 2, sorted keys, trailing newline).
// Possible errors: InvalidArgument (bad options).
absl::StatusOr<std::string> TinyModelConfigJson(const TinyModelOptions& options);

namespace internal {

// splitmix64 (Steele, Lea, Flood 2014): advances `*state` and returns the next output.
uint64_t SplitMix64(uint64_t* state);
// FNV-1a 64-bit hash of `bytes`.
uint64_t Fnv1a64(absl::string_view bytes);
// The initial PRNG state of tensor `name`: seed XOR Fnv1a64(name).
uint64_t TensorStreamSeed(uint64_t seed, absl::string_view name);
// Half-width of the uniform distribution of `spec`: 1/sqrt(shape[1]) for matrices,
// 1/sqrt(hidden_size) for biases; 0 for RMSNorm weights (names ending in "norm.weight"), which
// are all 1.0.
float InitBound(const model::TensorSpec& spec, const model::ModelConfig& config);
// Maps one PRNG output to [-a, a]: ((x >> 40) * 2^-24 * 2 - 1) * a, in float arithmetic.
float UniformFromBits(uint64_t x, float a);
// Round-to-nearest-even conversions (NaN stays NaN, overflow becomes infinity).
uint16_t FloatToBf16(float f);
uint16_t FloatToF16(float f);
float Bf16ToFloat(uint16_t h);
float F16ToFloat(uint16_t h);

}  // namespace internal
}  // namespace moec::tools

#endif  // MOEC_TOOLS_TINY_MODEL_H_
