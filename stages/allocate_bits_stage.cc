#include "stages/allocate_bits_stage.h"

#include <ATen/ATen.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "model/config/config.h"
#include "quant/bit_allocation.h"

namespace moec::stages {

using dataplane::GetTensor;
using dataplane::JobModelConfig;
using dataplane::NeededStage;
using dataplane::PutTensor;
using quant::AllocateBits;
using quant::Allocation;
using quant::AllocationOptions;
using quant::LayerFactors;


namespace {

AllocationOptions ReadOptions(const recipe::StageSpec& p) {
  AllocationOptions o;
  o.bits.clear();
  for (int64_t b : p.IntList("bits")) o.bits.push_back(static_cast<int>(b));
  o.average_bits = p.Float("average_bits");
  o.alpha = p.Float("alpha");
  o.beta = p.Float("beta");
  o.gamma = p.Float("gamma");
  o.scope = p.Str("budget") == "model" ? AllocationOptions::Scope::kModel
                                       : AllocationOptions::Scope::kLayer;
  o.granularity = p.Str("granularity") == "layer" ? AllocationOptions::Granularity::kLayer
                                                  : AllocationOptions::Granularity::kExpert;
  return o;
}

// The factors of MoE layer `l`: its experts' token counts and routing mass (stage `calibrate`)
// and their losses at the widths `bits` (stage `quant_loss`, which must have measured those).
absl::StatusOr<LayerFactors> ReadLayerFactors(const StageContext& ctx, const std::string& calibrate,
                                              const std::string& quant_loss,
                                              const std::vector<int>& bits, int l) {
  LayerFactors f;
  f.layer = l;
  MOEC_ASSIGN_OR_RETURN(std::string tokens_key, ctx.InputKey(calibrate, l, outputs::kExpertTokens));
  MOEC_ASSIGN_OR_RETURN(std::string mass_key, ctx.InputKey(calibrate, l, outputs::kRoutingMass));
  MOEC_ASSIGN_OR_RETURN(std::string loss_key, ctx.InputKey(quant_loss, l, outputs::kQuantLoss));
  MOEC_ASSIGN_OR_RETURN(std::string bits_key, ctx.InputKey(quant_loss, l, outputs::kLossBits));
  MOEC_ASSIGN_OR_RETURN(at::Tensor tokens, GetTensor(ctx, tokens_key));
  MOEC_ASSIGN_OR_RETURN(at::Tensor mass, GetTensor(ctx, mass_key));
  MOEC_ASSIGN_OR_RETURN(at::Tensor loss, GetTensor(ctx, loss_key));
  MOEC_ASSIGN_OR_RETURN(at::Tensor loss_bits, GetTensor(ctx, bits_key));
  std::vector<int> measured;
  for (int64_t i = 0; i < loss_bits.size(0); ++i) measured.push_back(loss_bits[i].item<int64_t>());
  if (measured != bits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "allocate_bits widths [", absl::StrJoin(bits, ", "), "] differ from the widths [",
        absl::StrJoin(measured, ", "), "] stage '", quant_loss, "' measured"));
  }
  const int experts = static_cast<int>(tokens.size(0));
  for (int e = 0; e < experts; ++e) {
    f.frequency.push_back(tokens[e].item<int64_t>());
    f.weight.push_back(mass[e].item<double>());
    std::vector<double> q;
    for (size_t b = 0; b < bits.size(); ++b) q.push_back(loss[e][b].item<double>());
    f.loss.push_back(std::move(q));
  }
  return f;
}

}  // namespace

absl::Status AllocateBitsStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(std::string quant_loss, NeededStage(ctx, "quant_loss"));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig config, JobModelConfig(ctx));
  const AllocationOptions o = ReadOptions(*ctx.stage);
  std::vector<LayerFactors> factors;
  int max_experts = 0;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    if (!config.IsMoeLayer(l) || config.NumRoutedExperts(l) == 0) continue;
    MOEC_ASSIGN_OR_RETURN(LayerFactors f, ReadLayerFactors(ctx, calibrate, quant_loss, o.bits, l));
    max_experts = std::max(max_experts, static_cast<int>(f.frequency.size()));
    factors.push_back(std::move(f));
  }
  if (factors.empty()) return absl::FailedPreconditionError("the model has no routed experts");
  MOEC_ASSIGN_OR_RETURN(Allocation a, AllocateBits(factors, o));
  at::Tensor bits = at::full({config.num_hidden_layers, max_experts}, -1, at::kLong);
  for (size_t i = 0; i < factors.size(); ++i) {
    for (size_t e = 0; e < a.bits[i].size(); ++e) bits[factors[i].layer][e] = a.bits[i][e];
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kExpertBits, bits));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kObjective, at::full({1}, a.objective, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kAverageBits, at::full({1}, a.average_bits, at::kDouble)));
  ctx.progress(1.0, absl::StrCat("average ", a.average_bits, " bits",
                                 a.proven_optimal ? " (optimal)" : " (time limit)"));
  return absl::OkStatus();
}

}  // namespace moec::stages
