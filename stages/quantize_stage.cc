#include "stages/quantize_stage.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "model/config/tensor_names.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "stages/stored_codes.h"

namespace moec::stages {

using dataplane::GangComm;
using dataplane::GetTensor;
using dataplane::LayerShard;
using dataplane::NeededStage;
using dataplane::OpenJobModel;
using dataplane::OpenLayerShard;
using dataplane::OwnerPart;
using dataplane::PutBulk;
using dataplane::PutTensor;
using dataplane::RunShardRounds;
using dataplane::SendToOwner;
using dataplane::SkipRemovedLayer;
using dataplane::WriteShardOutputs;


using model::LinearKind;

namespace {

// What the linears that read one input share on the rank that quantizes them: q/k/v, an MLP's
// gate/up (with the router when the MLP is a MoE layer's shared expert), and the rest alone.
// Their Hessians are the same sums of the same rows, and so is GPTQ's factorisation of it
// (quant::GptqHessian): each is computed once.
struct SharedInput {
  std::unique_ptr<quant::HessianAccumulator> hessian;
  std::optional<quant::GptqHessian> prepared;
  bool fallback = false;  // the identity stood in for a Hessian of too few tokens
  int users = 0;          // targets not yet quantized; the last one frees the above
};

// One linear of the layer to quantize.
struct Target {
  std::string name;
  at::Tensor* weight = nullptr;
  LinearKind kind = LinearKind::kQ;
  int expert = -1;
  int bits = 4;
  int group = 0;  // true-sequential group: 0 q/k/v, 1 o, 2 MLP gate/up (and router), 3 down
  int owner = 0;  // rank that quantizes it (an expert's owner; round-robin for the others)
  bool gptq = false;  // collects Hessians (on every rank; accumulated on the owner)
  bool collects = false;  // the first linear of its input: its captures feed `input`
  std::shared_ptr<SharedInput> input;  // on the owner, with gptq
};

// Linears with equal keys read the same input (SharedInput).
std::pair<int, int> InputKey(LinearKind k, int expert) {
  switch (k) {
    case LinearKind::kQ:
    case LinearKind::kK:
    case LinearKind::kV:
      return {0, -1};
    case LinearKind::kDenseGate:
    case LinearKind::kDenseUp:
      return {1, -1};
    case LinearKind::kRouter:
    case LinearKind::kSharedGate:
    case LinearKind::kSharedUp:
      return {2, -1};
    case LinearKind::kExpertGate:
    case LinearKind::kExpertUp:
      return {3, expert};
    default:
      return {4 + static_cast<int>(k), expert};
  }
}

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

// Feeds captured linear inputs of the current group to the targets' Hessians: routed experts'
// rows straight into their accumulators (only the owner of an expert sees its rows); the other
// linears' per-chunk Gram matrices are kept for the ordered reduction to their owners.
class HessianCollector : public model::ForwardObserver {
 public:
  struct Gram {
    at::Tensor gram;  // fp32 [in, in]
    int64_t tokens = 0, samples = 0;
  };
  HessianCollector(std::map<std::pair<LinearKind, int>, Target*>* targets, int group, int64_t seq)
      : targets_(targets), group_(group), seq_(seq) {}
  bool WantsLinearInputs(int layer) const override { return true; }
  // Each group's pass computes only what its inputs depend on (same bits: a pass computes what
  // it captures exactly as the whole layer would).
  model::LayerExtent Extent(int layer) const override {
    switch (group_) {
      case 0: return model::LayerExtent::kQkvInputs;
      case 1: return model::LayerExtent::kOInput;
      case 2: return model::LayerExtent::kGateUpInputs;
      case 3: return model::LayerExtent::kDownInputs;
      default: return model::LayerExtent::kAll;
    }
  }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x,
                     const at::Tensor& token_index) override {
    auto it = targets_->find({id.kind, id.expert});
    if (it == targets_->end() || !it->second->gptq || !it->second->collects) return;
    if (group_ >= 0 && it->second->group != group_) return;
    if (id.expert >= 0) {
      if (it->second->input == nullptr) {  // the executor runs experts on their owners only
        status_ = absl::InternalError(absl::StrCat("rows of expert ", id.expert, " off its owner"));
        return;
      }
      // The reference counts forward calls of 2-D inputs (experts) as one sample and 3-D inputs
      // as their batch of sequences (decision 13); GPTQ's result does not depend on the scale.
      absl::Status s = it->second->input->hessian->Add(x, 1);
      if (!s.ok() && status_.ok()) status_ = s;
      return;
    }
    const int64_t rows = x.numel() / x.size(-1);
    grams_[it->second] = {quant::GramMatrix(x), rows, std::max<int64_t>(1, rows / seq_)};
  }
  const absl::Status& status() const { return status_; }
  std::map<Target*, Gram>& grams() { return grams_; }

 private:
  std::map<std::pair<LinearKind, int>, Target*>* targets_;
  const int group_;
  const int64_t seq_;
  absl::Status status_;
  std::map<Target*, Gram> grams_;
};

// Sends this round's Gram matrix of every data-parallel target of `group` to the target's owner,
// which adds them in rank order, i.e. in chunk order (expert_parallel.h).
absl::Status ReduceGrams(comm::Communicator& comm, const std::vector<std::unique_ptr<Target>>& targets,
                         int group, HessianCollector& collector) {
  for (const auto& t : targets) {
    if (t->expert >= 0 || !t->gptq || !t->collects || (group >= 0 && t->group != group)) continue;
    const int64_t in = t->weight->size(1);
    OwnerPart mine;
    if (auto it = collector.grams().find(t.get()); it != collector.grams().end()) {
      mine = {it->second.gram, at::tensor({it->second.tokens, it->second.samples}, at::kLong)};
    }
    MOEC_ASSIGN_OR_RETURN(std::vector<OwnerPart> parts, SendToOwner(comm, t->owner, mine, in, 2, t->weight->device()));
    for (const OwnerPart& p : parts) {
      MOEC_RETURN_IF_ERROR(t->input->hessian->AddGram(p.rows, p.meta[0].item<int64_t>(),
                                                      p.meta[1].item<int64_t>()));
    }
  }
  collector.grams().clear();
  return absl::OkStatus();
}

// Expert widths of `layer`: the allocation of an `allocate_bits` stage among the needs when there
// is one, else `bits`.
absl::StatusOr<std::vector<int>> ExpertWidths(const StageContext& ctx, int layer, int experts,
                                              int bits) {
  std::vector<int> expert_bits(experts, bits);
  if (absl::StatusOr<std::string> alloc = NeededStage(ctx, "allocate_bits"); alloc.ok()) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(*alloc, -1, outputs::kExpertBits));
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
  return expert_bits;
}

// The widths of a layer's linears (0: not quantized).
struct LayerWidths {
  int attn = 0;
  int shared = 0;  // shared experts and dense MLPs
  int router = 0;
  std::vector<int> experts;
};

// The widths of `layer`'s linears for this stage. rtn has no shared, router, ordering or
// token-count parameters: its shared experts take `bits`, its router stays, and every expert is
// quantized.
absl::StatusOr<LayerWidths> StageWidths(const StageContext& ctx, const model::ModelConfig& c,
                                        int layer, bool gptq) {
  const recipe::StageSpec& p = *ctx.stage;
  const int bits = static_cast<int>(p.Int("bits"));
  LayerWidths widths;
  widths.attn = static_cast<int>(p.Int("attn_bits"));
  widths.shared = gptq ? static_cast<int>(p.Int("shared_bits")) : bits;
  widths.router = gptq ? static_cast<int>(p.Int("router_bits")) : 0;
  MOEC_ASSIGN_OR_RETURN(widths.experts,
                        ExpertWidths(ctx, layer, std::max(0, c.NumRoutedExperts(layer)), bits));
  return widths;
}

// Collects the targets this rank reads, in the order every rank adds them: the data-parallel
// targets' owners go round-robin over the ranks in that order.
class TargetList {
 public:
  TargetList(const std::vector<int>& expert_owner, int rank, int ranks, bool gptq)
      : expert_owner_(expert_owner), rank_(rank), ranks_(ranks), gptq_(gptq) {}

  void Add(std::string name, at::Tensor* weight, LinearKind kind, int expert, int b) {
    if (weight == nullptr || !weight->defined() || b <= 0) return;
    if (expert >= 0 && expert_owner_[expert] != rank_) return;  // not read on this rank
    auto t = std::make_unique<Target>();
    t->name = std::move(name);
    t->weight = weight;
    t->kind = kind;
    t->expert = expert;
    t->bits = b;
    t->group = SequentialGroup(kind);
    t->gptq = gptq_;
    // The linears of one input go to the owner of its first linear.
    auto [first, added] = inputs_.try_emplace(InputKey(kind, expert), t.get());
    t->collects = added;
    if (!added) {
      t->owner = first->second->owner;
    } else {
      t->owner = expert >= 0 ? expert_owner_[expert] : data_parallel_++ % ranks_;
    }
    if (gptq_ && t->owner == rank_) {
      if (added) {
        // On the weight's device (the task's): Hessians, U and the solve stay there.
        t->input = std::make_shared<SharedInput>();
        t->input->hessian =
            std::make_unique<quant::HessianAccumulator>(weight->size(1), weight->device());
      } else {
        t->input = first->second->input;
      }
      ++t->input->users;
    }
    targets_.push_back(std::move(t));
  }
  std::vector<std::unique_ptr<Target>> Take() { return std::move(targets_); }

 private:
  const std::vector<int>& expert_owner_;
  const int rank_;
  const int ranks_;
  const bool gptq_;
  int data_parallel_ = 0;  // data-parallel inputs so far
  std::map<std::pair<int, int>, Target*> inputs_;  // InputKey -> its first target
  std::vector<std::unique_ptr<Target>> targets_;
};

// Adds the linears of layer `layer` (weights `w`, widths `bits`) to `list`.
void AddLayerTargets(const model::ModelConfig& c, int layer, const LayerWidths& bits,
                     model::LayerWeights& w, TargetList& list) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  const std::string attn = prefix + "self_attn.";
  list.Add(attn + "q_proj.weight", &w.attention.q, LinearKind::kQ, -1, bits.attn);
  list.Add(attn + "k_proj.weight", &w.attention.k, LinearKind::kK, -1, bits.attn);
  list.Add(attn + "v_proj.weight", &w.attention.v, LinearKind::kV, -1, bits.attn);
  list.Add(attn + "o_proj.weight", &w.attention.o, LinearKind::kO, -1, bits.attn);
  if (w.dense.defined()) {
    const std::string mlp = prefix + "mlp.";
    list.Add(mlp + "gate_proj.weight", &w.dense.gate, LinearKind::kDenseGate, -1, bits.shared);
    list.Add(mlp + "up_proj.weight", &w.dense.up, LinearKind::kDenseUp, -1, bits.shared);
    list.Add(mlp + "down_proj.weight", &w.dense.down, LinearKind::kDenseDown, -1, bits.shared);
  }
  if (!w.moe.has_value()) return;
  model::MoeWeights& m = *w.moe;
  if (m.router.defined()) {
    list.Add(model::RouterTensorName(c, layer), &m.router, LinearKind::kRouter, -1, bits.router);
  }
  for (int e = 0; e < static_cast<int>(m.experts.size()); ++e) {
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kGate), &m.experts[e].gate,
             LinearKind::kExpertGate, e, bits.experts[e]);
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kUp), &m.experts[e].up,
             LinearKind::kExpertUp, e, bits.experts[e]);
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kDown), &m.experts[e].down,
             LinearKind::kExpertDown, e, bits.experts[e]);
  }
  if (m.shared.defined()) {
    const std::vector<std::string> names = model::SharedExpertTensorNames(c, layer);
    list.Add(names[0], &m.shared.gate, LinearKind::kSharedGate, -1, bits.shared);
    list.Add(names[1], &m.shared.up, LinearKind::kSharedUp, -1, bits.shared);
    list.Add(names[2], &m.shared.down, LinearKind::kSharedDown, -1, bits.shared);
  }
}

// One linear quantized: its codes, its dequantized weight and its summary entry.
struct QuantizedTarget {
  at::Tensor q, scales, zeros, g_idx, dequantized;
  nlohmann::json info;
};

// GPTQ on the target's Hessian, prepared once per input (the last linear of the input frees
// it): `out`'s codes and summary entries.
absl::Status GptqTarget(const recipe::StageSpec& p, const quant::QuantizerOptions& qo,
                        int64_t group_size, int64_t min_tokens, Target& t, QuantizedTarget* out) {
  quant::GptqOptions go;
  go.quantizer = qo;
  go.percdamp = p.Float("damp");
  go.groupsize = group_size;
  go.actorder = p.Bool("act_order");
  go.static_groups = p.Bool("static_groups");
  go.mcmoe_blockwise_feedback = p.Bool("mcmoe_blockwise_feedback");
  SharedInput& in = *t.input;
  if (!in.prepared.has_value()) {
    at::Tensor h = in.hessian->HessianForSolve(std::max<int64_t>(1, min_tokens), &in.fallback);
    MOEC_ASSIGN_OR_RETURN(in.prepared, quant::PrepareGptqHessian(h, go));
  }
  MOEC_ASSIGN_OR_RETURN(quant::GptqResult r, quant::GptqQuantize(*t.weight, *in.prepared, go));
  out->q = r.q;
  out->scales = r.scales;
  out->zeros = r.zeros;
  out->g_idx = r.g_idx;
  out->dequantized = r.weight;
  out->info["loss"] = r.total_loss;
  out->info["tokens"] = in.hessian->tokens();
  out->info["rtn_fallback"] = in.fallback || r.identity_fallback;
  if (--in.users == 0) {
    in.prepared.reset();
    in.hessian.reset();
  }
  t.input.reset();
  return absl::OkStatus();
}

// Quantizes target `t` (GPTQ or round-to-nearest), replaces its weight by the dequantized one
// and writes its codes; adds its entry to `summary`.
absl::Status QuantizeTarget(StageContext& ctx, bool gptq, int64_t group_size, int64_t min_tokens,
                            Target& t, nlohmann::json* summary) {
  profile::ScopedPhase phase(profile::Phase::kSolve);
  const recipe::StageSpec& p = *ctx.stage;
  quant::QuantizerOptions qo;
  qo.bits = t.bits;
  qo.sym = p.Bool("sym");
  qo.mse = p.Bool("mse");
  QuantizedTarget r;
  nlohmann::json& info = r.info;
  info = {{"bits", t.bits}};
  if (gptq) {
    MOEC_RETURN_IF_ERROR(GptqTarget(p, qo, group_size, min_tokens, t, &r));
  } else {
    MOEC_ASSIGN_OR_RETURN(quant::QuantizedWeight rtn,
                          quant::QuantizeGroups(*t.weight, group_size, qo));
    r.q = rtn.q;
    r.scales = rtn.scales;
    r.zeros = rtn.zeros;
    r.g_idx = rtn.g_idx;
    r.dequantized = rtn.weight;
  }
  const at::Tensor original = t.weight->to(at::kFloat);
  info["error"] = at::dist(r.dequantized, original).item<double>() /
                  std::max(1e-30, original.norm().item<double>());
  *t.weight = r.dequantized.to(t.weight->scalar_type());
  MOEC_ASSIGN_OR_RETURN(at::Tensor codes, PackStoredCodes(r.q, t.bits));
  // Bulk: the export reads them from the worker that keeps them.
  MOEC_RETURN_IF_ERROR(PutBulk(ctx, t.name + kStoredCodesSuffix, codes));
  MOEC_RETURN_IF_ERROR(PutBulk(ctx, t.name + ".scales", r.scales.to(at::kFloat)));
  MOEC_RETURN_IF_ERROR(PutBulk(ctx, t.name + ".zeros", r.zeros.to(at::kFloat)));
  MOEC_RETURN_IF_ERROR(PutBulk(ctx, t.name + ".g_idx", r.g_idx.to(at::kInt)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, t.name + ".bits", at::full({1}, t.bits, at::kLong)));
  (*summary)[t.name] = info;
  return absl::OkStatus();
}

// Every rank runs the data-parallel linears of `group`: their owners share the quantized weights.
absl::Status ShareDataParallel(comm::Communicator& comm,
                               const std::vector<std::unique_ptr<Target>>& targets, int group) {
  for (auto& t : targets) {
    if ((group >= 0 && t->group != group) || t->expert >= 0 || comm.size() == 1) continue;
    MOEC_RETURN_IF_ERROR(comm.Broadcast(*t->weight, t->owner));
  }
  return absl::OkStatus();
}

// Bytes of the down projections' inputs of one pass of `layer` over this rank's chunks.
int64_t MlpHiddenBytes(const model::ModelConfig& c, int layer, const LayerShard& shard,
                       at::ScalarType dtype) {
  int64_t tokens = 0;
  for (const auto& [chunk, x] : shard.inputs) tokens += x.size(0) * x.size(1);
  return tokens * c.DownInputsPerToken(layer) * static_cast<int64_t>(c10::elementSize(dtype));
}

// What the pass of true-sequential `group` keeps for the passes after it (model::LayerMemo):
// each part once every weight it depends on is quantized. The attention's output after q/k/v,
// the residual after the attention once o is, the MLPs' down inputs once gate/up are (when
// `keep_mlp`: they are the big part). The last pass, which writes the layer's output, reuses
// them all.
void RecordAfterGroup(LayerShard& shard, int group, bool keep_mlp) {
  unsigned parts = 0;
  if (group == 1) parts = model::LayerMemo::kAttended;
  if (group == 2) parts = model::LayerMemo::kAfterAttention;
  if (group == 3 && keep_mlp) parts = model::LayerMemo::kMlpHidden;
  for (model::LayerMemo& m : shard.memo) m.record = parts;
}

}  // namespace

absl::Status QuantizeStage::Run(StageContext& ctx) {
  std::unique_ptr<comm::Communicator> single;
  comm::Communicator& comm = GangComm(ctx, &single);
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& c = runner->config();
  if (SkipRemovedLayer(ctx, c)) return absl::OkStatus();
  const recipe::StageSpec& p = *ctx.stage;
  MOEC_ASSIGN_OR_RETURN(LayerWidths widths, StageWidths(ctx, c, layer, gptq_));
  const int64_t group_size = p.Int("group_size");
  const bool sequential = gptq_ && p.Bool("true_sequential");
  const int64_t min_tokens = gptq_ ? p.Int("min_tokens") : 1;

  // This rank's chunks, its experts and the layer (expert_parallel.h).
  MOEC_ASSIGN_OR_RETURN(LayerShard shard, OpenLayerShard(ctx, comm, *runner));
  const int64_t seq = shard.seq();
  TargetList list(shard.expert_owner, comm.rank(), comm.size(), gptq_);
  AddLayerTargets(c, layer, widths, shard.weights, list);
  std::vector<std::unique_ptr<Target>> targets = list.Take();
  std::map<std::pair<LinearKind, int>, Target*> by_id;
  for (auto& t : targets) by_id[{t->kind, t->expert}] = t.get();

  nlohmann::json summary = nlohmann::json::object();
  size_t done = 0;
  const size_t mine = std::count_if(targets.begin(), targets.end(),
                                    [&](const auto& t) { return t->owner == comm.rank(); });
  const std::vector<int> groups = sequential ? std::vector<int>{0, 1, 2, 3} : std::vector<int>{-1};
  // The MLPs' kept inputs may take as much memory as the layer's weights on this rank (docs/cli.md,
  // `moec plan`); beyond that the last pass recomputes them.
  const bool keep_mlp = MlpHiddenBytes(c, layer, shard, runner->dtype()) <= shard.weights.bytes;
  if (sequential) shard.memo.resize(shard.plan.rounds());
  for (int group : groups) {
    if (sequential) RecordAfterGroup(shard, group, keep_mlp);
    if (gptq_) {
      HessianCollector collector(&by_id, group, seq);
      MOEC_RETURN_IF_ERROR(
          RunShardRounds(ctx, *runner, shard, &collector, nullptr, [&]() -> absl::Status {
            MOEC_RETURN_IF_ERROR(collector.status());
            return ReduceGrams(comm, targets, group, collector);
          }));
    }
    for (auto& t : targets) {
      if ((group >= 0 && t->group != group) || t->owner != comm.rank()) continue;
      MOEC_RETURN_IF_ERROR(QuantizeTarget(ctx, gptq_, group_size, min_tokens, *t, &summary));
      ++done;
      ctx.progress(0.9 * done / std::max<size_t>(1, mine),
                   absl::StrCat("layer ", layer, ": ", t->name));
    }
    MOEC_RETURN_IF_ERROR(ShareDataParallel(comm, targets, group));
  }
  RecordAfterGroup(shard, -1, false);
  // The quantized layer's output feeds the next layer, chunk by chunk.
  MOEC_RETURN_IF_ERROR(WriteShardOutputs(ctx, comm, *runner, shard, summary));
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": ", mine, " linears quantized on rank ",
                                 comm.rank(), " of ", comm.size()));
  return absl::OkStatus();
}

}  // namespace moec::stages
