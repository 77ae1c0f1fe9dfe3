// `calibrate` (per layer): runs the layer on the calibration windows and records router
// statistics per expert (ALGORITHMS.md 3.1 and 1.5). See docs/recipes.md and docs/stages.md.
#ifndef MOEC_STAGES_CALIBRATE_STAGE_H_
#define MOEC_STAGES_CALIBRATE_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

// Expert-parallel over the task's gang (stages/expert_parallel.h): chunks of `batch_size` windows
// round-robin over the ranks, routed experts on their owners, statistics summed in chunk order
// (the outputs are the same bytes for every gang size). Outputs of layer l's task:
//   hidden.cNNNNN  F32 [<= batch_size, seqlen, hidden]  residual stream leaving layer l, per
//                                                 chunk (the next layer's input)
//   windows        I64 [2]  {windows, windows per chunk}
// and at MoE layers:
//   expert_tokens  I64 [E]  (token, slot) pairs routed to each expert (MC-MoE's frequency F)
//   routing_mass   F64 [E]  full-softmax probability summed over the tokens that selected the
//                           expert (MC-MoE's activated weight A)
//   softmax_mass   F64 [E]  full-softmax probability summed over all tokens (Unified expert
//                           drop's score for softmax routers)
//   p2_p1_median   F64 [1]  median over tokens of p_(2)/p_(1) (Expert_Sparsity's β; 0 when k=1)
//   router_entropy F64 [1]  mean over tokens of the router entropy / log(E)
//   tokens         I64 [1]  calibration tokens seen
class CalibrateStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_CALIBRATE_STAGE_H_
