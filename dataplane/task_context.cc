#include "dataplane/task_context.h"

#include "absl/strings/str_cat.h"
#include "common/task_id.h"

namespace moec::dataplane {

absl::StatusOr<std::string> StageContext::InputKey(absl::string_view stage_id, int layer,
                                                   absl::string_view name) const {
  if (task == nullptr) return absl::FailedPreconditionError("no task in the stage context");
  const std::string id = TaskId{task->job_id(), std::string(stage_id), layer}.ToString();
  auto it = inputs.find(id);
  if (it == inputs.end()) {
    return absl::NotFoundError(absl::StrCat("task ", task->task_id(), " has no input from task ",
                                            id, " (is stage '", stage_id, "' in its needs?)"));
  }
  return absl::StrCat(it->second, "/", name);
}

absl::StatusOr<std::string> StageContext::PreviousLayerKey(absl::string_view name) const {
  if (task == nullptr || task->layer() < 1) {
    return absl::FailedPreconditionError("PreviousLayerKey needs a per-layer task after layer 0");
  }
  return InputKey(task->stage_id(), task->layer() - 1, name);
}

void StageContext::SetRecipe(std::shared_ptr<const recipe::Recipe> r, absl::string_view stage_id) {
  recipe = std::move(r);
  stage = recipe != nullptr ? recipe->FindStage(stage_id) : nullptr;
}

}  // namespace moec::dataplane
