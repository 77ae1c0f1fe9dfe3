#include "stages/quantize_stage.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tensor_names.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "stages/model_inputs.h"

namespace moec::stages {
namespace {

using model::LinearKind;

// One linear of the layer to quantize.
struct Target {
  std::string name;
  at::Tensor* weight = nullptr;
  LinearKind kind = LinearKind::kQ;
  int expert = -1;
  int bits = 4;
  int group = 0;  // true-sequential group: 0 q/k/v, 1 o, 2 MLP gate/up (and router), 3 down
  std::unique_ptr<quant::HessianAccumulator> hessian;
};

int SequentialGroup(LinearKind k) {
  switch (k) {
    case LinearKind::kQ:
    case LinearKind::kK:
    case LinearKind::kV:
      return 0;
    case LinearKind::kO:
      return 1;
    case LinearKind::kDenseDown:
    case LinearKind::kExpertDown:
    case LinearKind::kSharedDown:
      return 3;
    default:
      return 2;
  }
}

// Feeds captured linear inputs of the current group to the targets' Hessians.
class HessianCollector : public model::ForwardObserver {
 public:
  HessianCollector(std::map<std::pair<LinearKind, int>, Target*>* targets, int group, int64_t seq)
      : targets_(targets), group_(group), seq_(seq) {}
  bool WantsLinearInputs(int layer) const override { return true; }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x,
                     const at::Tensor& token_index) override {
    auto it = targets_->find({id.kind, id.expert});
    if (it == targets_->end() || it->second->hessian == nullptr) return;
    if (group_ >= 0 && it->second->group != group_) return;
    // The reference counts forward calls of 2-D inputs (experts) as one sample and 3-D inputs
    // as their batch of sequences (decision 13); GPTQ's result does not depend on the scale.
    const int64_t samples = id.expert >= 0 ? 1 : std::max<int64_t>(1, x.size(0) / seq_);
    absl::Status s = it->second->hessian->Add(x, samples);
    if (!s.ok() && status_.ok()) status_ = s;
  }
  const absl::Status& status() const { return status_; }

 private:
  std::map<std::pair<LinearKind, int>, Target*>* targets_;
  const int group_;
  const int64_t seq_;
  absl::Status status_;
};

}  // namespace

absl::Status QuantizeStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();  // docs/stages.md (until issue #5)
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& c = runner->config();
  const nlohmann::json& p = ctx.params;
  const int bits = p.value("bits", 4);
  const int attn_bits = p.value("attn_bits", 4);
  const int shared_bits = gptq_ ? p.value("shared_bits", 4) : bits;
  const int router_bits = gptq_ ? p.value("router_bits", 0) : 0;
  const int64_t group_size = p.value("group_size", int64_t{128});
  const bool sequential = gptq_ && p.value("true_sequential", true);
  const int64_t min_tokens = p.value("min_tokens", int64_t{1});

  // Expert widths: the allocation when there is one.
  std::vector<int> expert_bits(std::max(0, c.NumRoutedExperts(layer)), bits);
  if (absl::StatusOr<std::string> alloc = NeededStage(ctx, "allocate_bits"); alloc.ok()) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(*alloc, -1, "expert_bits"));
    MOEC_ASSIGN_OR_RETURN(at::Tensor table, GetTensor(ctx, key));
    for (size_t e = 0; e < expert_bits.size(); ++e) {
      const int64_t b = table[layer][e].item<int64_t>();
      if (b < 1 || b > 8) {
        return absl::DataLossError(absl::StrCat("allocation gives expert ", e, " of layer ", layer,
                                                " width ", b));
      }
      expert_bits[e] = static_cast<int>(b);
    }
  }

  MOEC_ASSIGN_OR_RETURN(at::Tensor hidden, LayerInput(ctx, *runner));
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w, runner->LoadLayer(layer));
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  std::vector<std::unique_ptr<Target>> targets;
  auto add = [&](std::string name, at::Tensor* weight, LinearKind kind, int expert, int b) {
    if (weight == nullptr || !weight->defined() || b <= 0) return;
    auto t = std::make_unique<Target>();
    t->name = std::move(name);
    t->weight = weight;
    t->kind = kind;
    t->expert = expert;
    t->bits = b;
    t->group = SequentialGroup(kind);
    if (gptq_) t->hessian = std::make_unique<quant::HessianAccumulator>(weight->size(1));
    targets.push_back(std::move(t));
  };
  const std::string attn = prefix + "self_attn.";
  add(attn + "q_proj.weight", &w.attention.q, LinearKind::kQ, -1, attn_bits);
  add(attn + "k_proj.weight", &w.attention.k, LinearKind::kK, -1, attn_bits);
  add(attn + "v_proj.weight", &w.attention.v, LinearKind::kV, -1, attn_bits);
  add(attn + "o_proj.weight", &w.attention.o, LinearKind::kO, -1, attn_bits);
  if (w.dense.defined()) {
    add(prefix + "mlp.gate_proj.weight", &w.dense.gate, LinearKind::kDenseGate, -1, shared_bits);
    add(prefix + "mlp.up_proj.weight", &w.dense.up, LinearKind::kDenseUp, -1, shared_bits);
    add(prefix + "mlp.down_proj.weight", &w.dense.down, LinearKind::kDenseDown, -1, shared_bits);
  }
  if (w.moe.has_value()) {
    model::MoeWeights& m = *w.moe;
    if (m.router.defined()) {
      add(model::RouterTensorName(c, layer), &m.router, LinearKind::kRouter, -1, router_bits);
    }
    for (int e = 0; e < static_cast<int>(m.experts.size()); ++e) {
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kGate), &m.experts[e].gate,
          LinearKind::kExpertGate, e, expert_bits[e]);
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kUp), &m.experts[e].up,
          LinearKind::kExpertUp, e, expert_bits[e]);
      add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kDown), &m.experts[e].down,
          LinearKind::kExpertDown, e, expert_bits[e]);
    }
    if (m.shared.defined()) {
      const std::vector<std::string> names = model::SharedExpertTensorNames(c, layer);
      add(names[0], &m.shared.gate, LinearKind::kSharedGate, -1, shared_bits);
      add(names[1], &m.shared.up, LinearKind::kSharedUp, -1, shared_bits);
      add(names[2], &m.shared.down, LinearKind::kSharedDown, -1, shared_bits);
    }
  }
  std::map<std::pair<LinearKind, int>, Target*> by_id;
  for (auto& t : targets) by_id[{t->kind, t->expert}] = t.get();

  const int64_t batch = 8;
  const int64_t n = hidden.size(0), seq = hidden.size(1);
  nlohmann::json summary = nlohmann::json::object();
  size_t done = 0;
  auto quantize = [&](Target& t) -> absl::Status {
    quant::QuantizerOptions qo;
    qo.bits = t.bits;
    qo.sym = p.value("sym", false);
    qo.mse = gptq_ && p.value("mse", false);
    at::Tensor q, scales, zeros, g_idx, dequantized;
    nlohmann::json info = {{"bits", t.bits}};
    if (gptq_) {
      quant::GptqOptions go;
      go.quantizer = qo;
      go.percdamp = p.value("damp", 0.01);
      go.groupsize = group_size;
      go.actorder = p.value("act_order", false);
      go.static_groups = p.value("static_groups", false);
      go.mcmoe_blockwise_feedback = p.value("mcmoe_blockwise_feedback", false);
      bool fallback = false;
      at::Tensor h = t.hessian->HessianForSolve(std::max<int64_t>(1, min_tokens), &fallback);
      MOEC_ASSIGN_OR_RETURN(quant::GptqResult r, quant::GptqQuantize(*t.weight, h, go));
      q = r.q;
      scales = r.scales;
      zeros = r.zeros;
      g_idx = r.g_idx;
      dequantized = r.weight;
      info["loss"] = r.total_loss;
      info["tokens"] = t.hessian->tokens();
      info["rtn_fallback"] = fallback || r.identity_fallback;
      t.hessian.reset();
    } else {
      MOEC_ASSIGN_OR_RETURN(quant::QuantizedWeight r, quant::QuantizeGroups(*t.weight, group_size, qo));
      q = r.q;
      scales = r.scales;
      zeros = r.zeros;
      g_idx = r.g_idx;
      dequantized = r.weight;
    }
    info["error"] = (dequantized - t.weight->to(at::kFloat)).norm().item<double>() /
                    std::max(1e-30, t.weight->to(at::kFloat).norm().item<double>());
    *t.weight = dequantized.to(t.weight->scalar_type());
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".q", q.to(at::kByte)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".scales", scales.to(at::kFloat)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".zeros", zeros.to(at::kFloat)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".g_idx", g_idx.to(at::kInt)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".bits", at::full({1}, t.bits, at::kLong)));
    summary[t.name] = info;
    ++done;
    ctx.progress(0.9 * done / targets.size(), absl::StrCat("layer ", layer, ": ", t.name));
    return absl::OkStatus();
  };
  const std::vector<int> groups = sequential ? std::vector<int>{0, 1, 2, 3} : std::vector<int>{-1};
  for (int group : groups) {
    if (ctx.IsCancelled()) return absl::CancelledError("quantization cancelled");
    if (gptq_) {
      HessianCollector collector(&by_id, group, seq);
      for (int64_t s = 0; s < n; s += batch) {
        runner->RunLayer(w, hidden.narrow(0, s, std::min(batch, n - s)), &collector);
      }
      MOEC_RETURN_IF_ERROR(collector.status());
    }
    for (auto& t : targets) {
      if (group >= 0 && t->group != group) continue;
      MOEC_RETURN_IF_ERROR(quantize(*t));
    }
  }
  // The quantized layer's output feeds the next layer.
  std::vector<at::Tensor> outputs;
  for (int64_t s = 0; s < n; s += batch) {
    outputs.push_back(runner->RunLayer(w, hidden.narrow(0, s, std::min(batch, n - s))));
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, "hidden", at::cat(outputs, 0)));
  const std::string text = summary.dump();
  MOEC_RETURN_IF_ERROR(ctx.io
                           ->PutOutput("summary", storage::DType::kU8,
                                       {static_cast<int64_t>(text.size())}, text)
                           .status());
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": ", targets.size(), " linears quantized"));
  return absl::OkStatus();
}

}  // namespace moec::stages
