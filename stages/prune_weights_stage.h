// `prune_weights` (per layer): Unified-MoE-Compression's expert slimming (ALGORITHMS.md 2.5):
// Wanda, SparseGPT or magnitude pruning (quant/sparse.h) of every routed expert's three matrices
// (and the shared experts' with `shared_experts`; routers never, decision 7), unstructured at
// `sparsity` or n:m (`pattern` 2:4, 4:8). Statistics come from the tokens routed to each expert
// in one pass of the unpruned layer, each forward call counted as one sample (Wanda's running
// mean of Σ x², SparseGPT's GPTQ Hessian). Layer l+1 sees the pruned layer l: the stage chains
// through its own `hidden` output. Dense layers pass through.
// Outputs per pruned matrix: its pruned weight F32 under its checkpoint tensor name; `summary`
// U8 (JSON: per matrix the achieved fraction of zeros and the method); `hidden` F32.
#ifndef MOEC_STAGES_PRUNE_WEIGHTS_STAGE_H_
#define MOEC_STAGES_PRUNE_WEIGHTS_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class PruneWeightsStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_PRUNE_WEIGHTS_STAGE_H_
