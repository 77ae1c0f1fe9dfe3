// The BPE model of the Hugging Face `tokenizers` library: vocab + ranked merges, applied to one
// pre-tokenized word at a time, lowest merge rank first (ties: leftmost), exactly as
// tokenizers/src/models/bpe/word.rs does. Supports unk_token, fuse_unk, byte_fallback
// (<0xXX> tokens), ignore_merges, continuing_subword_prefix and end_of_word_suffix.
#ifndef MOEC_MODEL_TOKENIZER_BPE_MODEL_H_
#define MOEC_MODEL_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "model/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace moec::model {

// Thread-safe: the vocabulary is immutable after FromJson; the per-word cache is guarded.
class BpeModel {
 public:
  // Words at most this long (bytes) are cached; the cache holds at most kCacheCapacity words
  // and then stops growing (as in `tokenizers`).
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kCacheCapacity = 200'000;

  // Builds from the `model` JSON object (whose "type" is "BPE" or absent).
  // Errors: InvalidArgument for a missing/mistyped vocab or merges, a malformed merge, a merge
  // whose parts or result are not in the vocab, an unk_token not in the vocab;
  // Unimplemented for dropout > 0.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model,
                                                            const JsonPath& at);

  // Appends the ids of one pre-tokenized word (characters with no vocab entry become byte
  // fallback tokens, or unk, or are dropped when there is no unk_token, as in `tokenizers`).
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // Null when the id is not in the vocabulary.
  const std::string* IdToToken(int32_t id) const;
  // One past the largest id in the vocabulary (0 when empty).
  int32_t id_limit() const { return id_limit_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // A symbol of a word being merged (defined in bpe_model.cc).
  struct Symbol;

  BpeModel() = default;
  // The parts of FromJson: the vocab; dropout, unk_token and the other options; the merges.
  absl::Status ParseVocab(const nlohmann::json& model, const JsonPath& at);
  absl::Status ParseOptions(const nlohmann::json& model, const JsonPath& at);
  absl::Status ParseMerges(const nlohmann::json& model, const JsonPath& at);
  absl::Status AddMerge(const std::string& a, const std::string& b, uint32_t rank,
                        const JsonPath& at);
  std::vector<int32_t> MergeWord(absl::string_view word) const;

  // MergeWord's parts. The merge of the pair (a, b), or null.
  const Merge* FindMerge(int32_t a, int32_t b) const;
  // The initial symbols of `word`: one per character, byte fallback tokens or unk.
  std::vector<Symbol> InitialSymbols(absl::string_view word) const;
  static void AddSymbol(int32_t id, uint32_t len, std::vector<Symbol>* symbols);
  // Adds the byte tokens of `s` when all exist; returns whether it did.
  bool AddByteFallback(const std::string& s, std::vector<Symbol>* symbols) const;
  // An unknown character of `byte_len` bytes: extends the pending unk (fuse_unk) or flushes it
  // and starts a new one.
  void AddUnknown(uint32_t byte_len, uint32_t* unk_len, std::vector<Symbol>* symbols) const;
  // Merges the symbol at `pos` with its right neighbour into `new_id` when that is still the
  // merge of the pair (false: a stale queue entry).
  bool ApplyMerge(uint32_t pos, int32_t new_id, std::vector<Symbol>* symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<int32_t, std::string> vocab_r_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t id_limit_ = 0;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  // Ids of the "<0xXX>" tokens, -1 where absent (byte_fallback only).
  std::array<int32_t, 256> byte_ids_{};

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_BPE_MODEL_H_
