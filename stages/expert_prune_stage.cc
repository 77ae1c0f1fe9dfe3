#include "stages/expert_prune_stage.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "stages/expert_parallel.h"
#include "stages/model_inputs.h"

namespace moec::stages {
namespace {

// C(n, k), or limit + 1 when it exceeds limit.
int64_t Choose(int n, int k, int64_t limit) {
  k = std::min(k, n - k);
  double c = 1;
  for (int i = 1; i <= k; ++i) {
    c = c * (n - k + i) / i;
    if (c > static_cast<double>(limit)) return limit + 1;
  }
  return static_cast<int64_t>(c + 0.5);
}

// Captures the MoE block's input and output.
struct MoeCapture : model::ForwardObserver {
  void OnMoeInput(int, const at::Tensor& x) override { input = x.clone(); }
  void OnMoeOutput(int, const at::Tensor& y) override { output = y.clone(); }
  at::Tensor input, output;
};

}  // namespace

at::Tensor MaskedBlockOutput(const PruneBatch& b, const at::Tensor& router,
                             const model::RoutingRule& rule, const std::vector<int>& kept,
                             int64_t seq) {
  model::RoutingRule r = rule;
  r.top_k = std::min<int>(rule.top_k, static_cast<int>(kept.size()));
  const at::Tensor ids = at::tensor(std::vector<int64_t>(kept.begin(), kept.end()), at::kLong);
  model::Routing routing = model::Route(router.index_select(0, ids), b.x, r, at::Tensor(), seq);
  const int64_t tokens = b.x.size(0), k = routing.experts.size(1);
  const at::Tensor experts = ids.index_select(0, routing.experts.reshape(-1)).reshape({tokens, k});
  const at::Tensor token = at::arange(tokens, at::kLong).unsqueeze(1).expand({tokens, k});
  const at::Tensor picked = b.y.index({experts, token});  // [tokens, k, hidden]
  at::Tensor out = (picked * routing.weights.to(picked.scalar_type()).unsqueeze(-1)).sum(1);
  if (b.shared.defined()) out = out + b.shared;
  return out;
}

absl::StatusOr<SubsetSearchResult> SearchExpertSubset(const std::vector<PruneBatch>& batches,
                                                      const at::Tensor& router,
                                                      const model::RoutingRule& rule, int keep,
                                                      int64_t exhaustive_limit, int64_t seq) {
  const int experts = static_cast<int>(router.size(0));
  if (keep < 1 || keep > experts) {
    return absl::InvalidArgumentError(absl::StrCat("keep ", keep, " of ", experts, " experts"));
  }
  auto loss = [&](const std::vector<int>& kept) {
    double sum = 0;
    for (const PruneBatch& b : batches) {
      sum += (b.z - MaskedBlockOutput(b, router, rule, kept, seq)).to(at::kDouble).norm().item<double>();
    }
    return sum;
  };
  SubsetSearchResult result;
  result.loss = std::numeric_limits<double>::infinity();
  const int drop = experts - keep;
  if (Choose(experts, drop, exhaustive_limit) <= exhaustive_limit) {
    // Drop sets in lexicographic order, as itertools.combinations enumerates them.
    std::vector<int> d(drop);
    std::iota(d.begin(), d.end(), 0);
    while (true) {
      std::vector<int> kept;
      for (int e = 0, j = 0; e < experts; ++e) {
        if (j < drop && d[j] == e) ++j;
        else kept.push_back(e);
      }
      const double l = loss(kept);
      result.losses.push_back(l);
      if (l < result.loss) {
        result.loss = l;
        result.kept = kept;
      }
      int i = drop - 1;
      while (i >= 0 && d[i] == experts - drop + i) --i;
      if (i < 0) break;
      ++d[i];
      for (int j = i + 1; j < drop; ++j) d[j] = d[j - 1] + 1;
    }
    return result;
  }
  // Greedy: remove, one at a time, the expert whose removal costs least.
  result.exhaustive = false;
  std::vector<int> current(experts);
  std::iota(current.begin(), current.end(), 0);
  while (static_cast<int>(current.size()) > keep) {
    double best = std::numeric_limits<double>::infinity();
    size_t best_i = 0;
    for (size_t i = 0; i < current.size(); ++i) {
      std::vector<int> candidate = current;
      candidate.erase(candidate.begin() + i);
      const double l = loss(candidate);
      result.losses.push_back(l);
      if (l < best) {
        best = l;
        best_i = i;
      }
    }
    current.erase(current.begin() + best_i);
    result.loss = best;
  }
  result.kept = current;
  return result;
}

absl::Status ExpertPruneStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();  // docs/stages.md: not on the data plane yet
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  const nlohmann::json& keep_param = ctx.params.value("keep", nlohmann::json());
  if (!keep_param.is_number_integer()) {
    return absl::InvalidArgumentError("expert_prune needs parameter 'keep'");
  }
  const int keep = keep_param.get<int>();
  const bool progressive = ctx.params.value("mode", "layerwise") == "progressive";
  const int64_t limit = ctx.params.value("exhaustive_limit", int64_t{100000});
  const int64_t batch = ctx.params.value("batch_size", int64_t{8});
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  at::Tensor original;  // the unmodified model's residual stream entering the layer
  if (layer == 0) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor tokens, CalibrationTokens(ctx));
    MOEC_ASSIGN_OR_RETURN(original, runner->Embed(tokens));
  } else {
    MOEC_ASSIGN_OR_RETURN(original, ReadChunkedOutput(ctx, calibrate, layer - 1, "hidden"));
  }
  at::Tensor input = original;
  if (progressive && layer > 0) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.PreviousLayerKey("hidden"));
    MOEC_ASSIGN_OR_RETURN(input, GetTensor(ctx, key));
  }
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w, runner->LoadLayer(layer));
  const int experts = config.IsMoeLayer(layer) ? config.NumRoutedExperts(layer) : 0;
  const model::RoutingRule rule = model::RoutingRuleFor(config, layer);
  const int64_t n = input.size(0), seq = input.size(1);
  auto write_hidden = [&](const model::LayerWeights& weights) -> absl::Status {
    if (!progressive) return absl::OkStatus();
    std::vector<at::Tensor> out;
    for (int64_t s = 0; s < n; s += batch) {
      out.push_back(runner->RunLayer(weights, input.narrow(0, s, std::min(batch, n - s))));
    }
    return PutTensor(ctx, "hidden", at::cat(out, 0));
  };
  if (experts == 0 || !w.moe || !w.moe->router.defined()) return write_hidden(w);
  if (progressive && keep < rule.top_k) {
    return absl::InvalidArgumentError(absl::StrCat("progressive expert_prune needs keep >= ",
                                                   rule.top_k, " (experts per token)"));
  }
  const model::MoeWeights& moe = *w.moe;
  std::vector<PruneBatch> batches;
  for (int64_t s = 0; s < n; s += batch) {
    if (ctx.IsCancelled()) return absl::CancelledError("expert_prune cancelled");
    const int64_t count = std::min(batch, n - s);
    MoeCapture target;
    runner->RunLayer(w, original.narrow(0, s, count), &target);
    PruneBatch b;
    b.z = target.output;
    b.x = target.input;
    if (progressive) {
      MoeCapture pruned_chain;
      runner->RunLayer(w, input.narrow(0, s, count), &pruned_chain);
      b.x = pruned_chain.input;
    }
    std::vector<at::Tensor> ys;
    for (int e = 0; e < experts; ++e) {
      ys.push_back(model::Mlp(moe.experts[e], b.x, layer, model::LinearKind::kExpertGate, e, nullptr));
    }
    b.y = at::stack(ys);
    if (moe.shared.defined()) {
      b.shared = model::Mlp(moe.shared, b.x, layer, model::LinearKind::kSharedGate, -1, nullptr);
      if (moe.shared_expert_gate.defined()) {
        b.shared = at::sigmoid(at::linear(b.x, moe.shared_expert_gate)) * b.shared;
      }
    }
    batches.push_back(std::move(b));
    ctx.progress(0.5 * (s + count) / n, absl::StrCat("layer ", layer, ": expert outputs"));
  }
  MOEC_ASSIGN_OR_RETURN(SubsetSearchResult r,
                        SearchExpertSubset(batches, moe.router, rule, std::min(keep, experts),
                                           limit, seq));
  MOEC_RETURN_IF_ERROR(PutTensor(
      ctx, "kept_experts", at::tensor(std::vector<int64_t>(r.kept.begin(), r.kept.end()), at::kLong)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "losses", at::tensor(r.losses, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "loss", at::full({1}, r.loss, at::kDouble)));
  model::LayerWeights pruned = w;
  const at::Tensor ids = at::tensor(std::vector<int64_t>(r.kept.begin(), r.kept.end()), at::kLong);
  pruned.moe->router = moe.router.index_select(0, ids);
  pruned.moe->experts.clear();
  for (int e : r.kept) pruned.moe->experts.push_back(moe.experts[e]);
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": kept ", r.kept.size(), " of ", experts,
                                 r.exhaustive ? " (exhaustive)" : " (greedy)"));
  return write_hidden(pruned);
}

}  // namespace moec::stages
