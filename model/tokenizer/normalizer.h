// Normalizers of the Hugging Face `tokenizers` library that moec supports: Sequence, Prepend,
// Replace (String pattern), NFC, NFD, NFKC, NFKD and Strip. Llama/Mixtral use
// Sequence[Prepend("▁"), Replace(" " -> "▁")]; Qwen2 uses NFC.
#ifndef MOEC_MODEL_TOKENIZER_NORMALIZER_H_
#define MOEC_MODEL_TOKENIZER_NORMALIZER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer/json_util.h"
#include "model/tokenizer/unicode_util.h"
#include "nlohmann/json.hpp"

namespace moec::model {

// A flattened sequence of normalization steps; immutable after construction (thread-safe).
class Normalizer {
 public:
  // Builds from the `normalizer` JSON value (null or absent: no normalization).
  // Errors: InvalidArgument for malformed fields; Unimplemented for other types (e.g. Lowercase,
  // BertNormalizer, Precompiled) or a Replace with a Regex pattern.
  static absl::StatusOr<Normalizer> FromJson(const nlohmann::json& value, const JsonPath& at);

  // Normalizes one piece of input text.
  std::string Apply(absl::string_view text) const;

  bool empty() const { return steps_.empty(); }

 private:
  enum class Kind { kPrepend, kReplace, kUnicode, kStrip };
  struct Step {
    Kind kind = Kind::kPrepend;
    std::string pattern;  // kReplace
    std::string content;  // kPrepend, kReplace
    NormalizationForm form = NormalizationForm::kNfc;
    bool strip_left = false, strip_right = false;
  };

  // One component of `type` (not a Sequence: AddComponentSteps expands those).
  static absl::StatusOr<Step> ParseStep(const nlohmann::json& value, const std::string& type,
                                        const JsonPath& at);

  std::vector<Step> steps_;
};

// Replaces every non-overlapping occurrence of `pattern` (left to right) with `content`.
std::string ReplaceAll(absl::string_view text, absl::string_view pattern,
                       absl::string_view content);

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_NORMALIZER_H_
