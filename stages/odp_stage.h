// `odp` (global, needs `calibrate`): calibrates MC-MoE's online dynamic pruning (ALGORITHMS.md
// 3.6, decision 6). Per MoE layer: β = the median p2/p1 of the calibration tokens (calibrate's
// `p2_p1_median`), and a calibrated loss = Σ over batches of ‖Z − Z_ODP‖_F (float64): the MoE block
// output with and without ODP (column-sum attention statistic, or the positional prior under
// `odp_positional_prior`; `protect_fraction` of the most important tokens protected). ODP is
// enabled in the `enable_fraction` of MoE layers with the lowest loss (at least one). Outputs
// `odp_beta`, `odp_loss`, `skipped` (fraction of routed (token, expert) pairs ODP removes) F64
// [layers] (NaN at non-MoE layers), `enabled_layers` I64 and `settings` F64 {tau_low, tau_high,
// positional prior 0/1}; `export` writes them into
// config.json `moec.odp`, which the forward honours.
#ifndef MOEC_STAGES_ODP_STAGE_H_
#define MOEC_STAGES_ODP_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class OdpStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_ODP_STAGE_H_
