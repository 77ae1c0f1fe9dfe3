// `restructure`: collects the decisions of the structural stages it needs into a model view
// (dataplane/model_view.h; output `view`, JSON) that every later stage runs on. Global, cheap: it
// reads no weights.
#ifndef MOEC_STAGES_RESTRUCTURE_STAGE_H_
#define MOEC_STAGES_RESTRUCTURE_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class RestructureStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_RESTRUCTURE_STAGE_H_
