#include "model/tokenizer/decoder.h"

#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/tokenizer/normalizer.h"
#include "model/tokenizer/pretokenizer.h"
#include "model/tokenizer/unicode_util.h"

namespace moec::model {
namespace {

using nlohmann::json;

constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";

// Inverse of ByteLevelAlphabet(): code point -> byte.
const absl::flat_hash_map<char32_t, unsigned char>& ByteLevelInverse() {
  static const auto* const inverse = [] {
    auto* m = new absl::flat_hash_map<char32_t, unsigned char>();
    const auto& alphabet = ByteLevelAlphabet();
    for (int b = 0; b < 256; ++b)
      (*m)[DecodeUtf8(alphabet[b])[0].cp] = static_cast<unsigned char>(b);
    return m;
  }();
  return *inverse;
}

// "<0xAB>" -> 0xAB, else -1.
int ParseByteToken(absl::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (char ch : t.substr(3, 2)) {
    v <<= 4;
    if (ch >= '0' && ch <= '9') {
      v |= ch - '0';
    } else if (ch >= 'a' && ch <= 'f') {
      v |= ch - 'a' + 10;
    } else if (ch >= 'A' && ch <= 'F') {
      v |= ch - 'A' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

void FlushBytes(std::string* bytes, std::vector<std::string>* out) {
  if (bytes->empty()) return;
  if (IsValidUtf8(*bytes)) {
    out->push_back(std::move(*bytes));
  } else {
    for (size_t i = 0; i < bytes->size(); ++i) out->emplace_back(kReplacementChar);
  }
  bytes->clear();
}

// ByteLevel: maps every token's characters back to bytes (a token with a character outside the
// alphabet stays as it is) and joins them into one token, ill-formed UTF-8 replaced.
std::string DecodeByteLevel(const std::vector<std::string>& tokens) {
  const auto& inverse = ByteLevelInverse();
  std::string bytes;
  for (const std::string& t : tokens) {
    std::string mapped;
    bool all = true;
    for (const CodePoint& c : DecodeUtf8(t)) {
      auto it = inverse.find(c.cp);
      if (it == inverse.end()) {
        all = false;
        break;
      }
      mapped.push_back(static_cast<char>(it->second));
    }
    bytes += all ? mapped : t;
  }
  return Utf8Lossy(bytes);
}

// ByteFallback: runs of "<0xAB>" tokens become their bytes (one replacement character per byte
// when ill-formed); other tokens pass through.
void DecodeByteFallback(std::vector<std::string> tokens, std::vector<std::string>* out) {
  std::string bytes;
  for (std::string& t : tokens) {
    const int b = ParseByteToken(t);
    if (b >= 0) {
      bytes.push_back(static_cast<char>(b));
    } else {
      FlushBytes(&bytes, out);
      out->push_back(std::move(t));
    }
  }
  FlushBytes(&bytes, out);
}

// Strip: removes up to `start` leading and `stop` trailing characters equal to `content`.
std::string StripToken(const std::string& t, const std::string& content, size_t start,
                       size_t stop) {
  const std::vector<CodePoint> c = DecodeUtf8(t);
  const auto is_content = [&](size_t k) {
    return t.compare(c[k].begin, c[k].end - c[k].begin, content) == 0;
  };
  size_t b = 0;
  while (b < start && b < c.size() && is_content(b)) ++b;
  size_t e = c.size();
  for (size_t k = 0; k < stop && e > b && is_content(e - 1); ++k) --e;
  return b >= e ? std::string() : t.substr(c[b].begin, c[e - 1].end - c[b].begin);
}

}  // namespace

absl::StatusOr<Decoder> Decoder::FromJson(const json& value, const JsonPath& at) {
  Decoder d;
  d.present_ = !value.is_null();
  MOEC_RETURN_IF_ERROR(AddComponentSteps(value, at, "decoders", &ParseStep, &d.steps_));
  return d;
}

absl::StatusOr<Decoder::Step> Decoder::ParseStep(const json& value, const std::string& type,
                                                 const JsonPath& at) {
  Step step;
  if (type == "ByteLevel") {
    step.kind = Kind::kByteLevel;
  } else if (type == "Metaspace") {
    step.kind = Kind::kMetaspace;
    MOEC_ASSIGN_OR_RETURN(step.pattern, RequiredString(value, "replacement", at));
    if (DecodeUtf8(step.pattern).size() != 1) {
      return at.Field("replacement").Invalid("expected a single character");
    }
    MOEC_ASSIGN_OR_RETURN(std::optional<std::string> scheme,
                          OptionalString(value, "prepend_scheme", at));
    MOEC_ASSIGN_OR_RETURN(bool add_prefix_space, OptionalBool(value, "add_prefix_space", true, at));
    step.metaspace_strip_first = scheme.has_value() ? *scheme != "never" : add_prefix_space;
  } else if (type == "Replace") {
    step.kind = Kind::kReplace;
    MOEC_ASSIGN_OR_RETURN(ReplaceSpec replace, ParseReplace(value, at));
    step.pattern = std::move(replace.pattern);
    step.content = std::move(replace.content);
  } else if (type == "ByteFallback") {
    step.kind = Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = Kind::kStrip;
    MOEC_ASSIGN_OR_RETURN(step.pattern, RequiredString(value, "content", at));
    if (DecodeUtf8(step.pattern).size() != 1) {
      return at.Field("content").Invalid("expected a single character");
    }
    for (const char* key : {"start", "stop"}) {
      const json* v = FindField(value, key);
      if (v == nullptr || !v->is_number_unsigned()) {
        return at.Field(key).Invalid("expected a non-negative integer");
      }
      (absl::string_view(key) == "start" ? step.strip_start : step.strip_stop) = v->get<uint64_t>();
    }
  } else {
    return at.Field("type").Unimplemented(absl::StrCat(
        "unsupported decoder type '", type,
        "'; supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence"));
  }
  return step;
}

std::string Decoder::Decode(std::vector<std::string> tokens) const {
  if (!present_) return absl::StrJoin(tokens, " ");
  for (const Step& step : steps_) tokens = ApplyStep(step, std::move(tokens));
  return absl::StrJoin(tokens, "");
}

std::vector<std::string> Decoder::ApplyStep(const Step& step, std::vector<std::string> tokens) {
  std::vector<std::string> out;
  switch (step.kind) {
    case Kind::kByteLevel:
      out.push_back(DecodeByteLevel(tokens));
      break;
    case Kind::kMetaspace: {
      out.reserve(tokens.size());
      for (size_t i = 0; i < tokens.size(); ++i) {
        const bool first = i == 0 && step.metaspace_strip_first;
        out.push_back(ReplaceAll(tokens[i], step.pattern, first ? "" : " "));
      }
      break;
    }
    case Kind::kReplace:
      out.reserve(tokens.size());
      for (const std::string& t : tokens) out.push_back(ReplaceAll(t, step.pattern, step.content));
      break;
    case Kind::kByteFallback:
      DecodeByteFallback(std::move(tokens), &out);
      break;
    case Kind::kFuse:
      out.push_back(absl::StrJoin(tokens, ""));
      break;
    case Kind::kStrip:
      out.reserve(tokens.size());
      for (const std::string& t : tokens) {
        out.push_back(StripToken(t, step.pattern, step.strip_start, step.strip_stop));
      }
      break;
  }
  return out;
}

}  // namespace moec::model
