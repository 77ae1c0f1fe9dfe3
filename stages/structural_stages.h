// Global structural decisions of Unified-MoE-Compression (ALGORITHMS.md 2.2–2.4), each computed
// from the `calibrate` stage it needs (router statistics and the hidden-state chain of the
// unmodified model). They only decide; `export` applies the decisions (structural_export.h).
//
// `expert_drop`: score per expert = summed full-softmax probability (Mixtral/Qwen/OLMoE; the
//   `softmax_mass` of calibrate) or summed top-k gate weight (DeepSeek; `routing_mass`), divided
//   by the calibration windows (the reference's running mean over samples). `layerwise` keeps the
//   `keep` highest-scoring experts of every MoE layer; `global` drops the
//   round((mean E − keep) · MoE layers) globally lowest scores (uneven counts, possibly 0 in a
//   layer); `random: true` replaces the scores by seeded uniform noise (the random baseline).
//   Shared experts and dense layers are never touched. Outputs `kept_mask` U8 [layers, E]
//   (1 = kept; 0 rows at non-MoE layers), `scores` F64 [layers, E] (NaN at non-MoE layers).
// `layer_drop`: s_l = mean over calibration tokens of cos(h, h + MoE(norm(h))), h the residual
//   stream after attention; drops the `drop` MoE layers with the highest s. Outputs
//   `dropped_moe_layers` I64 [n] ascending, `similarity` F64 [layers] (NaN at non-MoE layers).
// `block_drop`: `discrete` drops the `drop` layers with the highest cos(h_l, h_{l+1});
//   `consecutive` the window l..l+n−1 with the highest cos(h_l, h_{l+n}) — the window that is
//   removed (decision 9). Outputs `dropped_layers` I64 [n] ascending, `similarity` F64 [layers]
//   (discrete) or [layers − n + 1] (consecutive, by window start).
#ifndef MOEC_STAGES_STRUCTURAL_STAGES_H_
#define MOEC_STAGES_STRUCTURAL_STAGES_H_

#include "stages/stage.h"

namespace moec::stages {

class ExpertDropStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

class LayerDropStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

class BlockDropStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_STRUCTURAL_STAGES_H_
