#include "stages/expert_prune_stage.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "comm/communicator.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
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

double BatchLoss(const PruneBatch& b, const at::Tensor& router, const model::RoutingRule& rule,
                 const std::vector<int>& kept, int64_t seq) {
  return (b.z - MaskedBlockOutput(b, router, rule, kept, seq)).to(at::kDouble).norm().item<double>();
}

absl::StatusOr<SubsetSearchResult> SearchExpertSubset(int experts, int keep,
                                                      int64_t exhaustive_limit,
                                                      const CandidateScorer& score, size_t block) {
  if (keep < 1 || keep > experts) {
    return absl::InvalidArgumentError(absl::StrCat("keep ", keep, " of ", experts, " experts"));
  }
  block = std::max<size_t>(1, block);
  SubsetSearchResult result;
  result.loss = std::numeric_limits<double>::infinity();
  // Scores `candidates` in blocks, appending to result.losses; returns the index of the first
  // best one (ties: the first, as the reference's strict `<`).
  auto score_all = [&](const std::vector<std::vector<int>>& candidates) -> absl::StatusOr<size_t> {
    size_t best = 0;
    double best_loss = std::numeric_limits<double>::infinity();
    for (size_t s = 0; s < candidates.size(); s += block) {
      const std::vector<std::vector<int>> part(
          candidates.begin() + s, candidates.begin() + std::min(candidates.size(), s + block));
      MOEC_ASSIGN_OR_RETURN(std::vector<double> losses, score(part));
      if (losses.size() != part.size()) {
        return absl::InternalError(absl::StrCat("scorer returned ", losses.size(), " losses for ",
                                                part.size(), " candidates"));
      }
      for (size_t i = 0; i < losses.size(); ++i) {
        result.losses.push_back(losses[i]);
        if (losses[i] < best_loss) {
          best_loss = losses[i];
          best = s + i;
        }
      }
    }
    return best;
  };
  const int drop = experts - keep;
  if (Choose(experts, drop, exhaustive_limit) <= exhaustive_limit) {
    // Drop sets in lexicographic order, as itertools.combinations enumerates them.
    std::vector<std::vector<int>> candidates;
    std::vector<int> d(drop);
    std::iota(d.begin(), d.end(), 0);
    while (true) {
      std::vector<int> kept;
      for (int e = 0, j = 0; e < experts; ++e) {
        if (j < drop && d[j] == e) ++j;
        else kept.push_back(e);
      }
      candidates.push_back(std::move(kept));
      int i = drop - 1;
      while (i >= 0 && d[i] == experts - drop + i) --i;
      if (i < 0) break;
      ++d[i];
      for (int j = i + 1; j < drop; ++j) d[j] = d[j - 1] + 1;
    }
    MOEC_ASSIGN_OR_RETURN(size_t best, score_all(candidates));
    result.kept = candidates[best];
    result.loss = result.losses[best];
    return result;
  }
  // Greedy: remove, one at a time, the expert whose removal costs least.
  result.exhaustive = false;
  std::vector<int> current(experts);
  std::iota(current.begin(), current.end(), 0);
  while (static_cast<int>(current.size()) > keep) {
    std::vector<std::vector<int>> candidates;
    for (size_t i = 0; i < current.size(); ++i) {
      std::vector<int> candidate = current;
      candidate.erase(candidate.begin() + static_cast<std::ptrdiff_t>(i));
      candidates.push_back(std::move(candidate));
    }
    const size_t first = result.losses.size();
    MOEC_ASSIGN_OR_RETURN(size_t best, score_all(candidates));
    result.loss = result.losses[first + best];
    current = candidates[best];
  }
  result.kept = current;
  return result;
}

absl::StatusOr<SubsetSearchResult> SearchExpertSubset(const std::vector<PruneBatch>& batches,
                                                      const at::Tensor& router,
                                                      const model::RoutingRule& rule, int keep,
                                                      int64_t exhaustive_limit, int64_t seq) {
  return SearchExpertSubset(
      static_cast<int>(router.size(0)), keep, exhaustive_limit,
      [&](const std::vector<std::vector<int>>& candidates) -> absl::StatusOr<std::vector<double>> {
        std::vector<double> out;
        for (const std::vector<int>& kept : candidates) {
          double sum = 0;
          for (const PruneBatch& b : batches) sum += BatchLoss(b, router, rule, kept, seq);
          out.push_back(sum);
        }
        return out;
      });
}

namespace {

// Every routed expert's output on every row of `x` ([rows, hidden]; zero rows when this rank
// has no chunk this round), [E, rows, hidden]: x goes to every rank, each owner runs the experts
// it owns (ascending) on the rows of every source and sends them back. Every rank calls it once
// per round.
absl::StatusOr<at::Tensor> DenseExpertOutputs(comm::Communicator& comm,
                                              const std::vector<int>& owner,
                                              const model::MoeWeights& w, int layer,
                                              const at::Tensor& x) {
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

  // The calibration batches are the chunks of the data plane; this rank's inputs: the
  // unmodified model's residual stream entering the layer (the calibrate chain) and, when
  // progressive, this stage's own chain of pruned layers.
  ChunkPlan plan;
  plan.rank = comm.rank();
  plan.ranks = comm.size();
  plan.chunk_windows = batch;
  at::Tensor window_tokens;
  MOEC_ASSIGN_OR_RETURN(plan.windows, CalibrationWindowCount(ctx, calibrate, &window_tokens));
  std::map<int64_t, at::Tensor> original, input;
  for (int64_t round = 0; round < plan.rounds(); ++round) {
    const int64_t chunk = plan.ChunkOf(round);
    if (chunk < 0) continue;
    MOEC_ASSIGN_OR_RETURN(original[chunk],
                          ReadLayerInputWindows(ctx, *runner, window_tokens, calibrate,
                                                plan.First(chunk), plan.Count(chunk)));
    if (progressive && layer > 0) {
      MOEC_ASSIGN_OR_RETURN(input[chunk],
                            ReadLayerInputWindows(ctx, *runner, window_tokens, ctx.task->stage_id(),
                                                  plan.First(chunk), plan.Count(chunk)));
    } else {
      input[chunk] = original[chunk];
    }
  }
  const int experts = config.IsMoeLayer(layer) ? config.NumRoutedExperts(layer) : 0;
  std::vector<int64_t> expert_tokens = CalibratedExpertTokens(ctx, layer, experts);
  if (expert_tokens.empty()) expert_tokens.assign(experts, 1);
  const std::vector<int> owner = AssignExperts(expert_tokens, comm.size());
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights w,
                        runner->LoadLayer(layer, [&](int e) { return owner[e] == comm.rank(); }));
  const model::RoutingRule rule = model::RoutingRuleFor(config, layer);

  // With `progressive`, the layer as pruned (weights, its experts' owners) writes the next
  // layer's input, chunk by chunk.
  auto write_hidden = [&](const model::LayerWeights& weights,
                          const std::vector<int>& owners) -> absl::Status {
    if (!progressive) return absl::OkStatus();
    std::unique_ptr<ExpertParallelExecutor> executor;
    if (weights.moe.has_value() && weights.moe->router.defined() && !weights.moe->experts.empty()) {
      executor = std::make_unique<ExpertParallelExecutor>(&comm, owners);
    }
    MOEC_RETURN_IF_ERROR(RunChunkRounds(
        ctx, *runner, weights, plan, input, executor.get(), nullptr,
        [&](int64_t chunk, const at::Tensor& out) {
          return PutTensor(ctx, ChunkOutputName(outputs::kHidden, chunk), out);
        },
        nullptr));
    return comm.rank() == 0 ? PutChunkedWindows(ctx, plan) : absl::OkStatus();
  };
  if (experts == 0 || !w.moe || !w.moe->router.defined()) return write_hidden(w, owner);
  if (progressive && keep < rule.top_k) {
    return absl::InvalidArgumentError(absl::StrCat("progressive expert_prune needs keep >= ",
                                                   rule.top_k, " (experts per token)"));
  }
  const model::MoeWeights& moe = *w.moe;
  const int64_t seq = original.empty() ? 1 : original.begin()->second.size(1);

  // Per chunk: the target (the original block's output), the block input along the chain, and
  // every expert's output on every token, computed by the experts' owners.
  ExpertParallelExecutor executor(&comm, owner);
  std::map<int64_t, PruneBatch> batches;
  for (int64_t round = 0; round < plan.rounds(); ++round) {
    if (ctx.IsCancelled()) return absl::CancelledError("expert_prune cancelled");
    const int64_t chunk = plan.ChunkOf(round);
    // The layer's routed forward on `hidden` (this rank's chunk of one of the chains), whose
    // MoE block input and output it captures; a rank without a chunk still joins the experts'
    // all_to_all.
    auto forward = [&](const std::map<int64_t, at::Tensor>& hidden) -> absl::StatusOr<MoeCapture> {
      MoeCapture capture;
      if (chunk >= 0) {
        runner->RunLayer(w, hidden.at(chunk), &capture, &executor);
      } else {
        capture.input = at::empty({0, config.hidden_size}, runner->dtype());
        executor.Run(layer, moe, capture.input, std::vector<int64_t>(experts, 0),
                     at::empty({0}, at::kLong), nullptr);
      }
      MOEC_RETURN_IF_ERROR(executor.status());
      return capture;
    };
    PruneBatch b;
    MOEC_ASSIGN_OR_RETURN(MoeCapture target, forward(original));
    b.z = target.output;
    b.x = target.input;
    if (progressive && layer > 0) {
      MOEC_ASSIGN_OR_RETURN(MoeCapture chain, forward(input));
      b.x = chain.input;
    }
    MOEC_ASSIGN_OR_RETURN(b.y, DenseExpertOutputs(comm, owner, moe, layer, b.x));
    if (chunk < 0) continue;
    if (moe.shared.defined()) {
      b.shared = model::Mlp(moe.shared, b.x, layer, model::LinearKind::kSharedGate, -1, nullptr);
      if (moe.shared_expert_gate.defined()) {
        b.shared = at::sigmoid(at::linear(b.x, moe.shared_expert_gate)) * b.shared;
      }
    }
    batches.emplace(chunk, std::move(b));
    ctx.progress(0.5 * (round + 1) / plan.rounds(), absl::StrCat("layer ", layer, ": expert outputs"));
  }

  // Candidates scored on this rank's chunks, summed over all chunks in chunk order.
  const int kept_count = std::min(keep, experts);
  const int64_t total = Choose(experts, experts - kept_count, limit);
  int64_t scored = 0;
  MOEC_ASSIGN_OR_RETURN(
      SubsetSearchResult r,
      SearchExpertSubset(
          experts, kept_count, limit,
          [&](const std::vector<std::vector<int>>& candidates) -> absl::StatusOr<std::vector<double>> {
            if (ctx.IsCancelled()) return absl::CancelledError("expert_prune cancelled");
            std::vector<std::vector<double>> mine;
            for (const auto& [chunk, b] : batches) {
              std::vector<double>& row = mine.emplace_back();
              for (const std::vector<int>& kept : candidates) {
                row.push_back(BatchLoss(b, moe.router, rule, kept, seq));
              }
            }
            MOEC_ASSIGN_OR_RETURN(std::vector<double> sums,
                                  SumInChunkOrder(comm, plan, mine, candidates.size()));
            scored += static_cast<int64_t>(candidates.size());
            if (total <= limit) {
              ctx.progress(0.5 + 0.4 * static_cast<double>(scored) / static_cast<double>(total),
                           absl::StrCat("layer ", layer, ": ", scored, "/", total, " candidates"));
            }
            return sums;
          }));
  if (comm.rank() == 0) {
    MOEC_RETURN_IF_ERROR(PutTensor(
        ctx, outputs::kKeptExperts,
        at::tensor(std::vector<int64_t>(r.kept.begin(), r.kept.end()), at::kLong)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kPruneLosses, at::tensor(r.losses, at::kDouble)));
    MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kPruneLoss, at::full({1}, r.loss, at::kDouble)));
  }
  model::LayerWeights pruned = w;
  const at::Tensor ids = at::tensor(std::vector<int64_t>(r.kept.begin(), r.kept.end()), at::kLong);
  pruned.moe->router = moe.router.index_select(0, ids);
  pruned.moe->experts.clear();
  std::vector<int> pruned_owner;
  for (int e : r.kept) {
    pruned.moe->experts.push_back(moe.experts[e]);
    pruned_owner.push_back(owner[e]);
  }
  ctx.progress(1.0, absl::StrCat("layer ", layer, ": kept ", r.kept.size(), " of ", experts,
                                 r.exhaustive ? " (exhaustive)" : " (greedy)", " on ", comm.size(),
                                 comm.size() == 1 ? " rank" : " ranks"));
  return write_hidden(pruned, pruned_owner);
}

}  // namespace moec::stages
