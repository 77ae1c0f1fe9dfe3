#include "model/tokenizer/added_tokens.h"

#include <algorithm>
#include <utility>

#include "model/tokenizer/unicode_util.h"

namespace moec::model {
namespace {

// The first character of `s` is a \w character (regex ^\w).
bool StartsWithWord(absl::string_view s) {
  if (s.empty()) return false;
  return IsWordChar(DecodeUtf8(s.substr(0, std::min<size_t>(4, s.size())))[0].cp);
}

// The last character of `s` is a \w character (regex \w$).
bool EndsWithWord(absl::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && s.size() - b < 4 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  const std::vector<CodePoint> c = DecodeUtf8(s.substr(b));
  return IsWordChar(c.back().cp);
}

// Start of the whitespace run ending `s` (regex \s*$).
size_t TrailingSpaceStart(absl::string_view s) {
  const std::vector<CodePoint> c = DecodeUtf8(s);
  size_t k = c.size();
  while (k > 0 && IsWhitespace(c[k - 1].cp)) --k;
  return k == c.size() ? s.size() : c[k].begin;
}

// End of the whitespace run starting `s` (regex ^\s*).
size_t LeadingSpaceEnd(absl::string_view s) {
  const std::vector<CodePoint> c = DecodeUtf8(s);
  size_t k = 0;
  while (k < c.size() && IsWhitespace(c[k].cp)) ++k;
  return k == c.size() ? s.size() : c[k].begin;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<const AddedToken*>& tokens) {
  nodes_.emplace_back();
  for (const AddedToken* t : tokens) {
    if (t->pattern.empty()) continue;
    int32_t node = 0;
    for (unsigned char b : t->pattern) {
      int32_t next = Child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].edges.emplace_back(b, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    // Two tokens with the same pattern: the first one listed wins.
    if (nodes_[node].token < 0) {
      nodes_[node].token = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(t);
    }
    first_byte_[static_cast<unsigned char>(t->pattern[0])] = true;
  }
}

int32_t AddedTokenMatcher::Child(int32_t node, unsigned char b) const {
  for (const auto& [byte, child] : nodes_[node].edges) {
    if (byte == b) return child;
  }
  return -1;
}

std::vector<AddedTokenMatcher::Match> AddedTokenMatcher::FindMatches(absl::string_view text) const {
  // Leftmost-longest, non-overlapping (daachorse MatchKind::LeftmostLongest).
  std::vector<Match> out;
  size_t i = 0;
  while (i < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t node = 0;
    int32_t best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      node = Child(node, static_cast<unsigned char>(text[j]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = j + 1;
      }
    }
    if (best >= 0) {
      out.push_back(Match{i, best_end, tokens_[best]});
      i = best_end;
    } else {
      ++i;
    }
  }
  return out;
}

void AddedTokenMatcher::Split(std::vector<Piece>* pieces) const {
  if (tokens_.empty()) return;
  std::vector<Piece> out;
  out.reserve(pieces->size());
  for (Piece& piece : *pieces) {
    if (piece.added_token_id >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const absl::string_view s = piece.text;
    auto emit = [&](size_t b, size_t e, int32_t id) {
      if (e <= b) return;
      out.push_back(Piece{std::string(s.substr(b, e - b)), id, piece.at_input_start && b == 0});
    };
    // AddedVocabulary::find_matches.
    size_t start_offset = 0;
    for (const Match& m : FindMatches(s)) {
      size_t start = std::max(m.begin, start_offset);  // never re-emit rstrip-ed bytes
      size_t stop = m.end;
      const AddedToken& t = *m.token;
      if (t.single_word) {
        const bool start_space = start == 0 || !EndsWithWord(s.substr(0, start));
        const bool stop_space = stop == s.size() || !StartsWithWord(s.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) start = std::max(TrailingSpaceStart(s.substr(0, start)), start_offset);
      if (t.rstrip) stop += LeadingSpaceEnd(s.substr(stop));
      emit(start_offset, start, -1);
      emit(start, stop, t.id);
      start_offset = stop;
    }
    emit(start_offset, s.size(), -1);
  }
  *pieces = std::move(out);
}

}  // namespace moec::model
