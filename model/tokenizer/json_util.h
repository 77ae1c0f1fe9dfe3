// Small checked accessors over nlohmann::json for the tokenizer loaders. They never throw: every
// type mismatch becomes InvalidArgument naming the source file and the field path, e.g.
// `tokenizer file /m/tokenizer.json: field 'model.merges[3]': expected a string`.
#ifndef MOEC_MODEL_TOKENIZER_JSON_UTIL_H_
#define MOEC_MODEL_TOKENIZER_JSON_UTIL_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moec::model {

// Where a JSON value came from: the file (or caller-chosen source name) and its field path.
struct JsonPath {
  absl::string_view source;
  std::string path;

  JsonPath Field(absl::string_view key) const {
    return JsonPath{source, path.empty() ? std::string(key) : absl::StrCat(path, ".", key)};
  }
  JsonPath Index(size_t i) const { return JsonPath{source, absl::StrCat(path, "[", i, "]")}; }

  absl::Status Invalid(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer file ", source, ": field '", path, "': ", what));
  }
  absl::Status Unimplemented(absl::string_view what) const {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer file ", source, ": field '", path, "': ", what));
  }
};

// Returns obj[key] or nullptr when `obj` is not an object or lacks the key.
inline const nlohmann::json* FindField(const nlohmann::json& obj, absl::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

// A required string field.
inline absl::StatusOr<std::string> RequiredString(const nlohmann::json& obj, absl::string_view key,
                                                  const JsonPath& at) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr) return at.Field(key).Invalid("missing required string");
  if (!v->is_string()) return at.Field(key).Invalid("expected a string");
  return v->get<std::string>();
}

// A string field that may be absent or null.
inline absl::StatusOr<std::optional<std::string>> OptionalString(const nlohmann::json& obj,
                                                                 absl::string_view key,
                                                                 const JsonPath& at) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return at.Field(key).Invalid("expected a string or null");
  return std::optional<std::string>(v->get<std::string>());
}

// A boolean field that may be absent or null (then `fallback`).
inline absl::StatusOr<bool> OptionalBool(const nlohmann::json& obj, absl::string_view key,
                                         bool fallback, const JsonPath& at) {
  const nlohmann::json* v = FindField(obj, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_boolean()) return at.Field(key).Invalid("expected a boolean");
  return v->get<bool>();
}

// A non-negative integer that fits in int32 (token ids).
inline absl::StatusOr<int32_t> AsTokenId(const nlohmann::json& v, const JsonPath& at) {
  if (v.is_number_unsigned()) {
    const auto id = v.get<uint64_t>();
    if (id > INT32_MAX) return at.Invalid(absl::StrCat("token id ", id, " out of range"));
    return static_cast<int32_t>(id);
  }
  if (!v.is_number_integer()) return at.Invalid("expected an integer token id");
  const auto id = v.get<int64_t>();
  if (id < 0 || id > INT32_MAX) return at.Invalid(absl::StrCat("token id ", id, " out of range"));
  return static_cast<int32_t>(id);
}

// The literal pattern and the content of a `Replace` normalizer or decoder
// ({"type": "Replace", "pattern": {"String": "..."}, "content": "..."}). A Regex pattern is
// Unimplemented.
struct ReplaceSpec {
  std::string pattern;
  std::string content;
};
inline absl::StatusOr<ReplaceSpec> ParseReplace(const nlohmann::json& value, const JsonPath& at) {
  const nlohmann::json* pattern = FindField(value, "pattern");
  const JsonPath pat = at.Field("pattern");
  if (pattern == nullptr || !pattern->is_object()) return pat.Invalid("missing object");
  absl::StatusOr<std::optional<std::string>> literal = OptionalString(*pattern, "String", pat);
  if (!literal.ok()) return literal.status();
  if (!literal->has_value()) {
    if (FindField(*pattern, "Regex") != nullptr) {
      return pat.Unimplemented("Replace with a Regex pattern is not supported; use String");
    }
    return pat.Invalid("expected {\"String\": ...}");
  }
  absl::StatusOr<std::string> content = RequiredString(value, "content", at);
  if (!content.ok()) return content.status();
  return ReplaceSpec{**literal, *content};
}

// How tokenizer.json writes its pipeline components (normalizer, pre_tokenizer, decoder): null
// (no step), a {"type": "Sequence", <list_field>: [...]} of components (nested at most 8 deep),
// or one component {"type": <type>, ...}, which `parse_step(value, type, at)` turns into a Step.
// Appends the steps in order.
template <typename Step, typename ParseStep>
absl::Status AddComponentSteps(const nlohmann::json& value, const JsonPath& at,
                               absl::string_view list_field, const ParseStep& parse_step,
                               std::vector<Step>* steps, int depth = 0) {
  constexpr int kMaxSequenceDepth = 8;
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) return at.Invalid("expected an object or null");
  absl::StatusOr<std::string> type = RequiredString(value, "type", at);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    if (depth >= kMaxSequenceDepth) return at.Invalid("Sequence nested too deeply");
    const nlohmann::json* list = FindField(value, list_field);
    if (list == nullptr || !list->is_array()) return at.Field(list_field).Invalid("missing array");
    for (size_t i = 0; i < list->size(); ++i) {
      absl::Status s = AddComponentSteps((*list)[i], at.Field(list_field).Index(i), list_field,
                                         parse_step, steps, depth + 1);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  absl::StatusOr<Step> step = parse_step(value, *type, at);
  if (!step.ok()) return step.status();
  steps->push_back(*std::move(step));
  return absl::OkStatus();
}

}  // namespace moec::model

#endif  // MOEC_MODEL_TOKENIZER_JSON_UTIL_H_
