// `quant_loss` (per layer): MC-MoE's per-expert, per-width quantization loss (ALGORITHMS.md
// 3.1): for every routed expert e and candidate width b, the expert's three matrices are
// replaced by a round-to-nearest copy and Q[e][b] = sum over calibration batches of
// ||Z - Ẑ||_F in float64, Z the MoE block output of the unmodified layer. Expert-parallel
// (stages/expert_parallel.h): batches of `batch_size` windows round-robin over the gang, the rows
// routed to expert e (with their routing weight) sent to e's owner, which sums the per-batch norms
// in batch order; the same bytes for every gang size.
#ifndef MOEC_STAGES_QUANT_LOSS_STAGE_H_
#define MOEC_STAGES_QUANT_LOSS_STAGE_H_

#include <ATen/ATen.h>

#include "stages/stage.h"

namespace moec::stages {

// MC-MoE's RTN ("normal_quantize") of w [out, in] to `bits` in column blocks of `group_size`
// (-1: whole rows), per row of each block: bits >= 2: xmin = min(0, min), xmax = max(0, max)
// (both 0: -1 and +1), s = (xmax - xmin) / (2^b - 1), z = round(-xmin / s), q = clamp(round(w / s)
// + z, 0, 2^b - 1), ŵ = s (q - z); bits = 1: ŵ = sign(w) · mean|w| (sign(0) = +1). Returns ŵ.
at::Tensor NormalQuantize(const at::Tensor& w, int bits, int64_t group_size);

// Needs a `calibrate` stage (its `hidden` chain gives the layer inputs of the unmodified model).
// Outputs at MoE layers: `quant_loss` F64 [E, len(bits)], `bits` I64 [len(bits)]; nothing at
// dense layers.
class QuantLossStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_QUANT_LOSS_STAGE_H_
