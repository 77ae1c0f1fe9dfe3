// The Stage interface: one implementation per stage kind (docs/recipes.md). Stages are the only
// code that knows compression algorithms; workers run them through worker/stage_runner.h.
#ifndef MOEC_STAGES_STAGE_H_
#define MOEC_STAGES_STAGE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dataplane/task_context.h"

namespace moec::stages {

using dataplane::FactorIo;
using dataplane::StageContext;

// One run of one task. Implementations may throw (libtorch does); StageRunner converts.
class Stage {
 public:
  virtual ~Stage() = default;
  virtual absl::Status Run(StageContext& ctx) = 0;
};

// kind -> factory. An object handed to the worker, not a static registrar. Thread-safe after
// the registrations are done.
class StageRegistry {
 public:
  using Factory = std::function<std::unique_ptr<Stage>()>;
  void Register(const std::string& kind, Factory factory) { factories_[kind] = std::move(factory); }
  // Errors: Unimplemented when this worker has no implementation of `kind`.
  absl::StatusOr<std::unique_ptr<Stage>> Create(const std::string& kind) const;
  std::vector<std::string> Kinds() const;

 private:
  std::map<std::string, Factory> factories_;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_STAGE_H_
