// The tokenizer.json of a byte-level BPE tokenizer, written the way Hugging Face `tokenizers`
// writes it (keys in its order, indent 2): the one writer behind the BPE trainer and the tiny
// random models. Loaded by model/tokenizer/tokenizer.h and by `tokenizers`.
#ifndef MOEC_TOOLS_TOKENIZER_JSON_H_
#define MOEC_TOOLS_TOKENIZER_JSON_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"

namespace moec::tools {

struct ByteLevelBpeTokenizer {
  // The vocabulary in id order (ids 0..n-1), as ByteLevel strings.
  std::vector<std::string> tokens;
  // Merges "<left> <right>", by rank.
  std::vector<std::string> merges;
  // Special tokens: (id, content), in `added_tokens` order.
  std::vector<std::pair<int64_t, std::string>> specials;
  // When set, a TemplateProcessing post-processor prepends this special token (one of
  // `specials`) to every sequence.
  std::string bos;
};

// The ByteLevel pre-tokenizer (and decoder) object: GPT-2 regex split, no prefix space.
nlohmann::ordered_json ByteLevelJson();
// An `added_tokens` entry of a special token.
nlohmann::ordered_json AddedTokenJson(int64_t id, const std::string& content);
// The text of tokenizer.json (trailing newline).
std::string ByteLevelBpeTokenizerJson(const ByteLevelBpeTokenizer& t);

}  // namespace moec::tools

#endif  // MOEC_TOOLS_TOKENIZER_JSON_H_
