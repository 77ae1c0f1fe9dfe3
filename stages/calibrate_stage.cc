#include "stages/calibrate_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"

namespace moec::stages {

using dataplane::AssignExperts;
using dataplane::ChunkOutputName;
using dataplane::ChunkPlan;
using dataplane::ExpertParallelExecutor;
using dataplane::GangComm;
using dataplane::LayerInputChunk;
using dataplane::OpenJobModel;
using dataplane::PlanChunks;
using dataplane::PutChunkedWindows;
using dataplane::PutTensor;
using dataplane::SkipRemovedLayer;

namespace {

// Accumulates router statistics of one layer over batches.
class RouterStats : public model::ForwardObserver {
 public:
  RouterStats(int experts, int top_k) : top_k_(top_k) {
    counts_ = at::zeros({experts}, at::kLong);
    mass_ = at::zeros({experts}, at::kDouble);
    softmax_mass_ = at::zeros({experts}, at::kDouble);
  }
  // The statistics are kept on the host: router logits are [tokens, experts], small next to the
  // layer's forward, and come back from a device here once per batch.
  void OnRouterLogits(int layer, const at::Tensor& logits) override {
    at::Tensor p = at::softmax(logits.to(at::kCPU, at::kDouble), -1);
    auto [top_p, top_i] = p.topk(top_k_, -1);
    counts_.index_add_(0, top_i.reshape(-1), at::ones({top_i.numel()}, at::kLong));
    mass_.index_add_(0, top_i.reshape(-1), top_p.reshape(-1));
    softmax_mass_ += p.sum(0);
    if (p.size(1) >= 2) {
      at::Tensor two = std::get<0>(p.topk(2, -1));
      ratios_.push_back((two.select(1, 1) / two.select(1, 0)).to(at::kFloat));
    }
    entropy_sum_ += (-(p * at::log(p.clamp_min(1e-300))).sum(-1)).sum().item<double>();
    tokens_ += logits.size(0);
  }

  at::Tensor counts() const { return counts_; }
  at::Tensor mass() const { return mass_; }
  at::Tensor softmax_mass() const { return softmax_mass_; }
  int64_t tokens() const { return tokens_; }
  double entropy_sum() const { return entropy_sum_; }
  at::Tensor ratios() const {
    return ratios_.empty() ? at::empty({0}, at::kFloat) : at::cat(ratios_);
  }

 private:
  const int top_k_;
  at::Tensor counts_, mass_, softmax_mass_;
  std::vector<at::Tensor> ratios_;
  double entropy_sum_ = 0;
  int64_t tokens_ = 0;
};

// A layer's router statistics over all chunks.
struct LayerStats {
  at::Tensor counts, mass, softmax_mass, ratios;
  double entropy_sum = 0;
  int64_t tokens = 0;
};

// This rank's statistics of its chunks, gathered to every rank and summed in chunk order so the
// results do not depend on the gang size. Per chunk, one F64 row [chunk, tokens, entropy sum,
// ratio count, counts[E], mass[E], softmax mass[E]] and the chunk's p2/p1 ratios (F32).
absl::Status GatherStats(comm::Communicator& comm, int experts,
                         const std::map<int64_t, RouterStats>& mine, LayerStats* out) {
  std::vector<at::Tensor> rows, my_ratios;
  for (const auto& [chunk, st] : mine) {
    at::Tensor r = st.ratios();
    rows.push_back(at::cat({at::tensor({static_cast<double>(chunk), static_cast<double>(st.tokens()),
                                        st.entropy_sum(), static_cast<double>(r.numel())},
                                       at::kDouble),
                            st.counts().to(at::kDouble), st.mass(), st.softmax_mass()}));
    my_ratios.push_back(r);
  }
  at::Tensor table = rows.empty() ? at::empty({0, 4 + 3 * experts}, at::kDouble) : at::stack(rows);
  at::Tensor flat = my_ratios.empty() ? at::empty({0}, at::kFloat) : at::cat(my_ratios);
  MOEC_ASSIGN_OR_RETURN(std::vector<at::Tensor> tables, comm.AllGather(table));
  MOEC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all_ratios, comm.AllGather(flat));
  // chunk -> (row, ratios)
  std::map<int64_t, std::pair<at::Tensor, at::Tensor>> by_chunk;
  for (size_t r = 0; r < tables.size(); ++r) {
    int64_t offset = 0;
    for (int64_t i = 0; i < tables[r].size(0); ++i) {
      at::Tensor row = tables[r][i];
      const int64_t n = static_cast<int64_t>(row[3].item<double>());
      by_chunk[static_cast<int64_t>(row[0].item<double>())] = {row, all_ratios[r].narrow(0, offset, n)};
      offset += n;
    }
  }
  out->counts = at::zeros({experts}, at::kLong);
  out->mass = at::zeros({experts}, at::kDouble);
  out->softmax_mass = at::zeros({experts}, at::kDouble);
  std::vector<at::Tensor> ordered;
  out->entropy_sum = 0;
  out->tokens = 0;
  for (const auto& [chunk, part] : by_chunk) {
    const at::Tensor& row = part.first;
    out->tokens += static_cast<int64_t>(row[1].item<double>());
    out->entropy_sum += row[2].item<double>();
    out->counts += row.narrow(0, 4, experts).to(at::kLong);
    out->mass += row.narrow(0, 4 + experts, experts);
    out->softmax_mass += row.narrow(0, 4 + 2 * experts, experts);
    ordered.push_back(part.second);
  }
  out->ratios = ordered.empty() ? at::empty({0}, at::kFloat) : at::cat(ordered);
  return absl::OkStatus();
}

// The layer of one calibrate task on this rank: its weights (the routed experts this rank owns)
// and the executor that runs them.
struct CalibrateLayer {
  const model::ModelRunner& runner;
  const model::LayerWeights& weights;
  ExpertParallelExecutor& executor;
  int layer = 0;
  int experts = 0;
  bool moe = false;  // routed experts with a router
};

// One round: this rank's chunk through the layer (its output written, its router statistics in
// `stats`); a rank without a chunk still joins the experts' all_to_all.
absl::Status RunRound(StageContext& ctx, const CalibrateLayer& l, const ChunkPlan& plan,
                      const at::Tensor& window_tokens, int64_t round,
                      std::map<int64_t, RouterStats>* stats) {
  const model::ModelConfig& config = l.runner.config();
  const int64_t chunk = plan.ChunkOf(round);
  if (chunk < 0) {
    if (l.moe) {
      l.executor.RunIdle(l.runner, l.layer, *l.weights.moe, nullptr);
      MOEC_RETURN_IF_ERROR(l.executor.status());
    }
    return absl::OkStatus();
  }
  MOEC_ASSIGN_OR_RETURN(at::Tensor hidden,
                        LayerInputChunk(ctx, l.runner, window_tokens, plan, chunk));
  auto [it, inserted] = stats->try_emplace(chunk, l.moe ? l.experts : 1,
                                           l.moe ? config.NumActiveExperts(l.layer) : 1);
  at::Tensor out = l.runner.RunLayer(l.weights, hidden, l.moe ? &it->second : nullptr,
                                     l.moe ? &l.executor : nullptr);
  MOEC_RETURN_IF_ERROR(l.executor.status());
  MOEC_RETURN_IF_ERROR(PutBulk(ctx, ChunkOutputName(outputs::kHidden, chunk), out));
  ctx.progress(static_cast<double>(round + 1) / plan.rounds(),
               absl::StrCat("layer ", l.layer, ": chunk ", chunk + 1, "/", plan.chunks()));
  return absl::OkStatus();
}

absl::Status PutStats(StageContext& ctx, int experts, const LayerStats& s) {
  // Lower median, as torch.median returns.
  const double median = s.ratios.numel() > 0 ? s.ratios.median().item<double>() : 0.0;
  const double entropy =
      s.tokens > 0 && experts > 1 ? s.entropy_sum / s.tokens / std::log(experts) : 0.0;
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kExpertTokens, s.counts));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kRoutingMass, s.mass));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kSoftmaxMass, s.softmax_mass));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kP2P1Median, at::full({1}, median, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kRouterEntropy, at::full({1}, entropy, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kTokens, at::full({1}, s.tokens, at::kLong)));
  return absl::OkStatus();
}

}  // namespace

absl::Status CalibrateStage::Run(StageContext& ctx) {
  std::unique_ptr<comm::Communicator> single;
  comm::Communicator& comm = GangComm(ctx, &single);
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  if (SkipRemovedLayer(ctx, config)) return absl::OkStatus();
  if (layer < 0 || layer >= config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("calibrate: layer ", layer, " out of range"));
  }
  ChunkPlan plan;
  plan.rank = comm.rank();
  plan.ranks = comm.size();
  plan.chunk_windows = ctx.stage->Int("batch_size");
  at::Tensor window_tokens;
  MOEC_RETURN_IF_ERROR(PlanChunks(ctx, &plan, &window_tokens));
  const int experts = config.IsMoeLayer(layer) ? std::max(0, config.NumRoutedExperts(layer)) : 0;
  const std::vector<int> owner = AssignExperts(std::vector<int64_t>(experts, 1), comm.size());
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights weights,
                        runner->LoadLayer(layer, [&](int e) { return owner[e] == comm.rank(); }));
  const bool moe = weights.moe.has_value() && experts > 0 && weights.moe->router.defined();
  ExpertParallelExecutor executor(&comm, owner);
  const CalibrateLayer l{*runner, weights, executor, layer, experts, moe};
  std::map<int64_t, RouterStats> stats;
  for (int64_t round = 0; round < plan.rounds(); ++round) {
    if (ctx.IsCancelled()) return absl::CancelledError("calibrate cancelled");
    MOEC_RETURN_IF_ERROR(RunRound(ctx, l, plan, window_tokens, round, &stats));
  }
  LayerStats total;
  if (moe) MOEC_RETURN_IF_ERROR(GatherStats(comm, experts, stats, &total));
  if (comm.rank() != 0) return absl::OkStatus();
  MOEC_RETURN_IF_ERROR(PutChunkedWindows(ctx, plan));
  if (moe) MOEC_RETURN_IF_ERROR(PutStats(ctx, experts, total));
  return absl::OkStatus();
}

}  // namespace moec::stages
