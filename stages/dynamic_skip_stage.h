// `dynamic_skip` (global; Expert_Sparsity, ALGORITHMS.md 1.5): β_l = median over calibration
// tokens of p_(2)/p_(1) at every MoE layer, from a `calibrate` stage it needs. Output
// `skip_beta` F64 [num_hidden_layers] (NaN at layers without routed experts); an `export` stage
// writes it into config.json as moec.skip_beta, and the forward then drops a token's second
// expert when p_2 < β·p_1.
#ifndef MOEC_STAGES_DYNAMIC_SKIP_STAGE_H_
#define MOEC_STAGES_DYNAMIC_SKIP_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class DynamicSkipStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_DYNAMIC_SKIP_STAGE_H_
