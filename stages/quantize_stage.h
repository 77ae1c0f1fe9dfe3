// `gptq` and `rtn` (per layer): quantize every linear of a decoder layer — routed experts at the
// widths of an `allocate_bits` stage the stage needs (else `bits`), attention at `attn_bits`,
// shared experts and dense MLPs at `shared_bits` (rtn: `bits`), the router only when
// `router_bits` > 0 — with GPTQ (quant/gptq.h; Hessians from the layer's real inputs) or
// round-to-nearest. The layer's inputs come from this stage's own chain, i.e. from the already
// quantized layers before it (ALGORITHMS.md 2.1, 3.3), and its quantized output becomes the next
// layer's input. Expert-parallel over the task's gang (stages/expert_parallel.h): each routed
// expert is quantized by its owner rank, the other linears round-robin over the ranks (their
// Hessians reduced in chunk order), so the outputs are the same bytes for every gang size.
//
// Outputs of layer l's task, for every quantized linear with Hugging Face name N:
//   N.q U8 [out, in]   integer codes        N.scales F32 [out, groups]   N.zeros F32 [out, groups]
//   N.g_idx I32 [in]   group of each column N.bits I64 [1]
// plus `hidden.cNNNNN` F32 [<= 8, seqlen, hidden] per chunk of 8 calibration windows (the quantized
// layer's output, written by the chunk's rank), `windows` I64 [1] and `summary` U8 (JSON: per
// linear its width, GPTQ loss, calibration tokens and whether it fell back to RTN).
#ifndef MOEC_STAGES_QUANTIZE_STAGE_H_
#define MOEC_STAGES_QUANTIZE_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class QuantizeStage : public Stage {
 public:
  explicit QuantizeStage(bool gptq) : gptq_(gptq) {}
  absl::Status Run(StageContext& ctx) override;

 private:
  const bool gptq_;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_QUANTIZE_STAGE_H_
