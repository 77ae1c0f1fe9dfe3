// Pre-tokenization as in the Hugging Face `tokenizers` library: the pieces of input text left
// between added tokens are split further (regex Split, ByteLevel, Metaspace, Digits) and
// ByteLevel maps their bytes into the GPT-2 printable alphabet before the BPE model sees them.
//
// std::regex has neither \p{L} nor lookahead, so Split patterns are not compiled: the patterns
// real checkpoints use are recognized by their exact text and matched by hand-written code that
// reproduces Oniguruma's leftmost-first backtracking semantics:
//   kGpt2Pattern, kLlama3Pattern (and its single-digit Qwen2 variant), \p{N}{1,3} and \p{N}.
// Any other Regex pattern is Unimplemented (the error names it). String patterns are literal.
#ifndef MOEC_MODEL_TOKENIZER_PRETOKENIZER_H_
#define MOEC_MODEL_TOKENIZER_PRETOKENIZER_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace moec::model {

// GPT-2's split regex (ByteLevel with use_regex = true uses it too).
inline constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Llama-3's split regex.
inline constexpr absl::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2's split regex: Llama-3's with single digits.
inline constexpr absl::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A piece of the input on its way to the model.
struct Piece {
  std::string text;
  // >= 0 for an added token found in the input: final, no further processing.
  int32_t added_token_id = -1;
  // True when the piece begins at byte 0 of the original input (Metaspace prepend_scheme
  // "first" prepends only there).
  bool at_input_start = false;
};

// How a Split keeps the delimiters it finds (SplitDelimiterBehavior in `tokenizers`).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// The GPT-2 bytes_to_unicode table: byte -> UTF-8 of the printable character standing for it
// (e.g. ' ' -> "Ġ", 0xC3 -> "Ã").
const std::array<std::string, 256>& ByteLevelAlphabet();

// Maps every byte of `text` through ByteLevelAlphabet().
std::string ByteLevelEncode(absl::string_view text);

// A sequence of pre-tokenizer steps (a JSON `Sequence` is flattened; null means none).
// Immutable after construction, so Apply may run on many threads at once.
class PreTokenizer {
 public:
  // Builds from the `pre_tokenizer` JSON value (null or absent gives an empty pipeline).
  // Errors: InvalidArgument for malformed fields; Unimplemented for an unsupported type or Split
  // regex (named in the message).
  static absl::StatusOr<PreTokenizer> FromJson(const nlohmann::json& value, const JsonPath& at);

  // Splits/transforms every piece that is not an added token; drops empty pieces.
  void Apply(std::vector<Piece>* pieces) const;

  bool empty() const { return steps_.empty(); }

 private:
  enum class Kind { kByteLevel, kSplit, kMetaspace, kDigits };
  enum class Pattern { kLiteral, kGpt2, kLlama3, kDigits };
  enum class Prepend { kAlways, kFirst, kNever };
  struct Step {
    Kind kind = Kind::kSplit;
    // kByteLevel
    bool add_prefix_space = false;
    bool use_regex = true;
    // kSplit (kByteLevel with use_regex uses kGpt2 / kIsolated)
    Pattern pattern = Pattern::kLiteral;
    std::string literal;
    int max_digits = 3;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    // kMetaspace
    std::string replacement;
    Prepend prepend = Prepend::kAlways;
    bool split = true;
    // kDigits
    bool individual_digits = false;
  };

  // One component of `type` (not a Sequence: AddComponentSteps expands those).
  static absl::StatusOr<Step> ParseStep(const nlohmann::json& value, const std::string& type,
                                        const JsonPath& at);
  // The parts of ParseStep for the Split and Metaspace types.
  static absl::Status ParseSplit(const nlohmann::json& value, const JsonPath& at, Step* step);
  static absl::Status ParseSplitRegex(const std::string& regex, const JsonPath& pat, Step* step);
  static absl::Status ParseMetaspace(const nlohmann::json& value, const JsonPath& at, Step* step);
  static void ApplyStep(const Step& step, std::vector<Piece>* pieces);
  // The parts of ApplyStep: append what `piece` becomes to `out` (a piece may be moved from).
  static void ApplyByteLevel(const Step& step, Piece* piece, std::vector<Piece>* out);
  static void ApplySplit(const Step& step, const Piece& piece, std::vector<Piece>* out);
  static void ApplyMetaspace(const Step& step, Piece* piece, std::vector<Piece>* out);

  std::vector<Step> steps_;
};

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_PRETOKENIZER_H_
