// `allocate_bits` (global; MC-MoE, ALGORITHMS.md 3.2; docs/bit_allocation.md): needs a
// `calibrate` stage (frequency F = expert_tokens, activated weight A = routing_mass) and a
// `quant_loss` stage (Q) and solves the exact width program with CBC.
// Outputs: `expert_bits` I64 [num_hidden_layers, max experts] (the width of each routed expert;
// -1 where a layer has fewer or no routed experts), `objective` F64 [1], `average_bits` F64 [1].
#ifndef MOEC_STAGES_ALLOCATE_BITS_STAGE_H_
#define MOEC_STAGES_ALLOCATE_BITS_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class AllocateBitsStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_ALLOCATE_BITS_STAGE_H_
