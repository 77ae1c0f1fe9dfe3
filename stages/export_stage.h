// `export` (global): writes the job's result as a Hugging Face model directory at the recipe's
// `output`. Format `hf`: the original weights byte for byte (safetensors files copied) with the
// per-layer results of the stages it needs written into config.json's "moec" object
// (dynamic_skip -> moec.skip_beta). Quantized formats (gptq, hqq, fake_quant) come with the
// quantization stages (issue #6) and are refused with Unimplemented until then.
//
// The directory is assembled in "<output>.tmp-<task fingerprint prefix>" and renamed into place;
// an existing `output` is replaced only when its moec_export.json names this job's output (a
// re-run after a crash); anything else there is FailedPrecondition, so nothing of the user's is
// overwritten.
#ifndef MOEC_STAGES_EXPORT_STAGE_H_
#define MOEC_STAGES_EXPORT_STAGE_H_

#include "stages/stage.h"

namespace moec::stages {

class ExportStage : public Stage {
 public:
  absl::Status Run(StageContext& ctx) override;
};

}  // namespace moec::stages

#endif  // MOEC_STAGES_EXPORT_STAGE_H_
