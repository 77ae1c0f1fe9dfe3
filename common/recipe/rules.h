// Rules between the stages of a recipe, derived from the stage kinds' traits (stage_catalog.h),
// checked when a recipe is validated, so that `moec plan`, `submit` and `run` (and the
// coordinator) refuse a recipe that could only fail at run time before any task runs. The list,
// with examples, is docs/recipes.md "Rules between stages":
//   1. needs: a stage has a stage of each kind it reads among its direct needs;
//   2. data: stages that read calibration (evaluation) windows need `calibration` (`evaluation`);
//   3. model views: at most one restructure stage, and no structural stage after it;
//   4. output: at most one stage writes the job's output;
//   5. edits: a stage collecting structural decisions (export, restructure) has at most one
//      stage choosing experts among its needs; an export does not take structural decisions both
//      directly and through a restructure stage, nor directly together with quantized weights of
//      the unedited model;
//   6. widths: every width a quantizing stage an export needs may produce (its own width
//      parameters, or the candidate widths of the allocation it needs) is one the export's format
//      can hold;
//   7. allocation: an allocating stage's candidate widths are those its loss stage measured.
#ifndef MOEC_COMMON_RECIPE_RULES_H_
#define MOEC_COMMON_RECIPE_RULES_H_

#include <vector>

#include "absl/status/status.h"
#include "common/recipe/recipe.h"

namespace moec::recipe {

// Checks every rule on `recipe` (stages in a topological order, parameters validated).
// Errors: InvalidArgument "<source>:<line>: stage '<id>' (<kind>): <what>" for the first broken
// rule, in recipe order.
absl::Status CheckStageRules(const Recipe& recipe);

// The widths (ascending, without duplicates) stage `quantizer` of `recipe` may give the linears
// it quantizes: its width parameters (0, kept in the model dtype, is left out), with the expert
// width replaced by the candidate widths of an allocating stage among its needs.
std::vector<int> PossibleWidths(const Recipe& recipe, const StageSpec& quantizer);

}  // namespace moec::recipe

#endif  // MOEC_COMMON_RECIPE_RULES_H_
