// Checks shared by the two ways a recipe is read (recipe.cc from YAML, recipe_json.cc from its
// canonical JSON): ids, and parameter values against their catalog entry. Internal to
// moec_recipe.
#ifndef MOEC_COMMON_RECIPE_PARAM_CHECK_H_
#define MOEC_COMMON_RECIPE_PARAM_CHECK_H_

#include <string>

#include "absl/strings/string_view.h"
#include "common/recipe/stage_catalog.h"
#include "nlohmann/json.hpp"

namespace moec::recipe::internal {

// Stage ids: [A-Za-z0-9_-]{1,64}. Recipe names may also hold '.'. Neither may hold '/', which
// separates job, stage and layer in task ids.
bool ValidId(absl::string_view id, bool allow_dot = false);

// "an integer", "a number", "true or false", "a string", "a non-empty list of integers".
std::string ParamTypeName(const ParamSpec& spec);

// Whether `v` has the JSON type `spec` needs (an integer list: a non-empty array of integers).
bool HasParamType(const nlohmann::json& v, const ParamSpec& spec);

// What is wrong with `v` (of the right type) for `spec` — "must be in [1, 8], got 9", "must be
// one of a, b, got 'c'" — or "" when nothing is.
std::string ParamProblem(const nlohmann::json& v, const ParamSpec& spec);

}  // namespace moec::recipe::internal

#endif  // MOEC_COMMON_RECIPE_PARAM_CHECK_H_
