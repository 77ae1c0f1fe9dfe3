// `evaluate` (global): perplexity of the job's result on the recipe's evaluation text (GPTQ
// protocol, docs/forward.md), its size on disk and parameter counts, and the same for the
// original model when `baseline` is set. The model evaluated is the job's output directory when
// an `export` stage is among the stage's needs, else the original model.
#ifndef MOEC_STAGES_EVALUATE_STAGE_H_
#define MOEC_STAGES_EVALUATE_STAGE_H_

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stages/stage.h"

namespace moec::stages {

// Output: `report` U8 [bytes], a JSON object {"model": {...}, "baseline": {...}} where each
// entry holds path, perplexity, mean_nll, windows, seqlen, size_bytes, parameters,
// activated_parameters, model_type, and for GPTQ checkpoints average_expert_bits.
class EvaluateStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

// The evaluation entry of one model directory (exposed for tests and the CLI), computed on
// `device`.
absl::StatusOr<nlohmann::json> EvaluateModel(const std::string& dir, const std::string& text,
                                             int64_t seqlen, int64_t max_windows,
                                             const std::function<void(double)>& progress,
                                             const ComputeDevice& device = {});

}  // namespace moec::stages

#endif  // MOEC_STAGES_EVALUATE_STAGE_H_
