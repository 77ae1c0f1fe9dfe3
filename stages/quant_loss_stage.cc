#include "stages/quant_loss_stage.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "stages/model_inputs.h"

namespace moec::stages {
namespace {

// Captures the MoE block's input and output (and routing) of one batch.
class MoeCapture : public model::ForwardObserver {
 public:
  void OnMoeInput(int layer, const at::Tensor& x) override { input = x.clone(); }
  void OnMoeOutput(int layer, const at::Tensor& y) override { output = y.clone(); }
  at::Tensor input, output;
};

}  // namespace

at::Tensor NormalQuantize(const at::Tensor& w, int bits, int64_t group_size) {
  const int64_t in = w.size(1);
  const int64_t block = group_size > 0 ? group_size : in;
  std::vector<at::Tensor> blocks;
  for (int64_t c = 0; c < in; c += block) {
    at::Tensor x = w.narrow(1, c, std::min(block, in - c)).to(at::kFloat);
    if (bits == 1) {
      at::Tensor scale = x.abs().mean(1, /*keepdim=*/true);
      at::Tensor sign = at::where(x >= 0, at::ones_like(x), -at::ones_like(x));
      blocks.push_back(sign * scale);
      continue;
    }
    const double maxq = std::pow(2.0, bits) - 1;
    at::Tensor xmin = std::get<0>(x.min(1, true)).clamp_max(0);
    at::Tensor xmax = std::get<0>(x.max(1, true)).clamp_min(0);
    at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
    xmin = at::where(both_zero, -at::ones_like(xmin), xmin);
    xmax = at::where(both_zero, at::ones_like(xmax), xmax);
    at::Tensor s = (xmax - xmin) / maxq;
    at::Tensor z = at::round(-xmin / s);
    at::Tensor q = at::clamp(at::round(x / s) + z, 0, maxq);
    blocks.push_back(s * (q - z));
  }
  return (blocks.size() == 1 ? blocks[0] : at::cat(blocks, 1)).to(w.scalar_type());
}

absl::Status QuantLossStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();  // see docs/stages.md (until issue #5)
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  if (!config.IsMoeLayer(layer) || config.NumRoutedExperts(layer) == 0) {
    ctx.progress(1.0, "no routed experts");
    return absl::OkStatus();
  }
  const std::vector<int> bits = ctx.params.value("bits", std::vector<int>{1, 2, 3});
  const int64_t group_size = ctx.params.value("group_size", int64_t{128});
  const int64_t batch = ctx.params.value("batch_size", int64_t{8});
  MOEC_ASSIGN_OR_RETURN(at::Tensor hidden, LayerInputFrom(ctx, *runner, calibrate));
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights weights, runner->LoadLayer(layer));
  const model::MoeWeights& moe = *weights.moe;
  const model::RoutingRule rule = model::RoutingRuleFor(config, layer);
  const int experts = static_cast<int>(moe.experts.size());
  const int64_t seq = hidden.size(1);

  // One pass of the unmodified layer per batch: the MoE input X_b and output Z_b. Only the tokens
  // routed to expert e change when e is quantized (the router and the other experts do not), so
  // Z_b - Ẑ_b is non-zero on those rows only and equals w_te (E_e(x_t) - Ê_e(x_t)) there; the
  // loss is computed from them (stages_test checks it against recomputing the whole block).
  struct Batch {
    at::Tensor x;        // MoE input [tokens, hidden]
    at::Tensor experts;  // selected experts [tokens, k]
    at::Tensor weights;  // their routing weights [tokens, k]
  };
  std::vector<Batch> batches;
  for (int64_t start = 0; start < hidden.size(0); start += batch) {
    const int64_t count = std::min(batch, hidden.size(0) - start);
    MoeCapture capture;
    runner->RunLayer(weights, hidden.narrow(0, start, count), &capture);
    // Routing as the block did it (same function, same inputs).
    at::Tensor importance;
    model::Routing r = model::Route(moe.router, capture.input, rule, importance, seq);
    batches.push_back({capture.input, r.experts.masked_fill(r.kept.logical_not(), -1), r.weights});
  }
  at::Tensor loss = at::zeros({experts, static_cast<int64_t>(bits.size())}, at::kDouble);
  const int64_t total = static_cast<int64_t>(experts) * bits.size();
  for (int e = 0; e < experts; ++e) {
    const model::MlpWeights& original = moe.experts[e];
    for (size_t bi = 0; bi < bits.size(); ++bi) {
      if (ctx.IsCancelled()) return absl::CancelledError("quant_loss cancelled");
      model::MlpWeights quantized{NormalQuantize(original.gate, bits[bi], group_size),
                                  NormalQuantize(original.up, bits[bi], group_size),
                                  NormalQuantize(original.down, bits[bi], group_size)};
      double sum = 0;
      for (const Batch& b : batches) {
        at::Tensor slot = (b.experts == e);  // [tokens, k]
        at::Tensor rows = slot.any(1).nonzero().squeeze(1);
        if (rows.numel() == 0) continue;
        at::Tensor x = b.x.index_select(0, rows);
        at::Tensor w = (b.weights.index_select(0, rows) * slot.index_select(0, rows))
                           .sum(1, /*keepdim=*/true);
        at::Tensor y = model::Mlp(original, x, layer, model::LinearKind::kExpertGate, e, nullptr);
        at::Tensor yq = model::Mlp(quantized, x, layer, model::LinearKind::kExpertGate, e, nullptr);
        sum += ((y - yq) * w).to(at::kDouble).norm().item<double>();
      }
      loss[e][bi] = sum;
      ctx.progress(static_cast<double>(e * bits.size() + bi + 1) / total,
                   absl::StrCat("layer ", layer, ": expert ", e, " at ", bits[bi], " bits"));
    }
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "quant_loss", loss));
  std::vector<int64_t> bits64(bits.begin(), bits.end());
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "bits", at::tensor(bits64, at::kLong)));
  return absl::OkStatus();
}

}  // namespace moec::stages
