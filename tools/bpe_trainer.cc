#include "tools/bpe_trainer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <queue>
#include <set>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tokenizer/added_tokens.h"
#include "model/tokenizer/json_util.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/unicode_util.h"
#include "nlohmann/json.hpp"
#include "storage/file_util.h"
#include "tools/tokenizer_json.h"

namespace moec::tools {

using model::AddedToken;
using model::AddedTokenMatcher;
using model::ByteLevelAlphabet;
using model::CodePoint;
using model::DecodeUtf8;
using model::IsValidUtf8;
using model::JsonPath;
using model::Piece;
using model::PreTokenizer;

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("bpe trainer: ", what));
}

absl::Status ValidateOptions(const BpeTrainerOptions& o) {
  const int64_t specials = static_cast<int64_t>(o.special_tokens.size());
  if (static_cast<int64_t>(o.vocab_size) < 256 + specials) {
    return Invalid(absl::StrCat("vocab_size ", o.vocab_size, " is smaller than 256 byte tokens + ",
                                specials, " special tokens = ", 256 + specials));
  }
  if (o.min_frequency < 0) {
    return Invalid(absl::StrCat("min_frequency ", o.min_frequency, " is negative"));
  }
  absl::flat_hash_set<std::string> seen;
  for (size_t i = 0; i < o.special_tokens.size(); ++i) {
    const std::string& t = o.special_tokens[i];
    if (t.empty()) return Invalid(absl::StrCat("special_tokens[", i, "] is empty"));
    if (!IsValidUtf8(t)) {
      return Invalid(absl::StrCat("special_tokens[", i, "] is not valid UTF-8"));
    }
    if (!seen.insert(t).second) {
      return Invalid(absl::StrCat("special token '", t, "' is listed twice"));
    }
  }
  if (o.add_bos && o.bos_token.empty()) return Invalid("add_bos is true but bos_token is empty");
  for (const auto& [field, token] :
       {std::pair<const char*, const std::string*>{"bos_token", &o.bos_token},
        {"eos_token", &o.eos_token}}) {
    if (!token->empty() && !seen.contains(*token)) {
      return Invalid(absl::StrCat(field, " '", *token, "' is not one of the special_tokens"));
    }
  }
  return absl::OkStatus();
}

// One distinct pre-tokenized word: its current symbols (token ids) and how often it occurs.
struct Word {
  std::vector<int32_t> symbols;
  int64_t count = 0;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t PairLeft(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t PairRight(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

// An adjacent pair's total count and the words that (may) contain it. `words` can hold words
// that no longer contain the pair and repeats; it is sorted and deduplicated when used.
struct PairInfo {
  int64_t count = 0;
  std::vector<int32_t> words;
};

// A priority-queue entry; stale when `count` differs from the pair's current count.
struct QueueEntry {
  int64_t count;
  uint64_t pair;
};

// Pieces longer than this are pre-tokenized in chunks (internal::PreTokenizerChunkEnd).
constexpr size_t kChunkBytes = 1 << 20;

bool IsPrintableAscii(char c) { return c >= 0x21 && c <= 0x7E; }

// Counts the distinct pre-tokenized words of `texts` (special tokens cut out first). Words are
// returned sorted by their ByteLevel text, so nothing downstream depends on hash order.
std::vector<Word> CountWords(absl::Span<const std::string> texts,
                             const std::vector<std::string>& special_tokens,
                             const PreTokenizer& pre_tokenizer) {
  std::vector<AddedToken> added(special_tokens.size());
  std::vector<const AddedToken*> added_ptrs;
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    added[i].id = static_cast<int32_t>(i);
    added[i].content = special_tokens[i];
    added[i].pattern = special_tokens[i];
    added[i].special = true;
    added[i].normalized = false;
    added_ptrs.push_back(&added[i]);
  }
  const AddedTokenMatcher matcher(added_ptrs);

  absl::flat_hash_map<std::string, int64_t> counts;
  std::vector<Piece> pieces, chunk;
  for (const std::string& text : texts) {
    if (text.empty()) continue;
    pieces.clear();
    pieces.push_back(Piece{text, -1, true});
    matcher.Split(&pieces);
    for (const Piece& piece : pieces) {
      if (piece.added_token_id >= 0) continue;
      // Pre-tokenized in chunks to bound memory (the pre-tokenizer decodes a whole piece).
      const absl::string_view whole = piece.text;
      for (size_t begin = 0; begin < whole.size();) {
        const size_t end = internal::PreTokenizerChunkEnd(whole, begin, kChunkBytes);
        chunk.clear();
        chunk.push_back(Piece{std::string(whole.substr(begin, end - begin)), -1,
                              piece.at_input_start && begin == 0});
        pre_tokenizer.Apply(&chunk);
        for (Piece& p : chunk) {
          if (p.added_token_id >= 0 || p.text.empty()) continue;
          ++counts[std::move(p.text)];
        }
        begin = end;
      }
    }
  }

  // ByteLevel character (all are 1 or 2 UTF-8 bytes, code points < 0x800) -> byte.
  std::vector<int32_t> cp_to_byte(0x800, -1);
  for (int b = 0; b < 256; ++b) {
    const std::vector<CodePoint> cps = DecodeUtf8(ByteLevelAlphabet()[b]);
    cp_to_byte[cps[0].cp] = b;
  }
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [text, count] : sorted) {
    Word w;
    w.count = count;
    for (const CodePoint& c : DecodeUtf8(text)) w.symbols.push_back(cp_to_byte[c.cp]);
    words.push_back(std::move(w));
  }
  return words;
}

// The learned merges (in rank order) and the vocabulary strings (index = id).
struct TrainedBpe {
  std::vector<std::string> tokens;
  std::vector<std::pair<int32_t, int32_t>> merges;
};

// Queue order: highest count first; ties: smaller left token string, then smaller right token
// string.
struct LowerPriority {
  const std::vector<std::string>* tokens;
  bool operator()(const QueueEntry& x, const QueueEntry& y) const {
    if (x.count != y.count) return x.count < y.count;
    const int lc = (*tokens)[PairLeft(x.pair)].compare((*tokens)[PairLeft(y.pair)]);
    if (lc != 0) return lc > 0;
    return (*tokens)[PairRight(x.pair)].compare((*tokens)[PairRight(y.pair)]) > 0;
  }
};
using PairQueue = std::priority_queue<QueueEntry, std::vector<QueueEntry>, LowerPriority>;
using PairMap = absl::flat_hash_map<uint64_t, PairInfo>;

// The adjacent pairs of `words`, with their counts and the words that contain them.
PairMap CountPairs(const std::vector<Word>& words) {
  PairMap pairs;
  for (int32_t w = 0; w < static_cast<int32_t>(words.size()); ++w) {
    const Word& word = words[w];
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      PairInfo& info = pairs[PairKey(word.symbols[i], word.symbols[i + 1])];
      info.count += word.count;
      if (info.words.empty() || info.words.back() != w) info.words.push_back(w);
    }
  }
  return pairs;
}

// The id of the token a + b. As in `tokenizers`: a string already in the vocabulary (reached by
// another split) keeps its id, so that merge adds no token.
int32_t MergedToken(int32_t a, int32_t b, std::vector<std::string>* tokens,
                    absl::flat_hash_map<std::string, int32_t>* token_ids) {
  std::string merged = (*tokens)[a] + (*tokens)[b];
  if (auto found = token_ids->find(merged); found != token_ids->end()) return found->second;
  const auto c = static_cast<int32_t>(tokens->size());
  token_ids->emplace(merged, c);
  tokens->push_back(std::move(merged));
  return c;
}

// Adds `delta` occurrences of pair (x, y) in word `w`, unless it is `merging` (being removed
// entirely); a pair whose count grows is appended to `increased`.
void ChangePair(int32_t x, int32_t y, int64_t delta, int32_t w, uint64_t merging, PairMap* pairs,
                std::vector<uint64_t>* increased) {
  const uint64_t key = PairKey(x, y);
  if (key == merging) return;  // being removed entirely
  if (delta < 0) {
    auto p = pairs->find(key);
    if (p == pairs->end()) return;
    p->second.count += delta;
    if (p->second.count <= 0) pairs->erase(p);
    return;
  }
  PairInfo& info = (*pairs)[key];
  info.count += delta;
  if (info.words.empty() || info.words.back() != w) info.words.push_back(w);
  increased->push_back(key);
}

// Applies merge `merging` (a, b) -> c to word `w`, left to right, as the BPE model applies a
// merge (so "a a a" becomes "aa a"), updating the counts of the neighbouring pairs.
void MergeInWord(int32_t w, uint64_t merging, int32_t c, std::vector<Word>* words,
                 PairMap* pairs, std::vector<uint64_t>* increased) {
  const int32_t a = PairLeft(merging);
  const int32_t b = PairRight(merging);
  Word& word = (*words)[w];
  std::vector<int32_t>& s = word.symbols;
  const int64_t n = word.count;
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] != a || s[i + 1] != b) continue;
    if (i > 0) {
      ChangePair(s[i - 1], a, -n, w, merging, pairs, increased);
      ChangePair(s[i - 1], c, n, w, merging, pairs, increased);
    }
    if (i + 2 < s.size()) {
      ChangePair(b, s[i + 2], -n, w, merging, pairs, increased);
      ChangePair(c, s[i + 2], n, w, merging, pairs, increased);
    }
    s[i] = c;
    s.erase(s.begin() + static_cast<std::ptrdiff_t>(i) + 1);
  }
}

// Queues the pairs whose count grew (each once) with their current counts.
void RequeueIncreased(std::vector<uint64_t>* increased, const PairMap& pairs, PairQueue* queue) {
  std::sort(increased->begin(), increased->end());
  increased->erase(std::unique(increased->begin(), increased->end()), increased->end());
  for (uint64_t key : *increased) {
    auto p = pairs.find(key);
    if (p != pairs.end() && p->second.count > 0) queue->push(QueueEntry{p->second.count, key});
  }
}

TrainedBpe LearnMerges(std::vector<Word> words, int64_t max_tokens, int64_t min_frequency) {
  TrainedBpe out;
  std::vector<std::string>& tokens = out.tokens;
  absl::flat_hash_map<std::string, int32_t> token_ids;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(ByteLevelAlphabet()[b]);
    token_ids[tokens.back()] = b;
  }
  PairMap pairs = CountPairs(words);
  std::vector<QueueEntry> initial;
  initial.reserve(pairs.size());
  for (const auto& [key, info] : pairs) initial.push_back(QueueEntry{info.count, key});
  PairQueue queue(LowerPriority{&tokens}, std::move(initial));

  std::vector<uint64_t> increased;
  while (static_cast<int64_t>(tokens.size()) < max_tokens && !queue.empty()) {
    const QueueEntry top = queue.top();
    queue.pop();
    auto it = pairs.find(top.pair);
    const int64_t current = it == pairs.end() ? 0 : it->second.count;
    if (current != top.count) {  // stale: requeue with the current count
      if (current > 0) queue.push(QueueEntry{current, top.pair});
      continue;
    }
    if (current < min_frequency) break;  // the true maximum is too rare: done

    const int32_t a = PairLeft(top.pair);
    const int32_t b = PairRight(top.pair);
    const int32_t c = MergedToken(a, b, &tokens, &token_ids);
    out.merges.emplace_back(a, b);

    std::vector<int32_t> candidates = std::move(it->second.words);
    pairs.erase(it);
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());

    increased.clear();
    for (int32_t w : candidates) MergeInWord(w, top.pair, c, &words, &pairs, &increased);
    RequeueIncreased(&increased, pairs, &queue);
  }
  return out;
}

std::string Dump(const ordered_json& j) { return j.dump(2) + "\n"; }

}  // namespace

namespace internal {

size_t PreTokenizerChunkEnd(absl::string_view text, size_t begin, size_t min_bytes) {
  for (size_t pos = begin + std::max<size_t>(min_bytes, 1); pos + 1 < text.size(); ++pos) {
    pos = text.find('\n', pos);
    if (pos == absl::string_view::npos || pos + 1 >= text.size()) break;
    if (IsPrintableAscii(text[pos - 1]) && IsPrintableAscii(text[pos + 1])) return pos + 1;
  }
  return text.size();
}

}  // namespace internal

absl::StatusOr<std::string> TrainByteLevelBpe(absl::Span<const std::string> texts,
                                              const BpeTrainerOptions& options) {
  MOEC_RETURN_IF_ERROR(ValidateOptions(options));
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (texts[i].size() >= (uint64_t{1} << 32)) {
      return Invalid(absl::StrCat("texts[", i, "] is 4 GiB or larger; split it"));
    }
    total_bytes += texts[i].size();
  }
  if (total_bytes == 0) {
    return Invalid(absl::StrCat("the corpus is empty (", texts.size(), " texts, no bytes)"));
  }

  const ordered_json byte_level = ByteLevelJson();
  MOEC_ASSIGN_OR_RETURN(
      PreTokenizer pre_tokenizer,
      PreTokenizer::FromJson(json::parse(byte_level.dump()), JsonPath{"bpe trainer", ""}));
  std::vector<Word> words = CountWords(texts, options.special_tokens, pre_tokenizer);
  const int64_t specials = static_cast<int64_t>(options.special_tokens.size());
  const TrainedBpe bpe =
      LearnMerges(std::move(words), options.vocab_size - specials, options.min_frequency);

  ByteLevelBpeTokenizer t;
  t.tokens = bpe.tokens;
  for (const auto& [a, b] : bpe.merges) t.merges.push_back(bpe.tokens[a] + " " + bpe.tokens[b]);
  const std::set<std::string> vocab(bpe.tokens.begin(), bpe.tokens.end());
  for (size_t i = 0; i < options.special_tokens.size(); ++i) {
    const std::string& special = options.special_tokens[i];
    if (vocab.count(special) > 0) {
      const int64_t at = std::find(bpe.tokens.begin(), bpe.tokens.end(), special) - bpe.tokens.begin();
      return Invalid(absl::StrCat("special token '", special, "' is also the vocabulary token ",
                                  at, "; choose another special token"));
    }
    t.specials.emplace_back(static_cast<int64_t>(bpe.tokens.size() + i), special);
  }
  if (options.add_bos) t.bos = options.bos_token;
  return ByteLevelBpeTokenizerJson(t);
}

std::string BpeTokenizerConfigJson(const BpeTrainerOptions& options) {
  auto token_or_null = [](const std::string& t) {
    return t.empty() ? ordered_json(nullptr) : ordered_json(t);
  };
  const ordered_json config = {
      {"add_bos_token", options.add_bos},
      {"add_eos_token", false},
      {"bos_token", token_or_null(options.bos_token)},
      {"eos_token", token_or_null(options.eos_token)},
      {"clean_up_tokenization_spaces", false},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
  };
  return Dump(config);
}

absl::Status WriteTrainedTokenizer(absl::Span<const std::string> texts,
                                   const BpeTrainerOptions& options, const std::string& dir) {
  MOEC_ASSIGN_OR_RETURN(std::string tokenizer_json, TrainByteLevelBpe(texts, options));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("bpe trainer: cannot create directory ", dir, ": ", ec.message()));
  }
  const std::filesystem::path base(dir);
  MOEC_RETURN_IF_ERROR(
      storage::WriteFileAtomically((base / "tokenizer.json").string(), tokenizer_json));
  return storage::WriteFileAtomically((base / "tokenizer_config.json").string(),
                                      BpeTokenizerConfigJson(options));
}

}  // namespace moec::tools
