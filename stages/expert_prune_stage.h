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
// writes `hidden.cNNNNN` per chunk and `windows` (the pruned layer's output, the next layer's
// input).
//
// On the data plane (expert_parallel.h): the calibration batches are the chunks, dealt
// round-robin over the gang; each routed expert is read and run (densely, on every token of
// every chunk) by its owner rank only, which returns its outputs to the chunk's rank; each rank
// scores every candidate on its chunks and the per-chunk losses are gathered and summed in chunk
// order, so every rank picks the same set and the outputs are the same bytes for any gang size.
#ifndef MOEC_STAGES_EXPERT_PRUNE_STAGE_H_
#define MOEC_STAGES_EXPERT_PRUNE_STAGE_H_

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/runtime/layers.h"
#include "stages/stage.h"

namespace moec::stages {

// One calibration batch of a MoE layer: the block's input x [tokens, hidden], the target output
// z [tokens, hidden], every routed expert's output on all tokens y [E, tokens, hidden], and the
// shared experts' contribution (undefined when none).
struct PruneBatch {
  at::Tensor x, z, y, shared;
};

// Losses of candidate kept sets (each ascending), summed over every calibration batch in batch
// order; one value per candidate.
using CandidateScorer =
    std::function<absl::StatusOr<std::vector<double>>(const std::vector<std::vector<int>>&)>;

struct SubsetSearchResult {
  std::vector<int> kept;        // ascending
  double loss = 0;
  std::vector<double> losses;   // every candidate evaluated, in order
  bool exhaustive = true;
};

// C(n, k), or limit + 1 when it exceeds limit: with k of n experts dropped, how many candidates
// an exhaustive search scores (SearchExpertSubset is exhaustive when this is at most its limit).
int64_t CappedBinomial(int n, int k, int64_t limit);

// The search over kept sets of `keep` of `experts` (drop sets in lexicographic order when
// C(experts, experts - keep) <= exhaustive_limit, else greedy), candidates scored by `score` in
// blocks of at most `block` candidates. Errors: InvalidArgument for keep < 1 or keep > experts;
// the scorer's errors.
absl::StatusOr<SubsetSearchResult> SearchExpertSubset(int experts, int keep,
                                                      int64_t exhaustive_limit,
                                                      const CandidateScorer& score,
                                                      size_t block = 1024);

// The loss of candidate `kept` on one batch: ‖Z − Ẑ(K)‖_F in float64.
double BatchLoss(const PruneBatch& b, const at::Tensor& router, const model::RoutingRule& rule,
                 const std::vector<int>& kept, int64_t seq);

// The search on prepared batches, all on this process. `rule` is the layer's routing rule (top_k is capped at r).
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
