#include "worker/stage_runner.h"

#include <c10/util/Exception.h>

#include <exception>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"

namespace moec::worker {

absl::Status RunStage(const stages::StageRegistry& registry, stages::StageContext& ctx) {
  try {
    absl::StatusOr<std::unique_ptr<stages::Stage>> stage = registry.Create(ctx.task->kind());
    if (!stage.ok()) return stage.status();
    return (*stage)->Run(ctx);
  } catch (const c10::OutOfMemoryError& e) {
    // A GPU allocation the stage did not catch itself: retriable, with smaller chunks once the
    // coordinator's plan says so (docs/data_plane.md "GPU memory").
    const std::string msg = e.what();
    return absl::ResourceExhaustedError(absl::StrCat("task ", ctx.task->task_id(), " on ",
                                                     ctx.device.ToString(), ": out of memory: ",
                                                     msg.substr(0, msg.find('\n'))));
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(absl::StrCat("task ", ctx.task->task_id(), ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("task ", ctx.task->task_id(), ": ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat("task ", ctx.task->task_id(), ": unknown exception"));
  }
}

bool IsRetriable(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kCancelled:
      return false;
    default:
      return true;
  }
}

}  // namespace moec::worker
