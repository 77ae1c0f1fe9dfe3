#include "stages/dynamic_skip_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "model/config/config.h"

namespace moec::stages {

using dataplane::GetTensor;
using dataplane::JobModelConfig;
using dataplane::NeededStage;
using dataplane::PutTensor;


absl::Status DynamicSkipStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig config, JobModelConfig(ctx));
  const int layers = config.num_hidden_layers;
  at::Tensor beta = at::full({layers}, std::numeric_limits<double>::quiet_NaN(), at::kDouble);
  for (int l = 0; l < layers; ++l) {
    if (!config.IsMoeLayer(l) || config.NumActiveExperts(l) < 2) continue;
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(calibrate, l, outputs::kP2P1Median));
    MOEC_ASSIGN_OR_RETURN(at::Tensor median, GetTensor(ctx, key));
    beta[l] = median.item<double>();
    ctx.progress(static_cast<double>(l + 1) / layers, absl::StrCat("layer ", l));
  }
  return PutTensor(ctx, outputs::kSkipBeta, beta);
}

}  // namespace moec::stages
