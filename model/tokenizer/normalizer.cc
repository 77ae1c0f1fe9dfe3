#include "model/tokenizer/normalizer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "glog/logging.h"

namespace moec::model {
namespace {

using nlohmann::json;


}  // namespace

std::string ReplaceAll(absl::string_view text, absl::string_view pattern,
                       absl::string_view content) {
  if (pattern.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t prev = 0;
  for (size_t pos = text.find(pattern); pos != absl::string_view::npos;
       pos = text.find(pattern, prev)) {
    out.append(text.data() + prev, pos - prev);
    out.append(content.data(), content.size());
    prev = pos + pattern.size();
  }
  out.append(text.data() + prev, text.size() - prev);
  return out;
}

absl::StatusOr<Normalizer> Normalizer::FromJson(const json& value, const JsonPath& at) {
  Normalizer n;
  MOEC_RETURN_IF_ERROR(AddComponentSteps(value, at, "normalizers", &ParseStep, &n.steps_));
  return n;
}

absl::StatusOr<Normalizer::Step> Normalizer::ParseStep(const json& value, const std::string& type,
                                                       const JsonPath& at) {
  Step step;
  if (type == "Prepend") {
    step.kind = Kind::kPrepend;
    MOEC_ASSIGN_OR_RETURN(step.content, RequiredString(value, "prepend", at));
  } else if (type == "Replace") {
    step.kind = Kind::kReplace;
    MOEC_ASSIGN_OR_RETURN(ReplaceSpec replace, ParseReplace(value, at));
    step.pattern = std::move(replace.pattern);
    step.content = std::move(replace.content);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = Kind::kUnicode;
    step.form = type == "NFC"    ? NormalizationForm::kNfc
                : type == "NFD"  ? NormalizationForm::kNfd
                : type == "NFKC" ? NormalizationForm::kNfkc
                                 : NormalizationForm::kNfkd;
    // Fail at load time, not per call, if ICU cannot provide the normalizer.
    MOEC_RETURN_IF_ERROR(NormalizeUnicode(step.form, "a").status());
  } else if (type == "Strip") {
    step.kind = Kind::kStrip;
    MOEC_ASSIGN_OR_RETURN(step.strip_left, OptionalBool(value, "strip_left", true, at));
    MOEC_ASSIGN_OR_RETURN(step.strip_right, OptionalBool(value, "strip_right", true, at));
  } else {
    return at.Field("type").Unimplemented(
        absl::StrCat("unsupported normalizer type '", type,
                     "'; supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Strip"));
  }
  return step;
}

std::string Normalizer::Apply(absl::string_view input) const {
  std::string text(input);
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kPrepend:
        if (!text.empty()) text.insert(0, step.content);
        break;
      case Kind::kReplace:
        text = ReplaceAll(text, step.pattern, step.content);
        break;
      case Kind::kUnicode: {
        absl::StatusOr<std::string> normalized = NormalizeUnicode(step.form, text);
        if (normalized.ok()) {
          text = *std::move(normalized);
        } else {
          // Checked at load time; should ICU still fail, keep the text rather than drop it.
          LOG(ERROR) << "tokenizer normalizer: " << normalized.status();
        }
        break;
      }
      case Kind::kStrip: {
        const std::vector<CodePoint> c = DecodeUtf8(text);
        size_t b = 0, e = c.size();
        if (step.strip_left) {
          while (b < e && IsWhitespace(c[b].cp)) ++b;
        }
        if (step.strip_right) {
          while (e > b && IsWhitespace(c[e - 1].cp)) --e;
        }
        text = b == e ? std::string() : text.substr(c[b].begin, c[e - 1].end - c[b].begin);
        break;
      }
    }
  }
  return text;
}

}  // namespace moec::model
