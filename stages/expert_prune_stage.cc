#include "stages/expert_prune_stage.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"

namespace moec::stages {

using dataplane::AssignExperts;
using dataplane::CalibratedExpertTokens;
using dataplane::CalibrationTokens;
using dataplane::ChunkOutputName;
using dataplane::ChunkPlan;
using dataplane::ExpertParallelExecutor;
using dataplane::GangComm;
using dataplane::GetTensor;
using dataplane::NeededStage;
using dataplane::OpenJobModel;
using dataplane::PutChunkedWindows;
using dataplane::PutTensor;
using dataplane::ReadChunkedWindows;
using dataplane::ReadLayerInputWindows;
using dataplane::RunChunkRounds;

namespace {

// Captures the MoE block's input and output.
struct MoeCapture : model::ForwardObserver {
  void OnMoeInput(int, const at::Tensor& x) override { input = x.clone(); }
  void OnMoeOutput(int, const at::Tensor& y) override { output = y.clone(); }
  at::Tensor input, output;
};

// Every routed expert's output on every row of `x` ([rows, hidden]; zero rows when this rank
// has no chunk this round), [E, rows, hidden]: x goes to every rank, each owner runs the experts
// it owns (ascending) on the rows of every source and sends them back. Every rank calls it once
// per round.
absl::StatusOr<at::Tensor> DenseExpertOutputs(comm::Communicator& comm,
                                              const std::vector<int>& owner,
                                              const model::MoeWeights& w, int layer,
                                              const at::Tensor& x) {
  profile::ScopedPhase phase(profile::Phase::kForward);  // the experts, densely
  const int ranks = comm.size(), me = comm.rank();
  const int experts = static_cast<int>(owner.size());
  std::vector<int> mine;
  for (int e = 0; e < experts; ++e) {
    if (owner[e] == me) mine.push_back(e);
  }
  const int64_t rows = x.size(0);
  std::vector<int64_t> send(ranks, rows), recv;
  MOEC_ASSIGN_OR_RETURN(at::Tensor got,
                        comm.AllToAll(x.repeat({ranks, 1}).contiguous(), send, &recv));
  std::vector<at::Tensor> out;
  std::vector<int64_t> back(ranks, 0);
  int64_t at_row = 0;
  for (int s = 0; s < ranks; ++s) {
    const at::Tensor src = got.narrow(0, at_row, recv[s]);
    at_row += recv[s];
    for (int e : mine) {
      out.push_back(model::Mlp(w.experts[e], src, layer, model::LinearKind::kExpertGate, e, nullptr));
    }
    back[s] = static_cast<int64_t>(mine.size()) * recv[s];
  }
  const at::Tensor sendback =
      out.empty() ? at::empty({0, x.size(1)}, x.options()) : at::cat(out, 0).contiguous();
  std::vector<int64_t> from;
  MOEC_ASSIGN_OR_RETURN(at::Tensor ys, comm.AllToAll(sendback, back, &from));
  at::Tensor y = at::empty({experts, rows, x.size(1)}, x.options());
  int64_t pos = 0;
  for (int o = 0; o < ranks; ++o) {
    for (int e = 0; e < experts; ++e) {
      if (owner[e] != o) continue;
      y[e].copy_(ys.narrow(0, pos, rows));
      pos += rows;
    }
  }
  if (pos != ys.size(0)) {
    return absl::InternalError(absl::StrCat("layer ", layer, ": received ", ys.size(0),
                                            " expert output rows, expected ", pos));
  }
  return y;
}

// Windows of the job's calibration set (tokens at layer 0, else calibrate's `windows` record).
absl::StatusOr<int64_t> CalibrationWindowCount(const StageContext& ctx, const std::string& calibrate,
                                               at::Tensor* window_tokens) {
  const int layer = ctx.task->layer();
  if (layer == 0) {
    MOEC_ASSIGN_OR_RETURN(*window_tokens, CalibrationTokens(ctx));
    return window_tokens->size(0);
  }
  MOEC_ASSIGN_OR_RETURN(std::string prefix, ctx.InputKey(calibrate, layer - 1, ""));
  absl::StatusOr<ChunkPlan> stored = ReadChunkedWindows(ctx, prefix + outputs::kWindows);
  if (stored.ok()) return stored->windows;
  if (!absl::IsNotFound(stored.status())) return stored.status();
  MOEC_ASSIGN_OR_RETURN(at::Tensor hidden, GetTensor(ctx, prefix + outputs::kHidden));
  return hidden.size(0);
}

// Per-chunk losses of this rank ([my chunks][candidates]) to every candidate's sum over all
// chunks in chunk order (chunk c lives on rank c mod W as its round c / W), on every rank.
absl::StatusOr<std::vector<double>> SumInChunkOrder(comm::Communicator& comm, const ChunkPlan& plan,
                                                    const std::vector<std::vector<double>>& mine,
                                                    size_t candidates) {
  at::Tensor local = at::zeros({static_cast<int64_t>(mine.size()), static_cast<int64_t>(candidates)},
                               at::kDouble);
  for (size_t i = 0; i < mine.size(); ++i) {
    std::memcpy(local[static_cast<int64_t>(i)].data_ptr<double>(), mine[i].data(),
                candidates * sizeof(double));
  }
  MOEC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, comm.AllGather(local));
  std::vector<double> sum(candidates, 0.0);
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    const at::Tensor& part = all.at(static_cast<size_t>(c % plan.ranks));
    const int64_t row = c / plan.ranks;
    if (row >= part.size(0) || part.size(1) != static_cast<int64_t>(candidates)) {
      return absl::InternalError(absl::StrCat("rank ", c % plan.ranks, " sent no losses of chunk ", c));
    }
    const at::Tensor r = part[row].contiguous();
    const double* v = r.data_ptr<double>();
    for (size_t k = 0; k < candidates; ++k) sum[k] += v[k];
  }
  return sum;
}

// One expert_prune task: its parameters, the layer's model and this rank's calibration chunks.
struct PruneTask {
  PruneTask(StageContext& ctx, comm::Communicator& comm, model::ModelRunner& runner)
      : ctx(ctx), comm(comm), runner(runner) {}

  StageContext& ctx;
  comm::Communicator& comm;
  model::ModelRunner& runner;
  int layer = 0;
  int keep = 0;
  bool progressive = false;
  int64_t limit = 0;
  int experts = 0;  // routed experts of the layer
  ChunkPlan plan;
  // Per chunk of this rank: the unmodified model's residual stream entering the layer (the
  // calibrate chain) and, when progressive, this stage's own chain of pruned layers (else the
  // same).
  std::map<int64_t, at::Tensor> original, input;
};

// Reads this rank's chunks of both chains (the calibration batches are the chunks of the data
// plane).
absl::Status ReadChains(PruneTask& t, const std::string& calibrate) {
  at::Tensor window_tokens;
  MOEC_ASSIGN_OR_RETURN(t.plan.windows, CalibrationWindowCount(t.ctx, calibrate, &window_tokens));
  for (int64_t round = 0; round < t.plan.rounds(); ++round) {
    const int64_t chunk = t.plan.ChunkOf(round);
    if (chunk < 0) continue;
    MOEC_ASSIGN_OR_RETURN(t.original[chunk],
                          ReadLayerInputWindows(t.ctx, t.runner, window_tokens, calibrate,
                                                t.plan.First(chunk), t.plan.Count(chunk)));
    if (t.progressive && t.layer > 0) {
      MOEC_ASSIGN_OR_RETURN(t.input[chunk],
                            ReadLayerInputWindows(t.ctx, t.runner, window_tokens,
                                                  t.ctx.task->stage_id(), t.plan.First(chunk),
                                                  t.plan.Count(chunk)));
    } else {
      t.input[chunk] = t.original[chunk];
    }
  }
  return absl::OkStatus();
}

// With `progressive`, the layer as pruned (weights, its experts' owners) writes the next layer's
// input, chunk by chunk.
absl::Status WriteHidden(PruneTask& t, const model::LayerWeights& weights,
                         const std::vector<int>& owners) {
  if (!t.progressive) return absl::OkStatus();
  std::unique_ptr<ExpertParallelExecutor> executor;
  if (weights.moe.has_value() && weights.moe->router.defined() && !weights.moe->experts.empty()) {
    executor = std::make_unique<ExpertParallelExecutor>(&t.comm, owners);
  }
  MOEC_RETURN_IF_ERROR(RunChunkRounds(
      t.ctx, t.runner, weights, t.plan, t.input, executor.get(), nullptr,
      [&](int64_t chunk, const at::Tensor& out) {
        return PutBulk(t.ctx, ChunkOutputName(outputs::kHidden, chunk), out);
      },
      nullptr));
  return t.comm.rank() == 0 ? PutChunkedWindows(t.ctx, t.plan) : absl::OkStatus();
}

// The layer's routed forward on `hidden` (this rank's chunk of one of the chains), whose MoE
// block input and output it captures; a rank without a chunk still joins the experts'
// all_to_all.
absl::StatusOr<MoeCapture> ForwardChunk(PruneTask& t, const model::LayerWeights& w,
                                        ExpertParallelExecutor& executor, int64_t chunk,
                                        const std::map<int64_t, at::Tensor>& hidden) {
  MoeCapture capture;
  if (chunk >= 0) {
    t.runner.RunLayer(w, hidden.at(chunk), &capture, &executor);
  } else {
    capture.input = at::empty({0, t.runner.config().hidden_size},
                              at::TensorOptions(t.runner.device()).dtype(t.runner.dtype()));
    executor.RunIdle(t.runner, t.layer, *w.moe, nullptr);
  }
  MOEC_RETURN_IF_ERROR(executor.status());
  return capture;
}

// The batch of one round: the target (the original block's output), the block input along the
// chain, and every expert's output on every token, computed by the experts' owners.
absl::StatusOr<PruneBatch> CaptureBatch(PruneTask& t, const model::LayerWeights& w,
                                        const std::vector<int>& owner,
                                        ExpertParallelExecutor& executor, int64_t chunk) {
  const model::MoeWeights& moe = *w.moe;
  PruneBatch b;
  MOEC_ASSIGN_OR_RETURN(MoeCapture target, ForwardChunk(t, w, executor, chunk, t.original));
  b.z = target.output;
  b.x = target.input;
  if (t.progressive && t.layer > 0) {
    MOEC_ASSIGN_OR_RETURN(MoeCapture chain, ForwardChunk(t, w, executor, chunk, t.input));
    b.x = chain.input;
  }
  MOEC_ASSIGN_OR_RETURN(b.y, DenseExpertOutputs(t.comm, owner, moe, t.layer, b.x));
  if (chunk >= 0 && moe.shared.defined()) {
    b.shared = model::Mlp(moe.shared, b.x, t.layer, model::LinearKind::kSharedGate, -1, nullptr);
    if (moe.shared_expert_gate.defined()) {
      b.shared = at::sigmoid(at::linear(b.x, moe.shared_expert_gate)) * b.shared;
    }
  }
  return b;
}

// This rank's batches, by chunk.
using ChunkBatches = std::map<int64_t, PruneBatch>;

absl::StatusOr<ChunkBatches> CaptureBatches(PruneTask& t, const model::LayerWeights& w,
                                            const std::vector<int>& owner) {
  ExpertParallelExecutor executor(&t.comm, owner);
  ChunkBatches batches;
  for (int64_t round = 0; round < t.plan.rounds(); ++round) {
    if (t.ctx.IsCancelled()) return absl::CancelledError("expert_prune cancelled");
    const int64_t chunk = t.plan.ChunkOf(round);
    MOEC_ASSIGN_OR_RETURN(PruneBatch b, CaptureBatch(t, w, owner, executor, chunk));
    if (chunk < 0) continue;
    batches.emplace(chunk, std::move(b));
    t.ctx.progress(0.5 * (round + 1) / t.plan.rounds(),
                   absl::StrCat("layer ", t.layer, ": expert outputs"));
  }
  return batches;
}

// Candidates scored on this rank's chunks, summed over all chunks in chunk order.
absl::StatusOr<SubsetSearchResult> SearchOnGang(PruneTask& t, const ChunkBatches& batches,
                                                const at::Tensor& router,
                                                const model::RoutingRule& rule, int64_t seq) {
  profile::ScopedPhase phase(profile::Phase::kSolve);
  const int experts = t.experts;
  const int kept_count = std::min(t.keep, experts);
  const int64_t total = CappedBinomial(experts, experts - kept_count, t.limit);
  int64_t scored = 0;
  return SearchExpertSubset(
      experts, kept_count, t.limit,
      [&](const std::vector<std::vector<int>>& candidates) -> absl::StatusOr<std::vector<double>> {
        if (t.ctx.IsCancelled()) return absl::CancelledError("expert_prune cancelled");
        std::vector<std::vector<double>> mine;
        for (const auto& [chunk, b] : batches) {
          std::vector<double>& row = mine.emplace_back();
          for (const std::vector<int>& kept : candidates) {
            row.push_back(BatchLoss(b, router, rule, kept, seq));
          }
        }
        MOEC_ASSIGN_OR_RETURN(std::vector<double> sums,
                              SumInChunkOrder(t.comm, t.plan, mine, candidates.size()));
        scored += static_cast<int64_t>(candidates.size());
        if (total <= t.limit) {
          t.ctx.progress(0.5 + 0.4 * static_cast<double>(scored) / static_cast<double>(total),
                         absl::StrCat("layer ", t.layer, ": ", scored, "/", total, " candidates"));
        }
        return sums;
      });
}

absl::Status PutSearchResult(StageContext& ctx, const SubsetSearchResult& r) {
  MOEC_RETURN_IF_ERROR(PutTensor(
      ctx, outputs::kKeptExperts,
      at::tensor(std::vector<int64_t>(r.kept.begin(), r.kept.end()), at::kLong)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kPruneLosses, at::tensor(r.losses, at::kDouble)));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kPruneLoss, at::full({1}, r.loss, at::kDouble)));
  return absl::OkStatus();
}

// The layer `w` with only the experts `kept`; their owners in `pruned_owner`.
model::LayerWeights PrunedLayer(const model::LayerWeights& w, const std::vector<int>& owner,
                                const std::vector<int>& kept, std::vector<int>* pruned_owner) {
  const model::MoeWeights& moe = *w.moe;
  model::LayerWeights pruned = w;
  const at::Tensor ids = at::tensor(std::vector<int64_t>(kept.begin(), kept.end()), at::kLong);
  pruned.moe->router = moe.router.index_select(0, ids);
  pruned.moe->experts.clear();
  for (int e : kept) {
    pruned.moe->experts.push_back(moe.experts[e]);
    pruned_owner->push_back(owner[e]);
  }
  return pruned;
}

}  // namespace

absl::Status ExpertPruneStage::Run(StageContext& ctx) {
  std::unique_ptr<comm::Communicator> single;
  comm::Communicator& comm = GangComm(ctx, &single);
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  const int keep = static_cast<int>(ctx.stage->Int("keep"));
  const bool progressive = ctx.stage->Str("mode") == "progressive";
  const int64_t limit = ctx.stage->Int("exhaustive_limit");
  const int64_t batch = ctx.stage->Int("batch_size");
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();

  // This rank's inputs: its chunks of the calibration windows along both chains.
  PruneTask t(ctx, comm, *runner);
  t.layer = layer;
  t.keep = keep;
  t.progressive = progressive;
  t.limit = limit;
  t.plan.rank = comm.rank();
  t.plan.ranks = comm.size();
  t.plan.chunk_windows = batch;
  MOEC_RETURN_IF_ERROR(ReadChains(t, calibrate));
  t.experts = config.IsMoeLayer(layer) ? config.NumRoutedExperts(layer) : 0;
  const int experts = t.experts;
  std::vector<int64_t> expert_tokens = CalibratedExpertTokens(ctx, layer, experts);
  if (expert_tokens.empty()) expert_tokens.assign(experts, 1);
  const std::vector<int> owner = AssignExperts(expert_tokens, comm.size());
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w,
                        runner->LoadLayer(layer, [&](int e) { return owner[e] == comm.rank(); }));
  const model::RoutingRule rule = model::RoutingRuleFor(config, layer);
  if (experts == 0 || !w.moe || !w.moe->router.defined()) return WriteHidden(t, w, owner);
  if (progressive && keep < rule.top_k) {
    return absl::InvalidArgumentError(absl::StrCat("progressive expert_prune needs keep >= ",
                                                   rule.top_k, " (experts per token)"));
  }
  const int64_t seq = t.original.empty() ? 1 : t.original.begin()->second.size(1);
  MOEC_ASSIGN_OR_RETURN(const ChunkBatches batches, CaptureBatches(t, w, owner));
  MOEC_ASSIGN_OR_RETURN(SubsetSearchResult r, SearchOnGang(t, batches, w.moe->router, rule, seq));
  if (comm.rank() == 0) MOEC_RETURN_IF_ERROR(PutSearchResult(ctx, r));
  std::vector<int> pruned_owner;
  const model::LayerWeights pruned = PrunedLayer(w, owner, r.kept, &pruned_owner);
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": kept ", r.kept.size(), " of ", experts,
                                 r.exhaustive ? " (exhaustive)" : " (greedy)", " on ", comm.size(),
                                 comm.size() == 1 ? " rank" : " ranks"));
  return WriteHidden(t, pruned, pruned_owner);
}

}  // namespace moec::stages
