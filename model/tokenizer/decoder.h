// Decoders of the Hugging Face `tokenizers` library that moec supports: ByteLevel, Metaspace,
// Replace (String pattern), ByteFallback, Fuse, Strip and Sequence. A missing decoder joins the
// tokens with spaces, as `tokenizers` does.
#ifndef MOEC_MODEL_TOKENIZER_DECODER_H_
#define MOEC_MODEL_TOKENIZER_DECODER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/json_util.h"
#include "nlohmann/json.hpp"

namespace moec::model {

// A flattened chain of decode steps; immutable after construction (thread-safe).
class Decoder {
 public:
  // Builds from the `decoder` JSON value (null or absent: join with " ").
  // Errors: InvalidArgument for malformed fields; Unimplemented for other types (WordPiece,
  // BPEDecoder, CTC) or a Replace with a Regex pattern.
  static absl::StatusOr<Decoder> FromJson(const nlohmann::json& value, const JsonPath& at);

  // Turns token strings into text (decode_chain of every step, then concatenation).
  std::string Decode(std::vector<std::string> tokens) const;

 private:
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
  struct Step {
    Kind kind = Kind::kFuse;
    std::string pattern;  // kReplace; kMetaspace replacement; kStrip content
    std::string content;  // kReplace
    bool metaspace_strip_first = true;
    size_t strip_start = 0, strip_stop = 0;
  };

  // One component of `type` (not a Sequence: AddComponentSteps expands those).
  static absl::StatusOr<Step> ParseStep(const nlohmann::json& value, const std::string& type,
                                        const JsonPath& at);
  static std::vector<std::string> ApplyStep(const Step& step, std::vector<std::string> tokens);

  bool present_ = false;
  std::vector<Step> steps_;
};

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_DECODER_H_
