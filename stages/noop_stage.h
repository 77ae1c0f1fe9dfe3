// `noop`: does nothing but wait `sleep_ms` (checking cancellation), optionally write an output
// `noop` of `output_bytes` bytes ('a' + (i + layer) % 26), and report progress. For control-plane
// tests and the scheduling benchmark.
#ifndef MOEC_STAGES_NOOP_STAGE_H_
#define MOEC_STAGES_NOOP_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class NoopStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_NOOP_STAGE_H_
