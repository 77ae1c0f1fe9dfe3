// The Hugging Face `tokenizer.json` tokenizer (docs/formats/tokenizer.md), without libtorch.
//
// Encoding follows the `tokenizers` library step by step: added tokens are split out of the
// input, the rest is normalized, pre-tokenized (ByteLevel / Split / Metaspace / Digits), run
// through the BPE model, and the post-processor (TemplateProcessing, or the BOS/EOS flags of
// tokenizer_config.json) adds special tokens. Two families are supported: byte-level BPE
// (GPT-2, Qwen2, DeepSeek, OLMoE) and SentencePiece-style BPE with byte fallback (Llama,
// Mixtral). Other models (Unigram, WordPiece, WordLevel) are rejected as Unimplemented.
//
// Thread safety: a Tokenizer is immutable after construction except for an internal, locked
// word cache; all const methods may be called concurrently.
#ifndef MOEC_MODEL_TOKENIZER_TOKENIZER_H_
#define MOEC_MODEL_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/tokenizer/added_tokens.h"
#include "model/tokenizer/bpe_model.h"
#include "model/tokenizer/decoder.h"
#include "model/tokenizer/normalizer.h"
#include "model/tokenizer/pretokenizer.h"

namespace moec::model {

// Files larger than this are refused before they are read.
inline constexpr uint64_t kMaxTokenizerJsonBytes = 512ull << 20;

class Tokenizer {
 public:
  // Loads `dir_or_file`: a directory holding tokenizer.json (and optionally
  // tokenizer_config.json), or the path of a tokenizer.json file (tokenizer_config.json is then
  // looked for beside it).
  // Possible errors: NotFound (no tokenizer.json), InvalidArgument (unreadable or oversized file,
  // malformed JSON, missing or mistyped field; the message names the file and field),
  // Unimplemented (a model, normalizer, pre-tokenizer, Split regex, decoder or post-processor
  // this implementation does not support; the message names it).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir_or_file);

  // Builds from the text of tokenizer.json and of tokenizer_config.json (empty when there is
  // none). `source_name` names the tokenizer.json in error messages.
  // Possible errors: as Load, less NotFound.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      absl::string_view tokenizer_json, absl::string_view tokenizer_config_json,
      absl::string_view source_name);

  // Token ids of `text`. With `add_special_tokens`, the post-processor's tokens (e.g. BOS) are
  // added. Input that is not valid UTF-8 is encoded byte by byte where it is invalid.
  std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens = true) const;

  // Text of `ids`. Unknown ids are skipped; with `skip_special_tokens`, special added tokens
  // are skipped too. Invalid UTF-8 produced by byte tokens becomes U+FFFD.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Added tokens first, then the model vocabulary.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;

  // One past the largest id of the vocabulary or the added tokens (the embedding rows needed).
  int32_t vocab_size() const { return vocab_size_; }

  // From tokenizer_config.json's bos_token / eos_token when present.
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }

  // Ids Encode puts before / after the text when add_special_tokens is true.
  const std::vector<int32_t>& prefix_ids() const { return prefix_ids_; }
  const std::vector<int32_t>& suffix_ids() const { return suffix_ids_; }

 private:
  Tokenizer() = default;

  absl::Status ParseAddedTokens(const nlohmann::json& root, const JsonPath& at);
  absl::Status ParsePostProcessor(const nlohmann::json& value, const JsonPath& at, int depth);
  absl::Status ApplyConfig(const nlohmann::json& config, const JsonPath& at);

  std::unique_ptr<BpeModel> model_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  Decoder decoder_;
  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_map<int32_t, size_t> added_by_id_;  // index into added_tokens_
  absl::flat_hash_set<std::string> special_contents_;
  AddedTokenMatcher raw_matcher_;         // tokens with normalized == false
  AddedTokenMatcher normalized_matcher_;  // tokens with normalized == true
  std::vector<int32_t> prefix_ids_;
  std::vector<int32_t> suffix_ids_;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  int32_t vocab_size_ = 0;
};

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_TOKENIZER_H_
