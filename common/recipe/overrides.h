// `--set key.path=value` overrides of a recipe (docs/recipes.md, `--set`), applied to its
// YAML before validation: a path of map keys, where a key inside `stages` names a stage by id.
#ifndef MOEC_COMMON_RECIPE_OVERRIDES_H_
#define MOEC_COMMON_RECIPE_OVERRIDES_H_

#include <string>

#include "absl/status/status.h"
#include "yaml-cpp/yaml.h"

namespace moec::recipe {

// Sets `ov` ("key.path=value", the value parsed as YAML) in `root`. Errors: InvalidArgument
// naming `source` and the override (no '=', empty segment, unknown stage, a whole stage
// replaced, a key inside a scalar, a value that is not YAML).
absl::Status ApplyOverride(YAML::Node root, const std::string& source, const std::string& ov);

}  // namespace moec::recipe

#endif  // MOEC_COMMON_RECIPE_OVERRIDES_H_
