#include "common/recipe/param_check.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moec::recipe::internal {
namespace {

using nlohmann::json;

std::string IntProblem(int64_t v, const ParamSpec& spec) {
  const auto min = static_cast<int64_t>(spec.min);
  const auto max = static_cast<int64_t>(spec.max);
  if (v >= min && v <= max) return "";
  return absl::StrCat("must be in [", min, ", ", max, "], got ", v);
}

}  // namespace

bool ValidId(absl::string_view id, bool allow_dot) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
          (allow_dot && c == '.'))) {
      return false;
    }
  }
  return true;
}

std::string ParamTypeName(const ParamSpec& spec) {
  switch (spec.type) {
    case ParamType::kInt:
      return "an integer";
    case ParamType::kFloat:
      return "a number";
    case ParamType::kBool:
      return "true or false";
    case ParamType::kString:
    case ParamType::kEnum:
      return "a string";
    case ParamType::kIntList:
      return "a non-empty list of integers";
  }
  return "a value";
}

bool HasParamType(const json& v, const ParamSpec& spec) {
  switch (spec.type) {
    case ParamType::kInt:
      return v.is_number_integer();
    case ParamType::kFloat:
      return v.is_number();
    case ParamType::kBool:
      return v.is_boolean();
    case ParamType::kString:
    case ParamType::kEnum:
      return v.is_string();
    case ParamType::kIntList:
      return v.is_array() && !v.empty() &&
             std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_number_integer(); });
  }
  return false;
}

std::string ParamProblem(const json& v, const ParamSpec& spec) {
  switch (spec.type) {
    case ParamType::kInt:
      return IntProblem(v.get<int64_t>(), spec);
    case ParamType::kFloat: {
      const double d = v.get<double>();
      if (d >= spec.min && d <= spec.max) return "";
      return absl::StrCat("must be in [", spec.min, ", ", spec.max, "], got ", d);
    }
    case ParamType::kEnum: {
      const std::string s = v.get<std::string>();
      if (std::find(spec.choices.begin(), spec.choices.end(), s) != spec.choices.end()) return "";
      return absl::StrCat("must be one of ", absl::StrJoin(spec.choices, ", "), ", got '", s, "'");
    }
    case ParamType::kIntList:
      for (const json& e : v) {
        std::string problem = IntProblem(e.get<int64_t>(), spec);
        if (!problem.empty()) return problem;
      }
      return "";
    case ParamType::kBool:
    case ParamType::kString:
      return "";
  }
  return "";
}

}  // namespace moec::recipe::internal
