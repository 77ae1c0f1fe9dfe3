#include "stages/prune_weights_stage.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tensor_names.h"
#include "quant/gptq.h"
#include "quant/sparse.h"
#include "stages/expert_parallel.h"
#include "stages/model_inputs.h"

namespace moec::stages {
namespace {

using model::LinearKind;

struct Target {
  std::string name;
  at::Tensor* weight = nullptr;
  at::Tensor norm2;  // Wanda: mean over calls of Σ_tokens x², [in]
  int64_t calls = 0;
  std::unique_ptr<quant::HessianAccumulator> hessian;  // SparseGPT
};

class StatsCollector : public model::ForwardObserver {
 public:
  explicit StatsCollector(std::map<std::pair<LinearKind, int>, Target*>* targets)
      : targets_(targets) {}
  bool WantsLinearInputs(int) const override { return true; }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
    auto it = targets_->find({id.kind, id.expert});
    if (it == targets_->end()) return;
    Target& t = *it->second;
    const at::Tensor f = x.reshape({-1, x.size(-1)}).to(at::kFloat);
    if (t.hessian) {
      absl::Status s = t.hessian->Add(f, 1);
      if (!s.ok() && status_.ok()) status_ = s;
      return;
    }
    // Running mean over calls, as the reference's add_batch with one sample per call.
    const at::Tensor sq = f.pow(2).sum(0);
    t.norm2 = t.calls == 0 ? sq : t.norm2 * (static_cast<double>(t.calls) / (t.calls + 1)) +
                                      sq / static_cast<double>(t.calls + 1);
    ++t.calls;
  }
  const absl::Status& status() const { return status_; }

 private:
  std::map<std::pair<LinearKind, int>, Target*>* targets_;
  absl::Status status_;
};

absl::StatusOr<quant::SparsityPattern> ParsePattern(const std::string& p) {
  if (p == "unstructured") return quant::SparsityPattern{};
  if (p == "2:4") return quant::SparsityPattern{2, 4};
  if (p == "4:8") return quant::SparsityPattern{4, 8};
  return absl::InvalidArgumentError(absl::StrCat("unknown sparsity pattern '", p, "'"));
}

}  // namespace

absl::Status PruneWeightsStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();  // docs/stages.md: not on the data plane yet
  const int layer = ctx.task->layer();
  const std::string method = ctx.params.value("method", "wanda");
  const double ratio = ctx.params.value("sparsity", 0.5);
  MOEC_ASSIGN_OR_RETURN(quant::SparsityPattern pattern,
                        ParsePattern(ctx.params.value("pattern", "unstructured")));
  const bool shared = ctx.params.value("shared_experts", false);
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& c = runner->config();
  at::Tensor input;
  if (layer == 0) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor tokens, CalibrationTokens(ctx));
    MOEC_ASSIGN_OR_RETURN(input, runner->Embed(tokens));
  } else {
    MOEC_ASSIGN_OR_RETURN(input, ReadChunkedOutput(ctx, ctx.task->stage_id(), layer - 1, "hidden"));
  }
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w, runner->LoadLayer(layer));
  std::vector<std::unique_ptr<Target>> targets;
  std::map<std::pair<LinearKind, int>, Target*> by_id;
  auto add = [&](std::string name, at::Tensor* weight, LinearKind kind, int expert) {
    if (weight == nullptr || !weight->defined() || weight->numel() == 0) return;
    auto t = std::make_unique<Target>();
    t->name = std::move(name);
    t->weight = weight;
    if (method == "sparsegpt") t->hessian = std::make_unique<quant::HessianAccumulator>(weight->size(1));
    by_id[{kind, expert}] = t.get();
    targets.push_back(std::move(t));
  };
  if (w.moe.has_value()) {
    model::MoeWeights& m = *w.moe;
    for (int e = 0; e < static_cast<int>(m.experts.size()); ++e) {
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kGate), &m.experts[e].gate,
          LinearKind::kExpertGate, e);
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kUp), &m.experts[e].up,
          LinearKind::kExpertUp, e);
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kDown), &m.experts[e].down,
          LinearKind::kExpertDown, e);
    }
    if (shared && m.shared.defined()) {
      const std::vector<std::string> names = model::SharedExpertTensorNames(c, layer);
      add(names[0], &m.shared.gate, LinearKind::kSharedGate, -1);
      add(names[1], &m.shared.up, LinearKind::kSharedUp, -1);
      add(names[2], &m.shared.down, LinearKind::kSharedDown, -1);
    }
  }
  const int64_t batch = 8, n = input.size(0);
  if (method != "magnitude" && !targets.empty()) {
    StatsCollector collector(&by_id);
    for (int64_t s = 0; s < n; s += batch) {
      if (ctx.IsCancelled()) return absl::CancelledError("prune_weights cancelled");
      runner->RunLayer(w, input.narrow(0, s, std::min(batch, n - s)), &collector);
    }
    MOEC_RETURN_IF_ERROR(collector.status());
  }
  nlohmann::json summary = nlohmann::json::object();
  for (size_t i = 0; i < targets.size(); ++i) {
    Target& t = *targets[i];
    const at::Tensor original = t.weight->to(at::kFloat);
    at::Tensor pruned;
    if (method == "sparsegpt") {
      quant::SparseGptOptions o;
      o.ratio = ratio;
      o.pattern = pattern;
      if (pattern.structured() && o.blocksize % pattern.m != 0) o.blocksize = pattern.m * 16;
      MOEC_ASSIGN_OR_RETURN(pruned, quant::SparseGptPrune(original, t.hessian->hessian(), o));
    } else {
      at::Tensor mask;
      if (method == "wanda") {
        // An expert no token reached has no statistics: its metric is all zeros (every weight
        // ties), which prunes the first columns of each row, as the reference would.
        const at::Tensor norm2 = t.norm2.defined() ? t.norm2 : at::zeros({original.size(1)});
        MOEC_ASSIGN_OR_RETURN(mask, quant::WandaMask(original, norm2, ratio, pattern));
      } else {
        MOEC_ASSIGN_OR_RETURN(mask, quant::MagnitudeMask(original, ratio, pattern));
      }
      pruned = original.masked_fill(mask, 0);
    }
    const double zeros = (pruned == 0).sum().item<double>() / pruned.numel();
    summary[t.name] = {{"sparsity", zeros}, {"method", method}};
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name, pruned));
    *t.weight = pruned.to(t.weight->scalar_type());
    ctx.progress(0.9 * (i + 1) / targets.size(), absl::StrCat("layer ", layer, ": ", t.name));
  }
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < n; s += batch) {
    out.push_back(runner->RunLayer(w, input.narrow(0, s, std::min(batch, n - s))));
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "hidden", at::cat(out, 0)));
  const std::string text = summary.dump();
  return ctx.io
      ->PutOutput("summary", storage::DType::kU8, {static_cast<int64_t>(text.size())}, text)
      .status();
}

}  // namespace moec::stages
