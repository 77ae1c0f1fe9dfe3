// UTF-8 iteration and the Unicode character classes the tokenizer needs (\p{L}, \p{N}, \s, \w),
// plus Unicode normalization forms. Character data comes from ICU (libicu-dev, `icu-uc`): the
// Hugging Face `tokenizers` library matches with Oniguruma / the Rust regex crate, whose tables
// follow the Unicode Character Database; ICU 72 (Debian 12) implements Unicode 15, so the classes
// agree without us shipping and maintaining a generated table.
#ifndef MOEC_MODEL_TOKENIZER_UNICODE_UTIL_H_
#define MOEC_MODEL_TOKENIZER_UNICODE_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec::model {

// One decoded character and its byte span [begin, end) in the source string.
// A byte that does not start a well-formed UTF-8 sequence (overlong forms, surrogates and
// values above U+10FFFF included) decodes alone as kInvalidByteBase + byte: outside Unicode, so
// it is neither letter, number nor space, and byte-level code can still see the raw byte.
struct CodePoint {
  char32_t cp;
  uint32_t begin;
  uint32_t end;
};

inline constexpr char32_t kInvalidByteBase = 0x110000;

// Decodes `text` (which must be shorter than 4 GiB) leniently as described above.
std::vector<CodePoint> DecodeUtf8(absl::string_view text);

// Appends the UTF-8 encoding of `cp` (a valid Unicode scalar value) to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// \p{L}: general category Lu, Ll, Lt, Lm or Lo.
bool IsLetter(char32_t cp);
// \p{N}: general category Nd, Nl or No.
bool IsNumber(char32_t cp);
// \s: the White_Space property (as Oniguruma and the Rust regex crate define \s).
bool IsWhitespace(char32_t cp);
// \w as the Rust regex crate defines it: Alphabetic, M*, Nd, Pc or Join_Control.
bool IsWordChar(char32_t cp);

// True when `text` is well-formed UTF-8.
bool IsValidUtf8(absl::string_view text);

// Rust's String::from_utf8_lossy: each maximal ill-formed subpart becomes one U+FFFD.
std::string Utf8Lossy(absl::string_view text);

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };

// Normalizes UTF-8 `text` (ill-formed sequences are left to ICU; they cannot occur in the Rust
// `str` the reference implementation works on). Errors: Internal if ICU fails.
absl::StatusOr<std::string> NormalizeUnicode(NormalizationForm form, absl::string_view text);

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_UNICODE_UTIL_H_
