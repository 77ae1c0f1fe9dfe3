#include "dataplane/task_context.h"

#include "absl/strings/str_cat.h"

namespace moec::dataplane {

absl::StatusOr<std::string> StageContext::InputKey(absl::string_view stage_id, int layer,
                                                   absl::string_view name) const {
  if (task == nullptr) return absl::FailedPreconditionError("no task in the stage context");
  const std::string id = layer < 0 ? absl::StrCat(task->job_id(), "/", stage_id)
                                   : absl::StrCat(task->job_id(), "/", stage_id, "/L", layer);
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

}  // namespace moec::dataplane
