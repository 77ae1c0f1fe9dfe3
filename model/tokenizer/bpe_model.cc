#include "model/tokenizer/bpe_model.h"

#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "model/tokenizer/unicode_util.h"

namespace moec::model {
namespace {

using nlohmann::json;

// A queued merge candidate: the pair starting at symbol `pos`.
struct Candidate {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
  // std::priority_queue is a max-heap: "less" means later (higher rank, then further right).
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

struct BpeModel::Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes of the word covered; 0 once merged into its left neighbour
};

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& model,
                                                             const JsonPath& at) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  MOEC_RETURN_IF_ERROR(m->ParseVocab(model, at));
  MOEC_RETURN_IF_ERROR(m->ParseOptions(model, at));
  MOEC_RETURN_IF_ERROR(m->ParseMerges(model, at));
  return m;
}

absl::Status BpeModel::ParseVocab(const json& model, const JsonPath& at) {
  const json* vocab = FindField(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return at.Field("vocab").Invalid("missing object mapping tokens to ids");
  }
  vocab_.reserve(vocab->size());
  vocab_r_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    MOEC_ASSIGN_OR_RETURN(int32_t id, AsTokenId(it.value(), at.Field("vocab").Field(it.key())));
    vocab_[it.key()] = id;
    vocab_r_[id] = it.key();
    id_limit_ = std::max(id_limit_, id + 1);
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ParseOptions(const json& model, const JsonPath& at) {
  const json* dropout = FindField(model, "dropout");
  if (dropout != nullptr && !dropout->is_null()) {
    if (!dropout->is_number()) return at.Field("dropout").Invalid("expected a number or null");
    if (dropout->get<double>() > 0) {
      return at.Field("dropout").Unimplemented(
          "BPE dropout is not supported (encoding would be random)");
    }
  }
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> unk, OptionalString(model, "unk_token", at));
  if (unk.has_value()) {
    auto it = vocab_.find(*unk);
    if (it == vocab_.end()) {
      return at.Field("unk_token")
          .Invalid(absl::StrCat("unk_token '", *unk, "' is not in the vocab"));
    }
    unk_id_ = it->second;
  }
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> prefix,
                        OptionalString(model, "continuing_subword_prefix", at));
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> suffix,
                        OptionalString(model, "end_of_word_suffix", at));
  continuing_subword_prefix_ = prefix.value_or("");
  end_of_word_suffix_ = suffix.value_or("");
  MOEC_ASSIGN_OR_RETURN(fuse_unk_, OptionalBool(model, "fuse_unk", false, at));
  MOEC_ASSIGN_OR_RETURN(byte_fallback_, OptionalBool(model, "byte_fallback", false, at));
  MOEC_ASSIGN_OR_RETURN(ignore_merges_, OptionalBool(model, "ignore_merges", false, at));
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(absl::StrFormat("<0x%02X>", b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ParseMerges(const json& model, const JsonPath& at) {
  const json* merges = FindField(model, "merges");
  const JsonPath mat = at.Field("merges");
  if (merges == nullptr || !merges->is_array()) return mat.Invalid("missing array");
  merges_.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& entry = (*merges)[i];
    const JsonPath eat = mat.Index(i);
    if (entry.is_string()) {
      // Legacy form "a b": exactly one space.
      std::vector<std::string> parts = absl::StrSplit(entry.get_ref<const std::string&>(), ' ');
      if (parts.size() != 2) return eat.Invalid("expected \"<left> <right>\"");
      MOEC_RETURN_IF_ERROR(AddMerge(parts[0], parts[1], static_cast<uint32_t>(i), eat));
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      MOEC_RETURN_IF_ERROR(AddMerge(entry[0].get<std::string>(), entry[1].get<std::string>(),
                                    static_cast<uint32_t>(i), eat));
    } else {
      return eat.Invalid("expected \"<left> <right>\" or [\"<left>\", \"<right>\"]");
    }
  }
  return absl::OkStatus();
}

absl::Status BpeModel::AddMerge(const std::string& a, const std::string& b, uint32_t rank,
                                const JsonPath& at) {
  auto ia = vocab_.find(a);
  auto ib = vocab_.find(b);
  if (ia == vocab_.end())
    return at.Invalid(absl::StrCat("merge token '", a, "' is not in the vocab"));
  if (ib == vocab_.end())
    return at.Invalid(absl::StrCat("merge token '", b, "' is not in the vocab"));
  const size_t skip = std::min(continuing_subword_prefix_.size(), b.size());
  const std::string merged = absl::StrCat(a, absl::string_view(b).substr(skip));
  auto im = vocab_.find(merged);
  if (im == vocab_.end()) {
    return at.Invalid(absl::StrCat("merge result '", merged, "' is not in the vocab"));
  }
  merges_[PairKey(ia->second, ib->second)] = Merge{rank, im->second};
  return absl::OkStatus();
}

std::optional<int32_t> BpeModel::TokenToId(absl::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  auto it = vocab_r_.find(id);
  return it == vocab_r_.end() ? nullptr : &it->second;
}

void BpeModel::EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> merged = MergeWord(word);
  ids->insert(ids->end(), merged.begin(), merged.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(merged));
  }
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t a, int32_t b) const {
  auto it = merges_.find(PairKey(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::AddSymbol(int32_t id, uint32_t len, std::vector<Symbol>* symbols) {
  const auto n = static_cast<int32_t>(symbols->size());
  symbols->push_back(Symbol{id, n - 1, n + 1, len});
}

bool BpeModel::AddByteFallback(const std::string& s, std::vector<Symbol>* symbols) const {
  bool all = true;
  for (unsigned char b : s) all = all && byte_ids_[b] >= 0;
  if (!all) return false;
  // Note: like `tokenizers`, a pending unk is not flushed here.
  for (unsigned char b : s) AddSymbol(byte_ids_[b], 1, symbols);
  return true;
}

void BpeModel::AddUnknown(uint32_t byte_len, uint32_t* unk_len,
                          std::vector<Symbol>* symbols) const {
  if (*unk_len > 0 && fuse_unk_) {
    *unk_len += byte_len;
  } else {
    if (*unk_len > 0) AddSymbol(*unk_id_, *unk_len, symbols);
    *unk_len = byte_len;
  }
}

std::vector<BpeModel::Symbol> BpeModel::InitialSymbols(absl::string_view word) const {
  // One symbol per character (BPE::merge_word).
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  // A pending unk token: its byte length (0: none). Flushed before the next known character.
  uint32_t unk_len = 0;
  const std::vector<CodePoint> chars = DecodeUtf8(word);
  std::string s;
  for (size_t k = 0; k < chars.size(); ++k) {
    const absl::string_view ch = word.substr(chars[k].begin, chars[k].end - chars[k].begin);
    const auto byte_len = static_cast<uint32_t>(ch.size());
    s.clear();
    if (k > 0) s += continuing_subword_prefix_;
    s.append(ch.data(), ch.size());
    if (k + 1 == chars.size()) s += end_of_word_suffix_;
    if (auto it = vocab_.find(s); it != vocab_.end()) {
      if (unk_len > 0) AddSymbol(*unk_id_, unk_len, &symbols);
      unk_len = 0;
      AddSymbol(it->second, byte_len, &symbols);
      continue;
    }
    if (byte_fallback_ && AddByteFallback(s, &symbols)) continue;
    if (unk_id_.has_value()) AddUnknown(byte_len, &unk_len, &symbols);
  }
  if (unk_len > 0) AddSymbol(*unk_id_, unk_len, &symbols);
  if (!symbols.empty()) symbols.back().next = -1;
  return symbols;
}

bool BpeModel::ApplyMerge(uint32_t pos, int32_t new_id, std::vector<Symbol>* symbols) const {
  Symbol& left = (*symbols)[pos];
  if (left.len == 0 || left.next == -1) return false;
  const int32_t next_pos = left.next;
  const Symbol right = (*symbols)[next_pos];
  const Merge* current = FindMerge(left.id, right.id);
  if (current == nullptr || current->new_id != new_id) return false;  // stale entry
  left.id = new_id;
  left.len += right.len;
  left.next = right.next;
  (*symbols)[next_pos].len = 0;
  if (right.next >= 0 && static_cast<size_t>(right.next) < symbols->size()) {
    (*symbols)[right.next].prev = static_cast<int32_t>(pos);
  }
  return true;
}

std::vector<int32_t> BpeModel::MergeWord(absl::string_view word) const {
  std::vector<Symbol> symbols = InitialSymbols(word);

  // Word::merge_all.
  std::priority_queue<Candidate> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push(Candidate{m->rank, static_cast<uint32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!ApplyMerge(top.pos, top.new_id, &symbols)) continue;
    const Symbol& left = symbols[top.pos];
    if (left.prev >= 0) {
      if (const Merge* m = FindMerge(symbols[left.prev].id, left.id)) {
        queue.push(Candidate{m->rank, static_cast<uint32_t>(left.prev), m->new_id});
      }
    }
    if (left.next >= 0 && static_cast<size_t>(left.next) < symbols.size()) {
      if (const Merge* m = FindMerge(left.id, symbols[left.next].id)) {
        queue.push(Candidate{m->rank, top.pos, m->new_id});
      }
    }
  }
  std::vector<int32_t> out;
  out.reserve(symbols.size());
  for (const Symbol& sym : symbols) {
    if (sym.len != 0) out.push_back(sym.id);
  }
  return out;
}

}  // namespace moec::model
