// The model a stage runs on. By default the recipe's `model`; after a `restructure` stage, the
// model its structural stages decided (experts kept, MoE sub-blocks and layers dropped, expert
// weights pruned), seen through the source checkpoint without writing it out: every stage that
// needs the restructure stage, directly or through other stages, loads its tensors through the
// edit (router rows trimmed, experts renumbered, layers renumbered, pruned weights from the
// factor store). That is how one job runs e.g. block drop, then GPTQ on the remaining layers,
// then one export (docs/recipes.md "Structural edits, then quantization").
//
// Per-layer tasks are planned for the source model's layers; a task whose layer the edit removed
// does nothing (SkipRemovedLayer).
#ifndef MOEC_DATAPLANE_MODEL_VIEW_H_
#define MOEC_DATAPLANE_MODEL_VIEW_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "dataplane/structural_edits.h"
#include "dataplane/task_context.h"
#include "model/config/config.h"
#include "nlohmann/json.hpp"

namespace moec::model {
class ModelRunner;  // model/forward.h
}  // namespace moec::model

namespace moec::dataplane {

struct ModelView {
  std::string stage_id;      // the restructure stage
  nlohmann::json config;     // config.json of the edited model
  StructuralEdits edits;     // relative to the recipe's model
};

nlohmann::json StructuralEditsToJson(const StructuralEdits& edits);
absl::StatusOr<StructuralEdits> StructuralEditsFromJson(const nlohmann::json& j);

// config.json of the model directory `src`, as JSON. Errors: those of reading it; DataLoss when
// it is not a JSON object.
absl::StatusOr<nlohmann::json> SourceConfigJson(const std::string& src);
// The recipe's `model`. Errors: FailedPrecondition when the recipe names none.
absl::StatusOr<std::string> RecipeModel(const StageContext& ctx);

// The view of the task's model: that of the restructure stage among its inputs, or nullopt when
// it has none. Errors: DataLoss for a malformed stored view.
absl::StatusOr<std::optional<ModelView>> JobModelView(const StageContext& ctx);

// config.json of the model the task runs on (the view's, else the recipe model's).
absl::StatusOr<nlohmann::json> JobModelConfigJson(const StageContext& ctx);
// Its parsed config.
absl::StatusOr<model::ModelConfig> JobModelConfig(const StageContext& ctx);

// Opens the model the task runs on for the forward, in fp32, on the task's device: the recipe's
// `model`, or its view.
absl::StatusOr<std::unique_ptr<model::ModelRunner>> OpenJobModel(const StageContext& ctx);

// True, after reporting it, when the task's layer is not in `config` (removed by a restructure
// stage): the task then has nothing to do and writes no outputs.
bool SkipRemovedLayer(StageContext& ctx, const model::ModelConfig& config);

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_MODEL_VIEW_H_
