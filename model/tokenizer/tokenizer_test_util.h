// Tokenizers shared by the tokenizer tests (tokenizer_test.cc, tokenizer_config_test.cc): tiny
// hand-built tokenizer.json values whose ids the tests derive by hand.
#ifndef MOEC_MODEL_TOKENIZER_TOKENIZER_TEST_UTIL_H_
#define MOEC_MODEL_TOKENIZER_TOKENIZER_TEST_UTIL_H_

#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace moec::model {

inline std::unique_ptr<Tokenizer> MustLoad(const nlohmann::json& tokenizer,
                                           const std::string& config = "") {
  auto t = Tokenizer::FromJson(tokenizer.dump(), config, "test/tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(t).value() : nullptr;
}

// vocab a=0 b=1 c=2 ab=3 bc=4 abc=5 aa=6.
inline nlohmann::json PlainBpe(const nlohmann::json& merges, bool ignore_merges = false) {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}}},
            {"merges", merges},
            {"ignore_merges", ignore_merges}}}};
}

// ---------------------------------------------------------------------------------------------
// SentencePiece-style BPE (Llama / Mixtral).

// vocab: 0 <unk>, 1 <s>, 2 </s>, 3 + b = "<0xBB>" for every byte b, 259 "▁", 260 "h", 261 "i",
// 262 "▁h", 263 "▁hi", 264 "w", 265 "▁w". Merge ranks: 0 "▁ h", 1 "▁h i", 2 "▁ w".
inline nlohmann::json LlamaModel(bool byte_fallback) {
  nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab["\xE2\x96\x81"] = 259;
  vocab["h"] = 260;
  vocab["i"] = 261;
  vocab["\xE2\x96\x81h"] = 262;
  vocab["\xE2\x96\x81hi"] = 263;
  vocab["w"] = 264;
  vocab["\xE2\x96\x81w"] = 265;
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", "<unk>"},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", true},
          {"byte_fallback", byte_fallback},
          {"vocab", vocab},
          {"merges",
           nlohmann::json::array({"\xE2\x96\x81 h", "\xE2\x96\x81h i", "\xE2\x96\x81 w"})}};
}

inline constexpr char kLlamaAddedTokens[] = R"([
  {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false,
   "normalized": false, "special": true},
  {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
   "normalized": false, "special": true},
  {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false,
   "normalized": false, "special": true}])";

// Llama-2 / Mixtral layout: Prepend+Replace normalizer, no pre-tokenizer, <s> $A template.
inline nlohmann::json LlamaTokenizer(bool byte_fallback = true) {
  nlohmann::json tok = nlohmann::json::parse(R"({
    "version": "1.0",
    "normalizer": {"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "\u2581"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
    "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
  })");
  tok["added_tokens"] = nlohmann::json::parse(kLlamaAddedTokens);
  tok["model"] = LlamaModel(byte_fallback);
  return tok;
}

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_TOKENIZER_TEST_UTIL_H_
