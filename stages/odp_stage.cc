#include "stages/odp_stage.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "model/runtime/layers.h"

namespace moec::stages {

using dataplane::CalibrationTokens;
using dataplane::GetTensor;
using dataplane::NeededStage;
using dataplane::OpenJobModel;
using dataplane::PutTensor;
using dataplane::ReadChunkedOutput;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Counts the rows routed to experts (inputs of every expert's gate projection).
struct RoutedRows : model::ForwardObserver {
  bool WantsLinearInputs(int) const override { return true; }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
    if (id.kind == model::LinearKind::kExpertGate) rows += x.size(0);
  }
  int64_t rows = 0;
};

// What ODP changes in one MoE layer: the summed norm of its MoE output's change and the fraction
// of routed rows it skips.
struct OdpEffect {
  double loss = 0;
  double skipped = 0;
};

// ODP's effect in MoE layer `l` (β `beta`), on the layer's input `input` in batches of 8 windows.
absl::StatusOr<OdpEffect> MeasureLayer(const model::ModelRunner& runner, int l,
                                       const at::Tensor& input, double beta, double protect,
                                       bool positional) {
  const model::ModelConfig& c = runner.config();
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w, runner.LoadLayer(l));
  const model::RoutingRule plain = model::RoutingRuleFor(c, l);
  model::RoutingRule odp = plain;
  odp.odp = true;
  odp.odp_beta = beta;
  odp.tau_low = 0;
  odp.tau_high = protect;
  odp.positional_prior = positional;
  const int64_t seq = input.size(1);
  const model::RopeTables rope = runner.Rope(seq);  // on the runner's device
  double sum = 0;
  int64_t rows_plain = 0, rows_odp = 0;
  for (int64_t s = 0; s < input.size(0); s += 8) {
    const at::Tensor h =
        input.narrow(0, s, std::min<int64_t>(8, input.size(0) - s)).to(runner.device());
    model::AttentionOutput a = model::Attention(
        c, l, w.attention, model::RmsNorm(h, w.input_norm, c.rms_norm_eps), rope,
        /*want_column_statistic=*/!positional, nullptr);
    const at::Tensor mid = (h + a.output).reshape({-1, c.hidden_size});
    const at::Tensor x = model::RmsNorm(mid, w.post_norm, c.rms_norm_eps);
    RoutedRows count_plain, count_odp;
    const at::Tensor z = model::MoeBlock(c, l, *w.moe, plain, x, seq, {}, &count_plain);
    const at::Tensor zo = model::MoeBlock(c, l, *w.moe, odp, x, seq, a.column_statistic, &count_odp);
    sum += (z - zo).to(at::kDouble).norm().item<double>();
    rows_plain += count_plain.rows;
    rows_odp += count_odp.rows;
  }
  OdpEffect effect;
  effect.loss = sum;
  effect.skipped = rows_plain > 0 ? 1.0 - static_cast<double>(rows_odp) / rows_plain : 0.0;
  return effect;
}

// The layers ODP is enabled in, ascending: the `fraction` of `moe_layers` (at least one) where
// its loss is least.
std::vector<int64_t> EnabledLayers(const std::vector<int>& moe_layers,
                                   const std::vector<double>& loss, double fraction) {
  std::vector<int> order = moe_layers;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return loss[a] < loss[b]; });
  const size_t enable = order.empty() ? 0
                                      : std::clamp<size_t>(static_cast<size_t>(std::llround(
                                                               fraction * order.size())),
                                                           1, order.size());
  std::vector<int64_t> enabled(order.begin(), order.begin() + enable);
  std::sort(enabled.begin(), enabled.end());
  return enabled;
}

}  // namespace

absl::Status OdpStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& c = runner->config();
  const double protect = ctx.stage->Float("protect_fraction");
  const bool positional = ctx.stage->Bool("odp_positional_prior");
  const double fraction = ctx.stage->Float("enable_fraction");
  const int layers = c.num_hidden_layers;
  std::vector<double> beta(layers, kNaN), loss(layers, kNaN), skipped(layers, kNaN);
  MOEC_ASSIGN_OR_RETURN(at::Tensor tokens, CalibrationTokens(ctx));
  std::vector<int> moe_layers;
  for (int l = 0; l < layers; ++l) {
    if (ctx.IsCancelled()) return absl::CancelledError("odp cancelled");
    if (!c.IsMoeLayer(l) || c.NumActiveExperts(l) < 2) continue;
    moe_layers.push_back(l);
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(calibrate, l, outputs::kP2P1Median));
    MOEC_ASSIGN_OR_RETURN(at::Tensor median, GetTensor(ctx, key));
    beta[l] = median.item<double>();
    at::Tensor input;
    if (l == 0) {
      MOEC_ASSIGN_OR_RETURN(input, runner->Embed(tokens));
    } else {
      MOEC_ASSIGN_OR_RETURN(input, ReadChunkedOutput(ctx, calibrate, l - 1, outputs::kHidden));
    }
    MOEC_ASSIGN_OR_RETURN(OdpEffect effect,
                          MeasureLayer(*runner, l, input, beta[l], protect, positional));
    loss[l] = effect.loss;
    skipped[l] = effect.skipped;
    ctx.progress(static_cast<double>(l + 1) / layers, absl::StrCat("layer ", l));
  }
  const std::vector<int64_t> enabled = EnabledLayers(moe_layers, loss, fraction);
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kOdpBeta, at::tensor(beta, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kOdpLoss, at::tensor(loss, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kOdpSkipped, at::tensor(skipped, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kEnabledLayers, at::tensor(enabled, at::kLong)));
  MOEC_RETURN_IF_ERROR(PutTensor(
      ctx, outputs::kOdpSettings, at::tensor(std::vector<double>{0.0, protect, positional ? 1.0 : 0.0}, at::kDouble)));
  ctx.progress(1.0, absl::StrCat("ODP enabled in ", enabled.size(), " of ", moe_layers.size(),
                                 " MoE layers"));
  return absl::OkStatus();
}

}  // namespace moec::stages
