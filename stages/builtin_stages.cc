#include "stages/builtin_stages.h"

#include "stages/allocate_bits_stage.h"
#include "stages/calibrate_stage.h"
#include "stages/dynamic_skip_stage.h"
#include "stages/evaluate_stage.h"
#include "stages/expert_prune_stage.h"
#include "stages/export_stage.h"
#include "stages/noop_stage.h"
#include "stages/odp_stage.h"
#include "stages/prune_weights_stage.h"
#include "stages/quant_loss_stage.h"
#include "stages/quantize_stage.h"
#include "stages/restructure_stage.h"
#include "stages/structural_stages.h"

namespace moec::stages {

void RegisterBuiltinStages(StageRegistry* registry) {
  registry->Register("noop", [] { return std::make_unique<NoopStage>(); });
  registry->Register("calibrate", [] { return std::make_unique<CalibrateStage>(); });
  registry->Register("quant_loss", [] { return std::make_unique<QuantLossStage>(); });
  registry->Register("evaluate", [] { return std::make_unique<EvaluateStage>(); });
  registry->Register("dynamic_skip", [] { return std::make_unique<DynamicSkipStage>(); });
  registry->Register("export", [] { return std::make_unique<ExportStage>(); });
  registry->Register("allocate_bits", [] { return std::make_unique<AllocateBitsStage>(); });
  registry->Register("gptq", [] { return std::make_unique<QuantizeStage>(/*gptq=*/true); });
  registry->Register("rtn", [] { return std::make_unique<QuantizeStage>(/*gptq=*/false); });
  registry->Register("expert_drop", [] { return std::make_unique<ExpertDropStage>(); });
  registry->Register("expert_prune", [] { return std::make_unique<ExpertPruneStage>(); });
  registry->Register("prune_weights", [] { return std::make_unique<PruneWeightsStage>(); });
  registry->Register("odp", [] { return std::make_unique<OdpStage>(); });
  registry->Register("layer_drop", [] { return std::make_unique<LayerDropStage>(); });
  registry->Register("block_drop", [] { return std::make_unique<BlockDropStage>(); });
  registry->Register("restructure", [] { return std::make_unique<RestructureStage>(); });
}

}  // namespace moec::stages
