#include "model/tokenizer/pretokenizer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tokenizer/unicode_util.h"

namespace moec::model {
namespace {

using nlohmann::json;

// A span of a piece's bytes and whether the pattern matched it (Pattern::find_matches).
struct MatchSpan {
  uint32_t begin;
  uint32_t end;
  bool is_match;
};

bool IsOther(char32_t cp) { return !IsWhitespace(cp) && !IsLetter(cp) && !IsNumber(cp); }
bool IsNewline(char32_t cp) { return cp == '\r' || cp == '\n'; }

// ASCII case folding plus U+017F LATIN SMALL LETTER LONG S, which Unicode case-folds to 's'
// (the only non-ASCII character (?i) lets match in the contraction alternatives).
char32_t FoldCase(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + ('a' - 'A');
  if (cp == 0x17F) return 's';
  return cp;
}

// 's|'t|'re|'ve|'m|'ll|'d at c[i], optionally case-insensitive. Returns the end or i.
size_t MatchContraction(const std::vector<CodePoint>& c, size_t i, bool ignore_case) {
  const size_t n = c.size();
  if (c[i].cp != '\'' || i + 1 >= n) return i;
  auto at = [&](size_t k) { return ignore_case ? FoldCase(c[k].cp) : c[k].cp; };
  const char32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 < n) {
    const char32_t b = at(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  }
  return i;
}

template <typename Pred>
size_t RunEnd(const std::vector<CodePoint>& c, size_t j, Pred pred) {
  while (j < c.size() && pred(c[j].cp)) ++j;
  return j;
}

// \s+(?!\S)|\s+ at a whitespace character c[i].
size_t MatchTrailingSpace(const std::vector<CodePoint>& c, size_t i) {
  const size_t e = RunEnd(c, i, IsWhitespace);
  // \s+(?!\S) backtracks one character to leave the last space for the next word, which needs
  // at least two; otherwise \s+ takes the single space.
  return (e == c.size() || e - i < 2) ? e : e - 1;
}

// kGpt2Pattern at c[i]; always matches at least one character.
size_t MatchGpt2(const std::vector<CodePoint>& c, size_t i) {
  const size_t n = c.size();
  if (size_t e = MatchContraction(c, i, /*ignore_case=*/false); e > i) return e;
  // ` ?X+`: the optional space only helps when a class character follows it.
  const size_t j = (c[i].cp == ' ' && i + 1 < n) ? i + 1 : i;
  if (IsLetter(c[j].cp)) return RunEnd(c, j, IsLetter);
  if (IsNumber(c[j].cp)) return RunEnd(c, j, IsNumber);
  if (IsOther(c[j].cp)) return RunEnd(c, j, IsOther);
  return MatchTrailingSpace(c, i);
}

// \p{N}{1,max} at c[i], or i.
size_t MatchDigits(const std::vector<CodePoint>& c, size_t i, int max_digits) {
  size_t j = i;
  while (j < c.size() && j - i < static_cast<size_t>(max_digits) && IsNumber(c[j].cp)) ++j;
  return j;
}

// `\s*[\r\n]+|\s+(?!\S)|\s+` at a whitespace character c[i].
size_t MatchLlama3Space(const std::vector<CodePoint>& c, size_t i) {
  // \s*[\r\n]+ : after backtracking, ends just past the last newline of the whitespace run.
  const size_t e = RunEnd(c, i, IsWhitespace);
  for (size_t k = e; k > i; --k) {
    if (IsNewline(c[k - 1].cp)) return k;
  }
  return MatchTrailingSpace(c, i);
}

// kLlama3Pattern (max_digits 3) or kQwen2Pattern (max_digits 1) at c[i]; always matches.
size_t MatchLlama3(const std::vector<CodePoint>& c, size_t i, int max_digits) {
  const size_t n = c.size();
  if (size_t e = MatchContraction(c, i, /*ignore_case=*/true); e > i) return e;
  const char32_t c0 = c[i].cp;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (IsLetter(c0)) return RunEnd(c, i, IsLetter);
  if (!IsNewline(c0) && !IsNumber(c0) && i + 1 < n && IsLetter(c[i + 1].cp)) {
    return RunEnd(c, i + 1, IsLetter);
  }
  // \p{N}{1,max}
  if (IsNumber(c0)) return MatchDigits(c, i, max_digits);
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  const size_t j = (c0 == ' ' && i + 1 < n) ? i + 1 : i;
  if (IsOther(c[j].cp)) return RunEnd(c, RunEnd(c, j, IsOther), IsNewline);
  return MatchLlama3Space(c, i);
}

// Appends a match span, preceded by the unmatched gap since `*prev`.
void Emit(uint32_t begin, uint32_t end, uint32_t* prev, std::vector<MatchSpan>* out) {
  if (*prev < begin) out->push_back({*prev, begin, false});
  out->push_back({begin, end, true});
  *prev = end;
}

// Pattern::find_matches: spans covering all of `text`, in order.
template <typename MatchAt>
std::vector<MatchSpan> FindMatchesWith(absl::string_view text, MatchAt match_at) {
  std::vector<MatchSpan> out;
  const std::vector<CodePoint> c = DecodeUtf8(text);
  uint32_t prev = 0;
  size_t i = 0;
  while (i < c.size()) {
    const size_t e = match_at(c, i);
    if (e > i) {
      Emit(c[i].begin, c[e - 1].end, &prev, &out);
      i = e;
    } else {
      ++i;
    }
  }
  if (prev < text.size()) out.push_back({prev, static_cast<uint32_t>(text.size()), false});
  return out;
}

std::vector<MatchSpan> FindLiteral(absl::string_view text, absl::string_view literal) {
  std::vector<MatchSpan> out;
  uint32_t prev = 0;
  if (!literal.empty()) {
    for (size_t pos = text.find(literal); pos != absl::string_view::npos;
         pos = text.find(literal, pos + literal.size())) {
      Emit(static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + literal.size()), &prev, &out);
    }
  }
  if (prev < text.size()) out.push_back({prev, static_cast<uint32_t>(text.size()), false});
  return out;
}

using Spans = std::vector<std::pair<uint32_t, uint32_t>>;

// kContiguous: runs of matches and runs of non-matches each become one span.
Spans MergeContiguous(const std::vector<MatchSpan>& m) {
  Spans out;
  bool prev_match = false;
  for (const MatchSpan& s : m) {
    if (s.is_match == prev_match && !out.empty()) {
      out.back().second = s.end;
    } else {
      out.emplace_back(s.begin, s.end);
    }
    prev_match = s.is_match;
  }
  return out;
}

// kMergedWithPrevious: a match joins the span before it.
Spans MergeWithPrevious(const std::vector<MatchSpan>& m) {
  Spans out;
  bool prev_match = false;
  for (const MatchSpan& s : m) {
    if (s.is_match && !prev_match && !out.empty()) {
      out.back().second = s.end;
    } else {
      out.emplace_back(s.begin, s.end);
    }
    prev_match = s.is_match;
  }
  return out;
}

// kMergedWithNext: a match joins the span after it.
Spans MergeWithNext(const std::vector<MatchSpan>& m) {
  Spans out;
  bool prev_match = false;
  for (auto it = m.rbegin(); it != m.rend(); ++it) {
    if (it->is_match && !prev_match && !out.empty()) {
      out.back().first = it->begin;
    } else {
      out.emplace_back(it->begin, it->end);
    }
    prev_match = it->is_match;
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// NormalizedString::split: turns matches into the spans kept, per `behavior`.
Spans ApplyBehavior(const std::vector<MatchSpan>& m, SplitBehavior behavior) {
  Spans out;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const MatchSpan& s : m) out.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const MatchSpan& s : m) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kContiguous:
      return MergeContiguous(m);
    case SplitBehavior::kMergedWithPrevious:
      return MergeWithPrevious(m);
    case SplitBehavior::kMergedWithNext:
      return MergeWithNext(m);
  }
  return out;
}

// Replaces `piece` by its non-empty sub-spans.
void SplitPiece(const Piece& piece, const Spans& spans, std::vector<Piece>* out) {
  for (const auto& [b, e] : spans) {
    if (e <= b) continue;
    out->push_back(Piece{piece.text.substr(b, e - b), -1, piece.at_input_start && b == 0});
  }
}

absl::StatusOr<SplitBehavior> ParseBehavior(const json& obj, const JsonPath& at) {
  MOEC_ASSIGN_OR_RETURN(std::string b, RequiredString(obj, "behavior", at));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return at.Field("behavior").Invalid(absl::StrCat("unknown split behavior '", b, "'"));
}


}  // namespace

const std::array<std::string, 256>& ByteLevelAlphabet() {
  static const std::array<std::string, 256>* const table = [] {
    auto* t = new std::array<std::string, 256>();
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      AppendUtf8(printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++), &(*t)[b]);
    }
    return t;
  }();
  return *table;
}

std::string ByteLevelEncode(absl::string_view text) {
  const auto& alphabet = ByteLevelAlphabet();
  std::string out;
  out.reserve(text.size() * 2);
  for (unsigned char b : text) out += alphabet[b];
  return out;
}

absl::StatusOr<PreTokenizer> PreTokenizer::FromJson(const json& value, const JsonPath& at) {
  PreTokenizer p;
  MOEC_RETURN_IF_ERROR(AddComponentSteps(value, at, "pretokenizers", &ParseStep, &p.steps_));
  return p;
}

absl::StatusOr<PreTokenizer::Step> PreTokenizer::ParseStep(const json& value, const std::string& type,
                                                           const JsonPath& at) {
  Step step;
  if (type == "ByteLevel") {
    step.kind = Kind::kByteLevel;
    MOEC_ASSIGN_OR_RETURN(step.add_prefix_space, OptionalBool(value, "add_prefix_space", true, at));
    MOEC_ASSIGN_OR_RETURN(step.use_regex, OptionalBool(value, "use_regex", true, at));
    step.pattern = Pattern::kGpt2;
    step.behavior = SplitBehavior::kIsolated;
  } else if (type == "Split") {
    MOEC_RETURN_IF_ERROR(ParseSplit(value, at, &step));
  } else if (type == "Metaspace") {
    MOEC_RETURN_IF_ERROR(ParseMetaspace(value, at, &step));
  } else if (type == "Digits") {
    step.kind = Kind::kDigits;
    MOEC_ASSIGN_OR_RETURN(step.individual_digits,
                          OptionalBool(value, "individual_digits", false, at));
  } else {
    return at.Field("type").Unimplemented(
        absl::StrCat("unsupported pre_tokenizer type '", type,
                     "'; supported: ByteLevel, Split, Metaspace, Digits, Sequence"));
  }
  return step;
}

absl::Status PreTokenizer::ParseSplit(const json& value, const JsonPath& at, Step* step) {
  step->kind = Kind::kSplit;
  const json* pattern = FindField(value, "pattern");
  const JsonPath pat = at.Field("pattern");
  if (pattern == nullptr || !pattern->is_object()) return pat.Invalid("missing object");
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> literal,
                        OptionalString(*pattern, "String", pat));
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> regex, OptionalString(*pattern, "Regex", pat));
  if (literal.has_value()) {
    step->pattern = Pattern::kLiteral;
    step->literal = *literal;
  } else if (!regex.has_value()) {
    return pat.Invalid("expected {\"String\": ...} or {\"Regex\": ...}");
  } else {
    MOEC_RETURN_IF_ERROR(ParseSplitRegex(*regex, pat, step));
  }
  MOEC_ASSIGN_OR_RETURN(step->behavior, ParseBehavior(value, at));
  MOEC_ASSIGN_OR_RETURN(step->invert, OptionalBool(value, "invert", false, at));
  return absl::OkStatus();
}

absl::Status PreTokenizer::ParseSplitRegex(const std::string& regex, const JsonPath& pat,
                                           Step* step) {
  if (regex == kGpt2Pattern) {
    step->pattern = Pattern::kGpt2;
  } else if (regex == kLlama3Pattern || regex == kQwen2Pattern) {
    step->pattern = Pattern::kLlama3;
    step->max_digits = regex == kLlama3Pattern ? 3 : 1;
  } else if (regex == R"(\p{N}{1,3})" || regex == R"(\p{N})") {
    step->pattern = Pattern::kDigits;
    step->max_digits = regex == R"(\p{N})" ? 1 : 3;
  } else {
    return pat.Unimplemented(absl::StrCat(
        "unsupported Split regex '", regex,
        "'; supported: the GPT-2, Llama-3 and Qwen2 split patterns, \\p{N}{1,3} and \\p{N}"));
  }
  return absl::OkStatus();
}

absl::Status PreTokenizer::ParseMetaspace(const json& value, const JsonPath& at, Step* step) {
  step->kind = Kind::kMetaspace;
  MOEC_ASSIGN_OR_RETURN(std::string rep, RequiredString(value, "replacement", at));
  if (DecodeUtf8(rep).size() != 1) {
    return at.Field("replacement").Invalid("expected a single character");
  }
  step->replacement = rep;
  MOEC_ASSIGN_OR_RETURN(std::optional<std::string> scheme,
                        OptionalString(value, "prepend_scheme", at));
  if (!scheme.has_value() || *scheme == "always") {
    step->prepend = Prepend::kAlways;
  } else if (*scheme == "first") {
    step->prepend = Prepend::kFirst;
  } else if (*scheme == "never") {
    step->prepend = Prepend::kNever;
  } else {
    return at.Field("prepend_scheme").Invalid(absl::StrCat("unknown scheme '", *scheme, "'"));
  }
  // Legacy files carry add_prefix_space instead; false means "never".
  const json* aps = FindField(value, "add_prefix_space");
  if (aps != nullptr && aps->is_boolean() && !aps->get<bool>()) step->prepend = Prepend::kNever;
  MOEC_ASSIGN_OR_RETURN(step->split, OptionalBool(value, "split", true, at));
  return absl::OkStatus();
}

void PreTokenizer::Apply(std::vector<Piece>* pieces) const {
  for (const Step& step : steps_) ApplyStep(step, pieces);
}

void PreTokenizer::ApplyStep(const Step& step, std::vector<Piece>* pieces) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  for (Piece& piece : *pieces) {
    if (piece.added_token_id >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    switch (step.kind) {
      case Kind::kByteLevel:
        ApplyByteLevel(step, &piece, &out);
        break;
      case Kind::kSplit:
        ApplySplit(step, piece, &out);
        break;
      case Kind::kMetaspace:
        ApplyMetaspace(step, &piece, &out);
        break;
      case Kind::kDigits: {
        std::vector<MatchSpan> m =
            FindMatchesWith(piece.text, [](const std::vector<CodePoint>& c, size_t i) {
              return IsNumber(c[i].cp) ? i + 1 : i;
            });
        SplitPiece(piece,
                   ApplyBehavior(m, step.individual_digits ? SplitBehavior::kIsolated
                                                           : SplitBehavior::kContiguous),
                   &out);
        break;
      }
    }
  }
  *pieces = std::move(out);
}

void PreTokenizer::ApplyByteLevel(const Step& step, Piece* piece, std::vector<Piece>* out) {
  if (step.add_prefix_space && (piece->text.empty() || piece->text[0] != ' ')) {
    piece->text.insert(0, " ");
  }
  const size_t first = out->size();
  if (step.use_regex) {
    SplitPiece(*piece, ApplyBehavior(FindMatchesWith(piece->text, MatchGpt2), step.behavior),
               out);
  } else if (!piece->text.empty()) {
    out->push_back(std::move(*piece));
  }
  for (size_t k = first; k < out->size(); ++k) (*out)[k].text = ByteLevelEncode((*out)[k].text);
}

void PreTokenizer::ApplySplit(const Step& step, const Piece& piece, std::vector<Piece>* out) {
  std::vector<MatchSpan> m;
  switch (step.pattern) {
    case Pattern::kLiteral:
      m = FindLiteral(piece.text, step.literal);
      break;
    case Pattern::kGpt2:
      m = FindMatchesWith(piece.text, MatchGpt2);
      break;
    case Pattern::kLlama3:
      m = FindMatchesWith(piece.text, [&](const std::vector<CodePoint>& c, size_t i) {
        return MatchLlama3(c, i, step.max_digits);
      });
      break;
    case Pattern::kDigits:
      m = FindMatchesWith(piece.text, [&](const std::vector<CodePoint>& c, size_t i) {
        return MatchDigits(c, i, step.max_digits);
      });
      break;
  }
  if (step.invert) {
    for (MatchSpan& s : m) s.is_match = !s.is_match;
  }
  SplitPiece(piece, ApplyBehavior(m, step.behavior), out);
}

void PreTokenizer::ApplyMetaspace(const Step& step, Piece* piece, std::vector<Piece>* out) {
  std::string text;
  text.reserve(piece->text.size() + step.replacement.size());
  for (char ch : piece->text) {
    if (ch == ' ') {
      text += step.replacement;
    } else {
      text.push_back(ch);
    }
  }
  const bool starts =
      absl::string_view(text).substr(0, step.replacement.size()) == step.replacement;
  if (!starts && (step.prepend == Prepend::kAlways ||
                  (step.prepend == Prepend::kFirst && piece->at_input_start))) {
    text.insert(0, step.replacement);
  }
  piece->text = std::move(text);
  if (step.split) {
    // Every replacement character is its own match (a char pattern), merged with what
    // follows it.
    const std::string& t = piece->text;
    auto at_replacement = [&](const std::vector<CodePoint>& c, size_t i) {
      return t.compare(c[i].begin, c[i].end - c[i].begin, step.replacement) == 0 ? i + 1 : i;
    };
    SplitPiece(*piece,
               ApplyBehavior(FindMatchesWith(t, at_replacement), SplitBehavior::kMergedWithNext),
               out);
  } else if (!piece->text.empty()) {
    out->push_back(std::move(*piece));
  }
}

}  // namespace moec::model
