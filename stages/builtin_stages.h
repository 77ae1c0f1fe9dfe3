// The stage adapters this build implements, for the worker binary (tests register what they
// need). StageRegistryTest checks they are exactly the catalog's kinds.
#ifndef MOEC_STAGES_BUILTIN_STAGES_H_
#define MOEC_STAGES_BUILTIN_STAGES_H_

#include "stages/stage.h"

namespace moec::stages {

// Registers every stage kind this build implements.
void RegisterBuiltinStages(StageRegistry* registry);

}  // namespace moec::stages

#endif  // MOEC_STAGES_BUILTIN_STAGES_H_
