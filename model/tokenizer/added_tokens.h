// Added tokens (`added_tokens` in tokenizer.json): found in the input before normalization and
// pre-tokenization, leftmost-longest first, and mapped straight to their ids, as
// tokenizers/src/tokenizer/added_vocabulary.rs does (single_word, lstrip, rstrip honoured).
#ifndef MOEC_MODEL_TOKENIZER_ADDED_TOKENS_H_
#define MOEC_MODEL_TOKENIZER_ADDED_TOKENS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "model/tokenizer/pretokenizer.h"

namespace moec::model {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool normalized = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  // What the matcher looks for: `content`, or its normalized form when `normalized`.
  std::string pattern;
};

// Finds a set of added tokens in text. Immutable after construction (thread-safe).
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `tokens` must outlive the matcher; empty patterns are ignored.
  explicit AddedTokenMatcher(const std::vector<const AddedToken*>& tokens);

  // AddedVocabulary::split_with_indices: replaces every non-added-token piece of `pieces` by
  // the pieces around and including the added tokens found in it; drops empty pieces.
  void Split(std::vector<Piece>* pieces) const;

  bool empty() const { return tokens_.empty(); }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;
    int32_t token = -1;  // index into tokens_ of a pattern ending here
  };
  struct Match {
    size_t begin;
    size_t end;
    const AddedToken* token;
  };

  std::vector<Match> FindMatches(absl::string_view text) const;
  int32_t Child(int32_t node, unsigned char b) const;

  std::vector<const AddedToken*> tokens_;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_ADDED_TOKENS_H_
