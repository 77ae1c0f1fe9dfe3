// The single place where exceptions from stage code (libtorch throws) become absl::Status; a
// failing stage never takes the worker down.
#ifndef MOEC_WORKER_STAGE_RUNNER_H_
#define MOEC_WORKER_STAGE_RUNNER_H_

#include "absl/status/status.h"
#include "stages/stage.h"

namespace moec::worker {

// Creates the stage for ctx.task->kind() and runs it. std::bad_alloc becomes
// ResourceExhausted, any other exception Internal (with its what()); a missing kind is
// Unimplemented.
absl::Status RunStage(const stages::StageRegistry& registry, stages::StageContext& ctx);

// Whether a failure with this status is worth retrying on this or another worker.
bool IsRetriable(const absl::Status& s);

}  // namespace moec::worker

#endif  // MOEC_WORKER_STAGE_RUNNER_H_
