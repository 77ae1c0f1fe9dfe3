#include "stages/prune_weights_stage.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "dataplane/structural_edits.h"
#include "model/config/tensor_names.h"
#include "quant/gptq.h"
#include "quant/sparse.h"

namespace moec::stages {

using dataplane::GangComm;
using dataplane::LayerShard;
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

struct Target {
  std::string name;
  at::Tensor* weight = nullptr;
  int expert = -1;   // routed expert, or -1 (shared experts: data-parallel, pruned by `owner`)
  int owner = 0;     // rank that accumulates its statistics and prunes it
  at::Tensor norm2;  // Wanda: mean over calls of Σ_tokens x², [in] (on the owner)
  int64_t calls = 0;
  std::unique_ptr<quant::HessianAccumulator> hessian;  // SparseGPT (on the owner)
  // A data-parallel target's statistics of this rank's chunk in the current round.
  at::Tensor round_stat;  // Wanda: Σ x² [in]; SparseGPT: Xᵀ X [in, in]
  int64_t round_tokens = 0;
};

// Wanda's running mean over calls (the reference's add_batch with one sample per call).
void AddCall(Target& t, const at::Tensor& sq) {
  t.norm2 = t.calls == 0 ? sq : t.norm2 * (static_cast<double>(t.calls) / (t.calls + 1)) +
                                    sq / static_cast<double>(t.calls + 1);
  ++t.calls;
}

// Routed experts' rows go straight into their statistics (the executor runs an expert on its
// owner only, chunk by chunk in chunk order); data-parallel targets keep this round's statistic
// for the ordered reduction to their owner (ReduceRound).
class StatsCollector : public model::ForwardObserver {
 public:
  StatsCollector(std::map<std::pair<LinearKind, int>, Target*>* targets, bool sparsegpt)
      : targets_(targets), sparsegpt_(sparsegpt) {}
  bool WantsLinearInputs(int) const override { return true; }
  void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
    auto it = targets_->find({id.kind, id.expert});
    if (it == targets_->end()) return;
    Target& t = *it->second;
    const at::Tensor f = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
    if (t.expert < 0) {
      t.round_stat = sparsegpt_ ? quant::GramMatrix(f) : f.pow(2).sum(0);
      t.round_tokens = f.size(0);
      return;
    }
    if (sparsegpt_) {
      absl::Status s = t.hessian->Add(f, 1);
      if (!s.ok() && status_.ok()) status_ = s;
      return;
    }
    AddCall(t, f.pow(2).sum(0));
  }
  const absl::Status& status() const { return status_; }

 private:
  std::map<std::pair<LinearKind, int>, Target*>* targets_;
  const bool sparsegpt_;
  absl::Status status_;
};

// Sends this round's statistic of every data-parallel target to its owner, which adds them in
// rank order, i.e. in chunk order (expert_parallel.h), as one rank adding its chunks would.
absl::Status ReduceRound(comm::Communicator& comm, std::vector<std::unique_ptr<Target>>& targets,
                         bool sparsegpt) {
  for (auto& t : targets) {
    if (t->expert >= 0) continue;
    const int64_t in = t->weight->size(1);
    OwnerPart mine;
    if (t->round_stat.defined()) mine = {t->round_stat, at::tensor({t->round_tokens}, at::kLong)};
    MOEC_ASSIGN_OR_RETURN(std::vector<OwnerPart> parts, SendToOwner(comm, t->owner, mine, in, 1, t->weight->device()));
    for (const OwnerPart& p : parts) {
      if (sparsegpt) {
        MOEC_RETURN_IF_ERROR(t->hessian->AddGram(p.rows, p.meta[0].item<int64_t>(), 1));
      } else {
        AddCall(*t, p.rows.reshape({in}));
      }
    }
    t->round_stat = at::Tensor();
    t->round_tokens = 0;
  }
  return absl::OkStatus();
}


absl::StatusOr<quant::SparsityPattern> ParsePattern(const std::string& p) {
  if (p == "unstructured") return quant::SparsityPattern{};
  if (p == "2:4") return quant::SparsityPattern{2, 4};
  if (p == "4:8") return quant::SparsityPattern{4, 8};
  return absl::InvalidArgumentError(absl::StrCat("unknown sparsity pattern '", p, "'"));
}

// The matrices of a layer this rank reads, in the order every rank adds them: the shared
// experts' owners are dealt round-robin over the ranks in that order.
class TargetList {
 public:
  TargetList(const std::vector<int>& expert_owner, int rank, int ranks, bool sparsegpt)
      : expert_owner_(expert_owner), rank_(rank), ranks_(ranks), sparsegpt_(sparsegpt) {}

  void Add(std::string name, at::Tensor* weight, LinearKind kind, int expert) {
    if (weight == nullptr || !weight->defined() || weight->numel() == 0) return;
    if (expert >= 0 && expert_owner_[expert] != rank_) return;  // not read on this rank
    auto t = std::make_unique<Target>();
    t->name = std::move(name);
    t->weight = weight;
    t->expert = expert;
    t->owner = expert >= 0 ? expert_owner_[expert] : dealt_++ % ranks_;
    if (sparsegpt_ && t->owner == rank_) {
      t->hessian = std::make_unique<quant::HessianAccumulator>(weight->size(1), weight->device());
    }
    by_id_[{kind, expert}] = t.get();
    targets_.push_back(std::move(t));
  }
  std::vector<std::unique_ptr<Target>>& targets() { return targets_; }
  std::map<std::pair<LinearKind, int>, Target*>& by_id() { return by_id_; }

 private:
  const std::vector<int>& expert_owner_;
  const int rank_;
  const int ranks_;
  const bool sparsegpt_;
  int dealt_ = 0;
  std::vector<std::unique_ptr<Target>> targets_;
  std::map<std::pair<LinearKind, int>, Target*> by_id_;
};

// Adds the routed experts of layer `layer` (weights `w`) and, with `shared`, its shared experts.
void AddLayerTargets(const model::ModelConfig& c, int layer, bool shared, model::LayerWeights& w,
                     TargetList& list) {
  if (!w.moe.has_value()) return;
  model::MoeWeights& m = *w.moe;
  for (int e = 0; e < static_cast<int>(m.experts.size()); ++e) {
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kGate), &m.experts[e].gate,
             LinearKind::kExpertGate, e);
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kUp), &m.experts[e].up,
             LinearKind::kExpertUp, e);
    list.Add(model::ExpertTensorName(c, layer, e, model::ExpertProj::kDown), &m.experts[e].down,
             LinearKind::kExpertDown, e);
  }
  if (shared && m.shared.defined()) {
    const std::vector<std::string> names = model::SharedExpertTensorNames(c, layer);
    list.Add(names[0], &m.shared.gate, LinearKind::kSharedGate, -1);
    list.Add(names[1], &m.shared.up, LinearKind::kSharedUp, -1);
    list.Add(names[2], &m.shared.down, LinearKind::kSharedDown, -1);
  }
}

// How to prune: the stage's method, sparsity ratio and pattern.
struct PruneOptions {
  std::string method;
  bool sparsegpt = false;
  double ratio = 0;
  quant::SparsityPattern pattern;
};

// Target `t`'s weight (fp32 `original`) pruned by its statistics.
absl::StatusOr<quant::PrunedWeight> Prune(const PruneOptions& o, const Target& t,
                                          const at::Tensor& original) {
  profile::ScopedPhase phase(profile::Phase::kSolve);
  if (o.method == "wanda") {
    // An expert no token reached has no statistics: its metric is all zeros (every weight
    // ties), which prunes the first columns of each row, as the reference would.
    const at::Tensor norm2 = t.norm2.defined() ? t.norm2 : at::zeros({original.size(1)}, original.options());
    return quant::WandaPrune(original, norm2, o.ratio, o.pattern);
  }
  quant::PrunedWeight r;
  if (o.sparsegpt) {
    quant::SparseGptOptions so;
    so.ratio = o.ratio;
    so.pattern = o.pattern;
    if (o.pattern.structured() && so.blocksize % o.pattern.m != 0) so.blocksize = o.pattern.m * 16;
    MOEC_ASSIGN_OR_RETURN(r.weight, quant::SparseGptPrune(original, t.hessian->hessian(), so));
  } else {
    MOEC_ASSIGN_OR_RETURN(at::Tensor mask, quant::MagnitudeMask(original, o.ratio, o.pattern));
    r.weight = original.masked_fill(mask, 0);
    r.mask = quant::PackMask(mask);
  }
  r.zeros = (r.weight == 0).sum().item<int64_t>();
  return r;
}

// Whether every entry of fp32 `x` is a bf16 value (its low 16 bits are 0), in one pass.
bool HoldsBf16Exactly(const at::Tensor& x) {
  if (!x.is_cpu() || x.scalar_type() != at::kFloat || !x.is_contiguous()) {
    return at::equal(x.to(at::kBFloat16).to(at::kFloat), x);
  }
  const uint32_t* u = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  std::atomic<bool> exact{true};
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    uint32_t low = 0;
    for (int64_t i = b; i < e; ++i) low |= u[i] & 0xFFFFu;
    if (low != 0) exact = false;
  });
  return exact.load();
}

// The pruned matrix in the narrowest of bf16, f16 and fp32 that holds it exactly (SparseGPT's
// updated weights: fp32 unless they happen to fit; its readers convert).
at::Tensor NarrowestExact(const at::Tensor& pruned) {
  if (HoldsBf16Exactly(pruned)) return pruned.to(at::kBFloat16);  // exact values convert exactly
  at::Tensor half = pruned.to(at::kHalf);
  if (at::equal(half.to(at::kFloat), pruned)) return half;
  return pruned;
}

// Every rank runs the shared experts: their owners share the pruned weights.
absl::Status ShareDataParallel(comm::Communicator& comm,
                               const std::vector<std::unique_ptr<Target>>& targets) {
  for (auto& t : targets) {
    if (t->expert >= 0 || comm.size() == 1) continue;
    MOEC_RETURN_IF_ERROR(comm.Broadcast(*t->weight, t->owner));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PruneWeightsStage::Run(StageContext& ctx) {
  std::unique_ptr<comm::Communicator> single;
  comm::Communicator& comm = GangComm(ctx, &single);
  const int layer = ctx.task->layer();
  PruneOptions o;
  o.method = ctx.stage->Str("method");
  o.sparsegpt = o.method == "sparsegpt";
  o.ratio = ctx.stage->Float("sparsity");
  MOEC_ASSIGN_OR_RETURN(o.pattern, ParsePattern(ctx.stage->Str("pattern")));
  const bool shared = ctx.stage->Bool("shared_experts");
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& c = runner->config();
  if (SkipRemovedLayer(ctx, c)) return absl::OkStatus();

  // On the data plane (expert_parallel.h): this rank's chunks of the calibration windows, the
  // experts it owns (read and pruned here), the shared experts dealt round-robin.
  MOEC_ASSIGN_OR_RETURN(LayerShard shard, OpenLayerShard(ctx, comm, *runner));
  TargetList list(shard.expert_owner, comm.rank(), comm.size(), o.sparsegpt);
  AddLayerTargets(c, layer, shared, shard.weights, list);
  std::vector<std::unique_ptr<Target>>& targets = list.targets();
  if (o.method != "magnitude") {
    StatsCollector collector(&list.by_id(), o.sparsegpt);
    MOEC_RETURN_IF_ERROR(
        RunShardRounds(ctx, *runner, shard, &collector, nullptr, [&]() -> absl::Status {
          MOEC_RETURN_IF_ERROR(collector.status());
          return ReduceRound(comm, targets, o.sparsegpt);
        }));
  }
  nlohmann::json summary = nlohmann::json::object();
  size_t done = 0;
  for (auto& tp : targets) {
    Target& t = *tp;
    if (t.owner != comm.rank()) continue;
    const at::Tensor original = t.weight->to(at::kFloat);
    MOEC_ASSIGN_OR_RETURN(quant::PrunedWeight p, Prune(o, t, original));
    const at::Tensor& pruned = p.weight;
    // A pruning that only zeroed weights is stored as its mask over the checkpoint's matrix
    // (dataplane::ReadEditedTensor applies it); SparseGPT's updated weights as a matrix.
    const bool masked = p.mask.defined();
    summary[t.name] = {{"sparsity", static_cast<double>(p.zeros) / pruned.numel()},
                       {"method", o.method},
                       {"stored", masked ? dataplane::kStoredAsMask : dataplane::kStoredAsMatrix}};
    MOEC_RETURN_IF_ERROR(masked ? PutBulk(ctx, t.name + dataplane::kPrunedMaskSuffix, p.mask)
                                : PutBulk(ctx, t.name, NarrowestExact(pruned)));
    *t.weight = pruned.to(t.weight->scalar_type());
    ctx.progress(0.8 * ++done / targets.size(), absl::StrCat("layer ", layer, ": ", t.name));
  }
  MOEC_RETURN_IF_ERROR(ShareDataParallel(comm, targets));
  // The pruned layer's output feeds the next layer, chunk by chunk.
  MOEC_RETURN_IF_ERROR(WriteShardOutputs(ctx, comm, *runner, shard, summary));
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": ", done, " matrices pruned on rank ",
                                 comm.rank(), " of ", comm.size()));
  return absl::OkStatus();
}

}  // namespace moec::stages
