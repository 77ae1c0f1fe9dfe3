// The stage kinds a recipe can name and their parameters (types, ranges, defaults). One table
// shared by the client (validation before submit), the coordinator (validation again, planning)
// and the stages (which read the validated parameters). Documented in docs/recipes.md.
#ifndef MOEC_COMMON_RECIPE_STAGE_CATALOG_H_
#define MOEC_COMMON_RECIPE_STAGE_CATALOG_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moec::recipe {

enum class ParamType { kInt, kFloat, kBool, kString, kEnum, kIntList };

struct ParamSpec {
  std::string name;
  ParamType type;
  nlohmann::json default_value;  // null: the parameter is required
  double min = 0;                // kInt, kFloat, kIntList elements: inclusive bounds
  double max = 0;
  std::vector<std::string> choices;  // kEnum
  std::string help;
};

// How the planner expands a stage into tasks.
enum class StageShape {
  kGlobal,    // one task for the whole model
  kPerLayer,  // one task per layer, each depending on the previous layer (a chain)
};

struct StageKindSpec {
  std::string kind;
  StageShape shape;
  std::string help;
  std::vector<ParamSpec> params;
  // Version of the stage's results, part of every task fingerprint: bump it whenever a change to
  // the stage's code changes its outputs, so outputs stored by an older build are not reused.
  int version = 1;
};

// All stage kinds, in documentation order.
const std::vector<StageKindSpec>& StageKinds();

// The spec of `kind`, or nullptr.
const StageKindSpec* FindStageKind(absl::string_view kind);

// "calibrate, quant_loss, ..." for error messages.
std::string StageKindList();

}  // namespace moec::recipe

#endif  // MOEC_COMMON_RECIPE_STAGE_CATALOG_H_
