#include "model/tokenizer/unicode_util.h"

#include "absl/strings/str_cat.h"
#include "unicode/bytestream.h"
#include "unicode/normalizer2.h"
#include "unicode/uchar.h"

namespace moec::model {
namespace {

bool IsContinuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// The DecodeSequence cases of lead bytes 0xE0..0xEF and 0xF0..0xF4.
size_t DecodeThreeBytes(const unsigned char* s, size_t n, size_t i, char32_t* cp) {
  if (i + 2 < n && IsContinuation(s[i + 1]) && IsContinuation(s[i + 2])) {
    *cp = ((s[i] & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
    if (*cp >= 0x800 && (*cp < 0xD800 || *cp > 0xDFFF)) return 3;
  }
  return 0;
}

size_t DecodeFourBytes(const unsigned char* s, size_t n, size_t i, char32_t* cp) {
  if (i + 3 < n && IsContinuation(s[i + 1]) && IsContinuation(s[i + 2]) &&
      IsContinuation(s[i + 3])) {
    *cp = ((s[i] & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
          (s[i + 3] & 0x3Fu);
    if (*cp >= 0x10000 && *cp <= 0x10FFFF) return 4;
  }
  return 0;
}

// Decodes the sequence starting at s[i] into `*cp` and returns its length, or 0 when it is
// ill-formed (truncated, overlong, a surrogate or beyond U+10FFFF).
size_t DecodeSequence(const unsigned char* s, size_t n, size_t i, char32_t* cp) {
  const unsigned char b = s[i];
  if (b < 0x80) {
    *cp = b;
    return 1;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    if (i + 1 < n && IsContinuation(s[i + 1])) {
      *cp = ((b & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      return 2;
    }
    return 0;
  }
  if (b >= 0xE0 && b <= 0xEF) return DecodeThreeBytes(s, n, i, cp);
  if (b >= 0xF0 && b <= 0xF4) return DecodeFourBytes(s, n, i, cp);
  return 0;
}

}  // namespace

std::vector<CodePoint> DecodeUtf8(absl::string_view text) {
  std::vector<CodePoint> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    char32_t cp = 0;
    size_t len = DecodeSequence(s, n, i, &cp);
    if (len == 0) {
      cp = kInvalidByteBase + s[i];
      len = 1;
    }
    out.push_back(CodePoint{cp, static_cast<uint32_t>(i), static_cast<uint32_t>(i + len)});
    i += len;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// The length of the sequence a non-ASCII lead byte `b` starts (0: not a lead byte), narrowing
// [*lo, *hi], the range of its second byte, where Unicode's table 3-7 does.
size_t LeadByteLength(unsigned char b, unsigned char* lo, unsigned char* hi) {
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) {
    if (b == 0xE0) *lo = 0xA0;
    if (b == 0xED) *hi = 0x9F;
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (b == 0xF0) *lo = 0x90;
    if (b == 0xF4) *hi = 0x8F;
    return 4;
  }
  return 0;
}

// Length of the well-formed sequence starting at s[i], or 0; `*valid_prefix` receives how many
// bytes (>= 1) form a maximal ill-formed subpart when it is 0 (Unicode 15, section 3.9 U+FFFD
// substitution, as Rust and ICU practise it).
size_t SequenceLength(const unsigned char* s, size_t n, size_t i, size_t* valid_prefix) {
  const unsigned char b = s[i];
  *valid_prefix = 1;
  if (b < 0x80) return 1;
  unsigned char lo = 0x80, hi = 0xBF;
  const size_t len = LeadByteLength(b, &lo, &hi);
  if (len == 0) return 0;
  for (size_t k = 1; k < len; ++k) {
    if (i + k >= n) return 0;
    const unsigned char c = s[i + k];
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return 0;
    *valid_prefix = k + 1;
  }
  return len;
}

}  // namespace

bool IsValidUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t prefix;
  for (size_t i = 0; i < text.size();) {
    const size_t len = SequenceLength(s, text.size(), i, &prefix);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string Utf8Lossy(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::string out;
  out.reserve(text.size());
  size_t prefix;
  for (size_t i = 0; i < text.size();) {
    const size_t len = SequenceLength(s, text.size(), i, &prefix);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      i += prefix;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  return out;
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  if (cp > 0x10FFFF) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_L_MASK) != 0;
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  if (cp > 0x10FFFF) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_N_MASK) != 0;
}

bool IsWhitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  if (cp > 0x10FFFF) return false;
  return u_isUWhiteSpace(static_cast<UChar32>(cp));
}

bool IsWordChar(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') || cp == '_';
  }
  if (cp > 0x10FFFF) return false;
  const auto c = static_cast<UChar32>(cp);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL) ||
         (U_GET_GC_MASK(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

absl::StatusOr<std::string> NormalizeUnicode(NormalizationForm form, absl::string_view text) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = nullptr;
  switch (form) {
    case NormalizationForm::kNfc:
      normalizer = icu::Normalizer2::getNFCInstance(err);
      break;
    case NormalizationForm::kNfd:
      normalizer = icu::Normalizer2::getNFDInstance(err);
      break;
    case NormalizationForm::kNfkc:
      normalizer = icu::Normalizer2::getNFKCInstance(err);
      break;
    case NormalizationForm::kNfkd:
      normalizer = icu::Normalizer2::getNFKDInstance(err);
      break;
  }
  if (U_FAILURE(err) || normalizer == nullptr) {
    return absl::InternalError(absl::StrCat("ICU normalizer unavailable: ", u_errorName(err)));
  }
  const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
  // Fast path: most calibration text is already normalized.
  if (normalizer->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return std::string(text);
  err = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
  normalizer->normalizeUTF8(0, piece, sink, nullptr, err);
  if (U_FAILURE(err)) {
    return absl::InternalError(absl::StrCat("ICU normalization failed: ", u_errorName(err)));
  }
  return out;
}

}  // namespace moec::model
