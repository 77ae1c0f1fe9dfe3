#include "tools/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors_reader.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace moec::tools {

using model::CountParameters;
using model::LoadModelConfig;
using model::ModelConfig;
using model::ModelTensors;
using model::ParseModelConfig;
using model::SharedExpertTensors;
using model::TensorSpec;
using model::Tokenizer;

using ::moec::testing::StatusIs;
using ::moec::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace {

// The PRNG of docs/formats/tiny_model.md, written again from the document (not from the code).
uint64_t RefSplitMix64(uint64_t& s) {
  s += 0x9E3779B97F4A7C15ull;
  uint64_t z = s;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t RefStreamSeed(uint64_t seed, const std::string& name) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return seed ^ h;
}

// The first `n` F32 values of a tensor with bound `a` (a == 0: norm weights, all 1).
std::vector<float> RefValues(uint64_t seed, const std::string& name, float a, int n) {
  std::vector<float> out;
  uint64_t s = RefStreamSeed(seed, name);
  for (int i = 0; i < n; ++i) {
    if (a == 0.0f) {
      out.push_back(1.0f);
      continue;
    }
    const double u = static_cast<double>(RefSplitMix64(s) >> 40) / 16777216.0;
    out.push_back(static_cast<float>(2.0 * u - 1.0) * a);
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// name -> contents of every file in `dir`.
std::map<std::string, std::string> ReadDir(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    out[e.path().filename().string()] = ReadFile(e.path().string());
  }
  return out;
}

float ReadElement(const storage::TensorView& v, int64_t i) {
  if (v.dtype == storage::DType::kF32) {
    float f;
    std::memcpy(&f, v.data + 4 * i, 4);
    return f;
  }
  const uint16_t h = static_cast<uint16_t>(v.data[2 * i] | (v.data[2 * i + 1] << 8));
  return v.dtype == storage::DType::kBF16 ? internal::Bf16ToFloat(h) : internal::F16ToFloat(h);
}

float Bound(const TensorSpec& spec, const ModelConfig& c) {
  if (spec.name.size() >= 11 && spec.name.substr(spec.name.size() - 11) == "norm.weight") {
    return 0.0f;
  }
  const int64_t fan_in = spec.shape.size() == 2 ? spec.shape[1] : c.hidden_size;
  return 1.0f / std::sqrt(static_cast<float>(fan_in));
}

const char* const kArchitectures[] = {"mixtral", "deepseek", "qwen2_moe", "olmoe", "qwen3_moe"};

class TinyModelArchTest : public ::testing::TestWithParam<const char*> {};

// Reopens a written model and checks config, tensor set, shapes, dtypes, sizes and values.
void CheckModel(const TinyModelOptions& o, const std::string& dir, storage::DType dtype,
                int bytes_per_element) {
  ASSERT_OK_AND_ASSIGN(ModelConfig c, LoadModelConfig(dir));
  EXPECT_EQ(c.model_type, o.model_type);
  EXPECT_EQ(c.num_hidden_layers, o.num_layers);
  EXPECT_EQ(c.hidden_size, o.hidden);
  EXPECT_EQ(c.num_attention_heads, o.heads);
  EXPECT_EQ(c.num_key_value_heads, o.kv_heads);
  EXPECT_EQ(c.num_experts, o.experts);
  EXPECT_EQ(c.num_experts_per_tok, o.top_k);
  EXPECT_EQ(c.moe_intermediate_size, o.moe_intermediate);
  EXPECT_EQ(c.vocab_size, o.vocab + kTinyNumSpecialTokens);
  const int moe_layers = o.model_type == std::string("deepseek") ? o.num_layers - 1 : o.num_layers;
  int seen_moe = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) seen_moe += c.IsMoeLayer(l);
  EXPECT_EQ(seen_moe, moe_layers);

  ASSERT_OK_AND_ASSIGN(auto ckpt, storage::SafetensorsCheckpoint::Open(dir));
  const std::vector<TensorSpec> expected = ModelTensors(c);
  std::vector<std::string> names;
  for (const TensorSpec& s : expected) names.push_back(s.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(ckpt->TensorNames(), names);
  EXPECT_EQ(ckpt->total_tensor_bytes(),
            static_cast<uint64_t>(CountParameters(c).total) * bytes_per_element);
  for (const TensorSpec& s : expected) {
    ASSERT_OK_AND_ASSIGN(storage::TensorView v, ckpt->Get(s.name));
    EXPECT_EQ(v.dtype, dtype) << s.name;
    EXPECT_EQ(std::vector<int64_t>(v.shape.begin(), v.shape.end()), s.shape) << s.name;
    const float a = Bound(s, c);
    const float limit = dtype == storage::DType::kBF16 ? internal::Bf16ToFloat(internal::FloatToBf16(a))
                        : dtype == storage::DType::kF16 ? internal::F16ToFloat(internal::FloatToF16(a))
                                                        : a;
    const int64_t n = s.NumElements();
    const std::vector<float> ref = RefValues(o.seed, s.name, a, static_cast<int>(std::min<int64_t>(n, 64)));
    for (int64_t i = 0; i < n; ++i) {
      const float x = ReadElement(v, i);
      if (a == 0.0f) {
        ASSERT_EQ(x, 1.0f) << s.name << "[" << i << "]";
        continue;
      }
      ASSERT_LE(std::fabs(x), limit) << s.name << "[" << i << "]";
      if (i < static_cast<int64_t>(ref.size())) {
        if (dtype == storage::DType::kF32) {
          ASSERT_EQ(x, ref[i]) << s.name << "[" << i << "]";
        } else {  // half an ulp: 2^-8 relative for BF16, 2^-11 for F16 (normal range)
          const float rel = dtype == storage::DType::kBF16 ? 0x1p-8f : 0x1p-11f;
          ASSERT_LE(std::fabs(x - ref[i]), rel * std::fabs(ref[i]) + 0x1p-24f)
              << s.name << "[" << i << "]";
        }
      }
    }
  }
}

void CheckTokenizer(const TinyModelOptions& o, const std::string& dir) {
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::Load(dir));
  EXPECT_EQ(tok->vocab_size(), o.vocab + kTinyNumSpecialTokens);
  EXPECT_EQ(tok->bos_id(), o.vocab);
  EXPECT_EQ(tok->eos_id(), o.vocab + 1);
  const std::string text = "Hello, tiny MoE world! The rate is 42% (ünïcødé, 漢字).\n";
  const std::vector<int32_t> ids = tok->Encode(text, /*add_special_tokens=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], o.vocab);  // the template prepends <|bos|>
  EXPECT_LT(ids.size(), text.size() + 1);  // some merges applied
  EXPECT_EQ(tok->Decode(ids, /*skip_special_tokens=*/true), text);
  EXPECT_EQ(tok->Decode(ids, /*skip_special_tokens=*/false), "<|bos|>" + text);
}

TEST_P(TinyModelArchTest, F32SingleFileMatchesTensorNamesAndCounts) {
  TempDir tmp;
  TinyModelOptions o;
  o.model_type = GetParam();
  o.seed = 7;
  const std::string dir = tmp.Join("m");
  ASSERT_OK(WriteTinyModel(o, dir));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/generation_config.json"));
  CheckModel(o, dir, storage::DType::kF32, 4);
  CheckTokenizer(o, dir);
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir + "/config.json"));
  EXPECT_EQ(config["torch_dtype"], "float32");
  ASSERT_TRUE(config["architectures"].is_array());
  EXPECT_EQ(config["bos_token_id"], o.vocab);
}

TEST_P(TinyModelArchTest, Bf16ShardedMatchesTensorNamesAndCounts) {
  TempDir tmp;
  TinyModelOptions o;
  o.model_type = GetParam();
  o.dtype = "BF16";
  o.seed = 11;
  o.max_shard_bytes = 100 * 1024;
  const std::string dir = tmp.Join("m");
  ASSERT_OK(WriteTinyModel(o, dir));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  ASSERT_OK_AND_ASSIGN(auto ckpt, storage::SafetensorsCheckpoint::Open(dir));
  EXPECT_GT(ckpt->shards().size(), 1u);
  for (const auto& shard : ckpt->shards()) {
    uint64_t bytes = 0;
    for (const auto& t : shard->tensors()) {
      ASSERT_OK_AND_ASSIGN(storage::TensorView v, shard->Get(t.name));
      bytes += v.size;
    }
    if (shard->tensors().size() > 1) {
      EXPECT_LE(bytes, o.max_shard_bytes) << shard->path();
    }
  }
  CheckModel(o, dir, storage::DType::kBF16, 2);
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir + "/config.json"));
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
}

INSTANTIATE_TEST_SUITE_P(AllArchitectures, TinyModelArchTest,
                         ::testing::ValuesIn(kArchitectures));

TEST(TinyModelTest, ArchitectureSpecificFields) {
  const std::map<std::string, std::string> classes = {
      {"mixtral", "MixtralForCausalLM"}, {"deepseek", "DeepseekForCausalLM"},
      {"qwen2_moe", "Qwen2MoeForCausalLM"}, {"olmoe", "OlmoeForCausalLM"},
      {"qwen3_moe", "Qwen3MoeForCausalLM"}};
  for (const auto& [type, cls] : classes) {
    TinyModelOptions o;
    o.model_type = type;
    ASSERT_OK_AND_ASSIGN(std::string text, TinyModelConfigJson(o));
    const nlohmann::json j = nlohmann::json::parse(text);
    EXPECT_EQ(j["architectures"], nlohmann::json::array({cls})) << type;
    ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(text, type));
    EXPECT_EQ(c.SharedExpertIntermediateSize(),
              type == "deepseek" || type == "qwen2_moe" ? 96 : 0) << type;
  }
  TinyModelOptions o;
  o.model_type = "mixtral";
  const nlohmann::json mixtral = nlohmann::json::parse(*TinyModelConfigJson(o));
  EXPECT_EQ(mixtral["num_local_experts"], 8);
  EXPECT_EQ(mixtral["intermediate_size"], 96);  // the expert width
  o.model_type = "deepseek";
  const nlohmann::json deepseek = nlohmann::json::parse(*TinyModelConfigJson(o));
  EXPECT_EQ(deepseek["n_routed_experts"], 8);
  EXPECT_EQ(deepseek["n_shared_experts"], 1);
  EXPECT_EQ(deepseek["first_k_dense_replace"], 1);
  EXPECT_EQ(deepseek["intermediate_size"], 128);
  o.model_type = "qwen2_moe";
  o.shared_experts = 2;
  const nlohmann::json qwen2 = nlohmann::json::parse(*TinyModelConfigJson(o));
  EXPECT_EQ(qwen2["shared_expert_intermediate_size"], 192);
  o.model_type = "qwen3_moe";
  const nlohmann::json qwen3 = nlohmann::json::parse(*TinyModelConfigJson(o));
  EXPECT_EQ(qwen3["head_dim"], 16);
}

TEST(TinyModelTest, SameSeedSameBytesDifferentSeedDifferentWeights) {
  TempDir tmp;
  TinyModelOptions o;
  o.model_type = "qwen2_moe";
  o.seed = 1234;
  o.dtype = "F16";
  o.max_shard_bytes = 64 * 1024;
  ASSERT_OK(WriteTinyModel(o, tmp.Join("a")));
  ASSERT_OK(WriteTinyModel(o, tmp.Join("b")));
  o.seed = 1235;
  ASSERT_OK(WriteTinyModel(o, tmp.Join("c")));
  const auto a = ReadDir(tmp.Join("a"));
  const auto b = ReadDir(tmp.Join("b"));
  const auto c = ReadDir(tmp.Join("c"));
  ASSERT_GT(a.size(), 6u);
  EXPECT_TRUE(a == b);
  ASSERT_EQ(a.size(), c.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(c.count(name)) << name;
    const bool weights = name.size() > 12 && name.substr(name.size() - 12) == ".safetensors";
    if (weights) {
      EXPECT_NE(bytes, c.at(name)) << name;
      EXPECT_EQ(bytes.size(), c.at(name).size()) << name;
    } else {
      EXPECT_EQ(bytes, c.at(name)) << name;
    }
  }
}

TEST(TinyModelTest, TokenizerMergesApplyByRank) {
  TempDir tmp;
  TinyModelOptions o;
  o.model_type = "olmoe";
  o.vocab = 256 + kTinyMaxMerges;  // every merge
  ASSERT_OK(WriteTinyModel(o, tmp.path()));
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::Load(tmp.path()));
  // Letters in order e t a o ...; merge rank r has id 256 + r: "Ġ e" is rank 0, "x y" is
  // 26 + 26 * index(x) + index(y).
  EXPECT_THAT(tok->Encode(" e", false), ElementsAre(256));
  EXPECT_THAT(tok->Encode("at", false), ElementsAre(256 + 26 + 2 * 26 + 1));
  // "ate": (t, e) has rank 52 < rank 79 of (a, t), so it merges first: [a, te].
  EXPECT_THAT(tok->Encode("ate", false), ElementsAre('a', 256 + 26 + 26));
  EXPECT_THAT(tok->Encode("!", true), ElementsAre(o.vocab, '!'));
  EXPECT_EQ(tok->TokenToId("<|eos|>"), o.vocab + 1);
  // The default vocabulary (288) has merges 0..31 only: "Ġ x" and "e e", "e t", ... "e n".
  TempDir small;
  ASSERT_OK(WriteTinyModel(TinyModelOptions{}, small.path()));
  ASSERT_OK_AND_ASSIGN(auto tok288, Tokenizer::Load(small.path()));
  EXPECT_THAT(tok288->Encode("at", false), ElementsAre('a', 't'));
  EXPECT_THAT(tok288->Encode("en", false), ElementsAre(256 + 31));
  EXPECT_EQ(tok288->vocab_size(), 290);
}

TEST(TinyModelTest, VocabWithoutMergesStillRoundTrips) {
  TempDir tmp;
  TinyModelOptions o;
  o.model_type = "mixtral";
  o.vocab = 256;
  ASSERT_OK(WriteTinyModel(o, tmp.path()));
  ASSERT_OK_AND_ASSIGN(auto tok, Tokenizer::Load(tmp.path()));
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_THAT(tok->Encode("at", false), ElementsAre('a', 't'));
}

TEST(TinyModelTest, InvalidOptions) {
  auto bad = [](auto mutate) {
    TinyModelOptions o;
    mutate(o);
    return o.Validate();
  };
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.model_type = "llama"; }),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unsupported model_type 'llama'; supported: mixtral")));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.kv_heads = 3; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "kv_heads = 3 does not divide heads 4"));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.heads = 5; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "heads = 5 does not divide hidden 64"));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.top_k = 9; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "top_k = 9 is outside [1, 8]"));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.vocab = 255; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "vocab = 255 is outside [256, 958]"));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.dtype = "F8_E4M3"; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "dtype 'F8_E4M3'"));
  EXPECT_THAT(bad([](TinyModelOptions& o) { o.num_layers = 0; }),
              StatusIs(absl::StatusCode::kInvalidArgument, "num_layers = 0"));
  EXPECT_THAT(bad([](TinyModelOptions& o) {
                o.model_type = "qwen2_moe";
                o.shared_experts = 0;
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, "shared_experts = 0"));
  EXPECT_THAT(bad([](TinyModelOptions& o) {
                o.hidden = 65536;
                o.experts = 64;
              }),
              StatusIs(absl::StatusCode::kInvalidArgument, "parameters; the limit is"));
  EXPECT_OK(bad([](TinyModelOptions& o) {
    o.model_type = "deepseek";
    o.shared_experts = 0;
  }));
}

TEST(TinyModelTest, RefusesNonEmptyDirectory) {
  TempDir tmp;
  tmp.WriteFile("keep.txt", "x");
  EXPECT_THAT(WriteTinyModel(TinyModelOptions{}, tmp.path()),
              StatusIs(absl::StatusCode::kFailedPrecondition, "is not empty"));
  EXPECT_EQ(ReadFile(tmp.Join("keep.txt")), "x");
  EXPECT_FALSE(std::filesystem::exists(tmp.Join("config.json")));
}

TEST(TinyModelTest, DeepseekWithoutSharedExpertsWritesNull) {
  TinyModelOptions o;
  o.model_type = "deepseek";
  o.shared_experts = 0;
  ASSERT_OK_AND_ASSIGN(std::string text, TinyModelConfigJson(o));
  EXPECT_TRUE(nlohmann::json::parse(text)["n_shared_experts"].is_null());
  ASSERT_OK_AND_ASSIGN(ModelConfig c, ParseModelConfig(text, "t"));
  EXPECT_TRUE(SharedExpertTensors(c, 1).empty());
}

TEST(TinyModelConversionTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(internal::FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(internal::FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(internal::FloatToBf16(1.0f + 0x1p-8f), 0x3F80);          // tie, even stays
  EXPECT_EQ(internal::FloatToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);      // tie, odd rounds up
  EXPECT_EQ(internal::FloatToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above the tie
  EXPECT_EQ(internal::FloatToBf16(INFINITY), 0x7F80);
  EXPECT_TRUE(std::isnan(internal::Bf16ToFloat(internal::FloatToBf16(NAN))));
  EXPECT_EQ(internal::FloatToBf16(3.4028235e38f), 0x7F80);  // max float overflows to inf
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = internal::Bf16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(internal::FloatToBf16(f), h) << h;
  }
}

TEST(TinyModelConversionTest, F16RoundsToNearestEven) {
  EXPECT_EQ(internal::FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(internal::FloatToF16(-2.0f), 0xC000);
  EXPECT_EQ(internal::FloatToF16(0.1f), 0x2E66);
  EXPECT_EQ(internal::FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(internal::FloatToF16(65519.0f), 0x7BFF);
  EXPECT_EQ(internal::FloatToF16(65520.0f), 0x7C00);
  EXPECT_EQ(internal::FloatToF16(1.0f + 0x1p-11f), 0x3C00);      // tie, even stays
  EXPECT_EQ(internal::FloatToF16(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie, odd rounds up
  EXPECT_EQ(internal::FloatToF16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(internal::FloatToF16(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(internal::FloatToF16(0x1p-25f), 0x0000);             // tie to even zero
  EXPECT_EQ(internal::FloatToF16(1.5f * 0x1p-24f), 0x0002);      // tie to even 2
  EXPECT_EQ(internal::FloatToF16(0x1p-25f + 0x1p-40f), 0x0001);
  EXPECT_EQ(internal::FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(internal::FloatToF16(-INFINITY), 0xFC00);
  EXPECT_TRUE(std::isnan(internal::F16ToFloat(internal::FloatToF16(NAN))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = internal::F16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(internal::FloatToF16(f), h) << h;
  }
}

TEST(TinyModelPrngTest, MatchesDocumentedConstants) {
  // splitmix64 from state 0: the first output is the published 0xE220A8397B1DCDAF.
  uint64_t s = 0;
  EXPECT_EQ(internal::SplitMix64(&s), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(internal::Fnv1a64(""), 0xCBF29CE484222325ull);
  EXPECT_EQ(internal::Fnv1a64("a"), 0xAF63DC4C8601EC8Cull);
  EXPECT_EQ(internal::UniformFromBits(0, 0.5f), -0.5f);
  EXPECT_EQ(internal::UniformFromBits(~0ull, 1.0f), 1.0f - 0x1p-23f);
  EXPECT_EQ(internal::UniformFromBits(uint64_t{1} << 63, 0.25f), 0.0f);
}

}  // namespace
}  // namespace moec::tools
