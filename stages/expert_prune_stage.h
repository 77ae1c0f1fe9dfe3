// `expert_prune` (per layer): Lu et al.'s expert subset search (ALGORITHMS.md 1.3, 1.4). For a
// MoE layer with E routed experts, choose the r = `keep` experts whose block output, with the
// router masked to them (softmax over the kept rows, top-k among them, renormalised as the
// architecture does), best reproduces the original block output:
//   loss(K) = Σ over calibration batches of ‖Z_b − Ẑ_b(K)‖_F   (float64, not squared)
// Each expert's output is computed once per batch; a candidate is then a re-weighting of those
// outputs. Candidates are the drop sets of size E − r in lexicographic order (ties: the first),
// exhaustively when C(E, E − r) ≤ `exhaustive_limit`; beyond it a greedy search on the same
// objective removes one expert at a time, each time the one whose removal costs least.
// `layerwise`: inputs and targets from the unmodified model (the `calibrate` chain).
// `progressive`: inputs from this stage's own chain (layers before already pruned), targets the
// original block's outputs on the original inputs.
// Outputs at MoE layers: `kept_experts` I64 [r] (ascending), `losses` F64 [candidates evaluated]
// (in evaluation order), `loss` F64 [1] (the chosen set's); with `progressive` every layer also
// writes `hidden` (the pruned layer's output, the next layer's input).
#ifndef MOEC_STAGES_EXPERT_PRUNE_STAGE_H_
#define MOEC_STAGES_EXPERT_PRUNE_STAGE_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "model/layers.h"
#include "stages/stage.h"

namespace moec::stages {

// One calibration batch of a MoE layer: the block's input x [tokens, hidden], the target output
// z [tokens, hidden], every routed expert's output on all tokens y [E, tokens, hidden], and the
// shared experts' contribution (undefined when none).
struct PruneBatch {
  at::Tensor x, z, y, shared;
};

struct SubsetSearchResult {
  std::vector<int> kept;        // ascending
  double loss = 0;
  std::vector<double> losses;   // every candidate evaluated, in order
  bool exhaustive = true;
};

// The search on prepared batches. `rule` is the layer's routing rule (top_k is capped at r).
// Errors: InvalidArgument for r < 1 or r > E.
absl::StatusOr<SubsetSearchResult> SearchExpertSubset(const std::vector<PruneBatch>& batches,
                                                      const at::Tensor& router,
                                                      const model::RoutingRule& rule, int keep,
                                                      int64_t exhaustive_limit, int64_t seq);

// Ẑ(K) of one batch: the block output with only the experts in `kept` (ascending) routed.
at::Tensor MaskedBlockOutput(const PruneBatch& b, const at::Tensor& router,
                             const model::RoutingRule& rule, const std::vector<int>& kept,
                             int64_t seq);

class ExpertPruneStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_EXPERT_PRUNE_STAGE_H_
