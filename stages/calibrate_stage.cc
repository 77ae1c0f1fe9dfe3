#include "stages/calibrate_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "stages/model_inputs.h"

namespace moec::stages {
namespace {

// Accumulates router statistics of one layer over batches.
class RouterStats : public model::ForwardObserver {
 public:
  RouterStats(int experts, int top_k) : top_k_(top_k) {
    counts_ = at::zeros({experts}, at::kLong);
    mass_ = at::zeros({experts}, at::kDouble);
  }
  void OnRouterLogits(int layer, const at::Tensor& logits) override {
    at::Tensor p = at::softmax(logits.to(at::kDouble), -1);
    auto [top_p, top_i] = p.topk(top_k_, -1);
    counts_.index_add_(0, top_i.reshape(-1), at::ones({top_i.numel()}, at::kLong));
    mass_.index_add_(0, top_i.reshape(-1), top_p.reshape(-1));
    if (p.size(1) >= 2) {
      at::Tensor two = std::get<0>(p.topk(2, -1));
      ratios_.push_back((two.select(1, 1) / two.select(1, 0)).to(at::kFloat));
    }
    entropy_sum_ += (-(p * at::log(p.clamp_min(1e-300))).sum(-1)).sum().item<double>();
    tokens_ += logits.size(0);
  }

  at::Tensor counts() const { return counts_; }
  at::Tensor mass() const { return mass_; }
  int64_t tokens() const { return tokens_; }
  double median_ratio() const {
    if (ratios_.empty()) return 0.0;
    // Lower median, as torch.median returns.
    return at::cat(ratios_).median().item<double>();
  }
  double normalized_entropy() const {
    const double experts = static_cast<double>(counts_.size(0));
    return tokens_ > 0 && experts > 1 ? entropy_sum_ / tokens_ / std::log(experts) : 0.0;
  }

 private:
  const int top_k_;
  at::Tensor counts_, mass_;
  std::vector<at::Tensor> ratios_;
  double entropy_sum_ = 0;
  int64_t tokens_ = 0;
};

}  // namespace

absl::Status CalibrateStage::Run(StageContext& ctx) {
  // Until the expert-parallel data plane (issue #5) shards a layer between the ranks of a gang,
  // rank 0 computes the whole layer and the other ranks have nothing to do.
  if (ctx.rank != 0) return absl::OkStatus();
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  if (layer < 0 || layer >= config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("calibrate: layer ", layer, " out of range"));
  }
  MOEC_ASSIGN_OR_RETURN(at::Tensor hidden, LayerInput(ctx, *runner));
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights weights, runner->LoadLayer(layer));
  const bool moe = weights.moe.has_value() && config.NumRoutedExperts(layer) > 0;
  RouterStats stats(moe ? config.NumRoutedExperts(layer) : 1,
                    moe ? config.NumActiveExperts(layer) : 1);
  const int64_t batch = ctx.params.value("batch_size", int64_t{8});
  const int64_t n = hidden.size(0);
  std::vector<at::Tensor> outputs;
  for (int64_t start = 0; start < n; start += batch) {
    if (ctx.IsCancelled()) return absl::CancelledError("calibrate cancelled");
    const int64_t count = std::min(batch, n - start);
    outputs.push_back(runner->RunLayer(weights, hidden.narrow(0, start, count),
                                       moe ? &stats : nullptr));
    ctx.progress(static_cast<double>(start + count) / n,
                 absl::StrCat("layer ", layer, ": ", start + count, "/", n, " windows"));
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "hidden", at::cat(outputs, 0)));
  if (moe) {
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, "expert_tokens", stats.counts()));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, "routing_mass", stats.mass()));
    MOEC_RETURN_IF_ERROR(
        PutTensor(ctx, "p2_p1_median", at::full({1}, stats.median_ratio(), at::kDouble)));
    MOEC_RETURN_IF_ERROR(
        PutTensor(ctx, "router_entropy", at::full({1}, stats.normalized_entropy(), at::kDouble)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, "tokens", at::full({1}, stats.tokens(), at::kLong)));
  }
  return absl::OkStatus();
}

}  // namespace moec::stages
