#include "dataplane/expert_parallel.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "model/runtime/layers.h"

namespace moec::dataplane {

std::vector<int> AssignExperts(const std::vector<int64_t>& tokens, int ranks) {
  std::vector<int> order(tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return tokens[a] > tokens[b]; });
  std::vector<int64_t> load(std::max(1, ranks), 0);
  std::vector<int> owned(load.size(), 0);
  std::vector<int> owner(tokens.size(), 0);
  for (int e : order) {
    int best = 0;
    for (int r = 1; r < static_cast<int>(load.size()); ++r) {
      // Least tokens, then fewest experts (so experts without tokens still spread), then rank.
      if (load[r] < load[best] || (load[r] == load[best] && owned[r] < owned[best])) best = r;
    }
    owner[e] = best;
    load[best] += tokens[e];
    ++owned[best];
  }
  return owner;
}

std::vector<int64_t> CalibratedExpertTokens(const StageContext& ctx, int layer, int experts) {
  absl::StatusOr<std::string> calibrate = NeededStage(ctx, "calibrate");
  if (!calibrate.ok()) return {};
  absl::StatusOr<std::string> key = ctx.InputKey(*calibrate, layer, outputs::kExpertTokens);
  if (!key.ok()) return {};
  absl::StatusOr<at::Tensor> counts = GetTensor(ctx, *key);
  if (!counts.ok() || counts->numel() != experts) return {};
  at::Tensor c = counts->to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + experts);
}

at::Tensor ExpertParallelExecutor::Run(int layer, const model::MoeWeights& w,
                                       const at::Tensor& rows, const std::vector<int64_t>& counts,
                                       const at::Tensor& token_index,
                                       model::ForwardObserver* observer, model::LayerMemo* memo) {
  if (status_.ok()) {
    absl::StatusOr<at::Tensor> y = RunOrError(layer, w, rows, counts, token_index, observer, memo);
    if (y.ok()) return *y;
    status_ = y.status();
  }
  return at::zeros_like(rows);
}

namespace {

// The owner's side of ExpertParallelExecutor::Run: every source's rows (`recv_counts` of them
// each, one chunk each, in chunk order; `in_meta` [rows, 2] their expert and token) through the
// experts this rank owns, expert by expert.
absl::StatusOr<at::Tensor> RunOwnedExperts(int layer, const model::MoeWeights& w,
                                           const std::vector<int>& owner, int rank,
                                           const at::Tensor& in_rows, const at::Tensor& in_meta,
                                           const std::vector<int64_t>& recv_counts,
                                           model::ForwardObserver* observer,
                                           model::LayerMemo* memo) {
  const int n = static_cast<int>(owner.size());
  at::Tensor out_rows = at::empty_like(in_rows);
  const int64_t* m = in_meta.data_ptr<int64_t>();
  int64_t pos = 0;
  for (size_t s = 0; s < recv_counts.size(); ++s) {
    const int64_t end = pos + recv_counts[s];
    while (pos < end) {
      const int64_t e = m[2 * pos];
      int64_t run = 1;
      while (pos + run < end && m[2 * (pos + run)] == e) ++run;
      if (e < 0 || e >= n || owner[e] != rank) {
        return absl::InternalError(absl::StrCat("layer ", layer, ": received rows of expert ", e,
                                                " which rank ", rank, " does not own"));
      }
      out_rows.narrow(0, pos, run)
          .copy_(model::Mlp(w.experts[e], in_rows.narrow(0, pos, run), layer,
                            model::LinearKind::kExpertGate, static_cast<int>(e), observer,
                            in_meta.select(1, 1).narrow(0, pos, run), memo));
      pos += run;
    }
  }
  return out_rows;
}

}  // namespace

void ExpertParallelExecutor::RunIdle(const model::ModelRunner& runner, int layer,
                                     const model::MoeWeights& w, model::ForwardObserver* observer,
                                     model::LayerMemo* memo) {
  // As many experts as the weights hold (a pruned layer may have fewer than the config).
  const int experts = static_cast<int>(w.experts.size());
  const at::Tensor rows = at::empty({0, runner.config().hidden_size},
                                    at::TensorOptions(runner.device()).dtype(runner.dtype()));
  Run(layer, w, rows, std::vector<int64_t>(experts, 0), at::empty({0}, at::kLong), observer, memo);
}

absl::StatusOr<at::Tensor> ExpertParallelExecutor::RunOrError(
    int layer, const model::MoeWeights& w, const at::Tensor& rows,
    const std::vector<int64_t>& counts, const at::Tensor& token_index,
    model::ForwardObserver* observer, model::LayerMemo* memo) {
  const int ranks = comm_->size();
  const int n = static_cast<int>(counts.size());
  if (n != static_cast<int>(owner_.size())) {
    return absl::InternalError(absl::StrCat("layer ", layer, ": ", n, " experts routed, ",
                                            owner_.size(), " owners"));
  }
  std::vector<int64_t> offset(n + 1, 0);
  for (int e = 0; e < n; ++e) offset[e + 1] = offset[e] + counts[e];
  // Rows grouped by owner rank, experts ascending within an owner.
  std::vector<int64_t> perm, expert_of;
  std::vector<int64_t> send_counts(ranks, 0);
  perm.reserve(offset[n]);
  for (int o = 0; o < ranks; ++o) {
    for (int e = 0; e < n; ++e) {
      if (owner_[e] != o) continue;
      for (int64_t i = offset[e]; i < offset[e + 1]; ++i) {
        perm.push_back(i);
        expert_of.push_back(e);
      }
      send_counts[o] += counts[e];
    }
  }
  // Rows stay on the task's device; their metadata (expert, token) is read on the host.
  const at::Tensor p = at::tensor(perm, at::kLong);
  const at::Tensor p_rows = p.to(rows.device());
  const at::Tensor tokens = token_index.defined() ? token_index.to(at::kCPU, at::kLong)
                                                  : at::zeros({offset[n]}, at::kLong);
  at::Tensor meta = at::stack({at::tensor(expert_of, at::kLong).reshape({-1}),
                               tokens.index_select(0, p)}, 1);
  std::vector<int64_t> recv_counts;
  MOEC_ASSIGN_OR_RETURN(at::Tensor in_rows,
                        comm_->AllToAll(rows.index_select(0, p_rows), send_counts, &recv_counts));
  MOEC_ASSIGN_OR_RETURN(at::Tensor in_meta, comm_->AllToAll(meta, send_counts, nullptr));
  MOEC_ASSIGN_OR_RETURN(at::Tensor out_rows,
                        RunOwnedExperts(layer, w, owner_, comm_->rank(), in_rows, in_meta,
                                        recv_counts, observer, memo));
  MOEC_ASSIGN_OR_RETURN(at::Tensor back, comm_->AllToAll(out_rows, recv_counts, nullptr));
  at::Tensor y = at::empty_like(rows);
  if (y.size(0) > 0) y.index_copy_(0, p_rows, back);
  return y;
}

std::string ChunkOutputName(absl::string_view name, int64_t chunk) {
  return absl::StrFormat("%s.c%05d", name, chunk);
}

absl::StatusOr<at::Tensor> CalibrationTokens(const StageContext& ctx) {
  MOEC_ASSIGN_OR_RETURN(model::TokenWindows windows, CalibrationWindows(ctx));
  return at::from_blob(windows.tokens.data(), {windows.count(), windows.seqlen}, at::kInt)
      .to(at::kLong);
}

absl::StatusOr<at::Tensor> LayerInputChunk(const StageContext& ctx,
                                           const model::ModelRunner& runner,
                                           const at::Tensor& window_tokens,
                                           const ChunkPlan& plan, int64_t chunk) {
  if (ctx.task->layer() == 0) {
    return runner.Embed(window_tokens.narrow(0, plan.First(chunk), plan.Count(chunk)));
  }
  MOEC_ASSIGN_OR_RETURN(std::string key,
                        ctx.PreviousLayerKey(ChunkOutputName(outputs::kHidden, chunk)));
  absl::StatusOr<at::Tensor> t = GetTensor(ctx, key);
  if (absl::IsNotFound(t.status())) {
    MOEC_ASSIGN_OR_RETURN(std::string whole, ctx.PreviousLayerKey(outputs::kHidden));
    MOEC_ASSIGN_OR_RETURN(at::Tensor all, GetTensor(ctx, whole));
    return all.narrow(0, plan.First(chunk), plan.Count(chunk));
  }
  return t;
}

absl::StatusOr<ChunkPlan> ReadChunkedWindows(const StageContext& ctx, const std::string& key) {
  MOEC_ASSIGN_OR_RETURN(at::Tensor w, GetTensor(ctx, key));
  if (w.numel() != 2 || w.scalar_type() != at::kLong || w[0].item<int64_t>() < 0 ||
      w[1].item<int64_t>() < 1) {
    return absl::DataLossError(absl::StrCat(key, " is not {windows, chunk_windows}"));
  }
  ChunkPlan plan;
  plan.windows = w[0].item<int64_t>();
  plan.chunk_windows = w[1].item<int64_t>();
  return plan;
}

int64_t DefaultChunkWindows(int64_t seqlen, int64_t chunk_tokens) {
  seqlen = std::max<int64_t>(seqlen, 1);
  return std::max(kMinChunkWindows, (std::max<int64_t>(chunk_tokens, 0) + seqlen - 1) / seqlen);
}

int64_t GangChunkWindows(int64_t windows, int64_t seqlen, int64_t chunk_tokens, int ranks) {
  const int64_t per_rank = windows / (2 * std::max(1, ranks));
  return std::max<int64_t>(1, std::min(DefaultChunkWindows(seqlen, chunk_tokens), per_rank));
}

absl::Status PlanChunks(const StageContext& ctx, ChunkPlan* plan, at::Tensor* window_tokens) {
  if (plan->chunk_windows < 0) return absl::InvalidArgumentError("chunks need at least one window");
  if (ctx.task->layer() == 0) {
    MOEC_ASSIGN_OR_RETURN(*window_tokens, CalibrationTokens(ctx));
    plan->windows = window_tokens->size(0);
    if (plan->chunk_windows == kAutoChunkWindows) {
      const int64_t tokens = ctx.recipe->calibration ? ctx.recipe->calibration->chunk_tokens : 0;
      plan->chunk_windows = GangChunkWindows(plan->windows, window_tokens->size(1), tokens,
                                             ctx.task->group_size());
    }
    return absl::OkStatus();
  }
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx.PreviousLayerKey(outputs::kWindows));
  MOEC_ASSIGN_OR_RETURN(ChunkPlan stored, ReadChunkedWindows(ctx, key));
  plan->windows = stored.windows;
  plan->chunk_windows = stored.chunk_windows;
  return absl::OkStatus();
}

absl::Status PutChunkedWindows(StageContext& ctx, const ChunkPlan& plan) {
  return PutTensor(ctx, outputs::kWindows, at::tensor({plan.windows, plan.chunk_windows}, at::kLong));
}

absl::StatusOr<at::Tensor> ReadChunkedTensor(const StageContext& ctx, const std::string& prefix,
                                             absl::string_view name) {
  const std::string key = absl::StrCat(prefix, name);
  absl::StatusOr<at::Tensor> whole = GetTensor(ctx, key);
  if (!absl::IsNotFound(whole.status())) return whole;
  MOEC_ASSIGN_OR_RETURN(ChunkPlan plan, ReadChunkedWindows(ctx, prefix + outputs::kWindows));
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor part, GetTensor(ctx, prefix + ChunkOutputName(name, c)));
    parts.push_back(part);
  }
  if (parts.empty()) return absl::NotFoundError(absl::StrCat(key, ": no chunks"));
  return at::cat(parts, 0);
}

absl::StatusOr<at::Tensor> ReadChunkedOutput(const StageContext& ctx, absl::string_view stage_id,
                                             int layer, absl::string_view name) {
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(stage_id, layer, ""));
  return ReadChunkedTensor(ctx, key, name);
}

absl::StatusOr<at::Tensor> ReadLayerInputWindows(const StageContext& ctx,
                                                 const model::ModelRunner& runner,
                                                 const at::Tensor& window_tokens,
                                                 absl::string_view stage_id, int64_t first,
                                                 int64_t count) {
  const int layer = ctx.task->layer();
  if (layer == 0) return runner.Embed(window_tokens.narrow(0, first, count));
  MOEC_ASSIGN_OR_RETURN(std::string prefix, ctx.InputKey(stage_id, layer - 1, ""));
  absl::StatusOr<at::Tensor> whole = GetTensor(ctx, prefix + outputs::kHidden);
  if (whole.ok()) return whole->narrow(0, first, count);
  if (!absl::IsNotFound(whole.status())) return whole.status();
  MOEC_ASSIGN_OR_RETURN(ChunkPlan stored, ReadChunkedWindows(ctx, prefix + outputs::kWindows));
  const int64_t per = stored.chunk_windows;
  std::vector<at::Tensor> parts;
  for (int64_t c = first / per; c * per < first + count; ++c) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor part, GetTensor(ctx, prefix + ChunkOutputName(outputs::kHidden, c)));
    const int64_t lo = std::max(first, c * per), hi = std::min(first + count, c * per + part.size(0));
    if (hi <= lo) return absl::DataLossError(absl::StrCat(prefix, "hidden chunk ", c, " is short"));
    parts.push_back(part.narrow(0, lo - c * per, hi - lo));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

comm::Communicator& GangComm(StageContext& ctx, std::unique_ptr<comm::Communicator>* fallback) {
  if (ctx.comm != nullptr) return *ctx.comm;
  if (*fallback == nullptr) *fallback = comm::NewSingleRankCommunicator();
  return **fallback;
}

absl::Status RunChunkRounds(const StageContext& ctx, const model::ModelRunner& runner,
                            const model::LayerWeights& w, const ChunkPlan& plan,
                            const std::map<int64_t, at::Tensor>& inputs,
                            ExpertParallelExecutor* executor, model::ForwardObserver* observer,
                            const std::function<absl::Status(int64_t, const at::Tensor&)>& on_output,
                            const std::function<absl::Status()>& after_round,
                            std::vector<model::LayerMemo>* memo) {
  if (memo != nullptr && !memo->empty() && static_cast<int64_t>(memo->size()) != plan.rounds()) {
    return absl::InternalError(absl::StrCat("layer ", w.layer, ": ", memo->size(),
                                            " memos for ", plan.rounds(), " rounds"));
  }
  for (int64_t round = 0; round < plan.rounds(); ++round) {
    if (ctx.IsCancelled()) return absl::CancelledError(absl::StrCat(ctx.task->task_id(), " cancelled"));
    const int64_t chunk = plan.ChunkOf(round);
    model::LayerMemo* m = memo != nullptr && !memo->empty() ? &(*memo)[round] : nullptr;
    if (m != nullptr) m->Rewind();
    if (chunk >= 0) {
      at::Tensor out = runner.RunLayer(w, inputs.at(chunk), observer, executor, m);
      if (executor != nullptr) MOEC_RETURN_IF_ERROR(executor->status());
      if (on_output) MOEC_RETURN_IF_ERROR(on_output(chunk, out));
    } else if (executor != nullptr &&
               (observer == nullptr || model::ReachesMlp(observer->Extent(w.layer)))) {
      // An idle rank takes part in the experts' exchanges, which a pass that stops in the
      // attention never reaches.
      executor->RunIdle(runner, w.layer, *w.moe, observer, m);
      MOEC_RETURN_IF_ERROR(executor->status());
    }
    if (after_round) MOEC_RETURN_IF_ERROR(after_round());
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> MergeRankObjects(comm::Communicator& comm, const nlohmann::json& mine) {
  const std::string text = mine.dump();
  at::Tensor bytes = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::memcpy(bytes.data_ptr(), text.data(), text.size());
  MOEC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all, comm.AllGather(bytes));
  nlohmann::json merged = nlohmann::json::object();
  for (const at::Tensor& t : all) {
    at::Tensor part_bytes = t.contiguous();
    nlohmann::json part = nlohmann::json::parse(
        std::string(static_cast<const char*>(part_bytes.data_ptr()), part_bytes.numel()), nullptr, false);
    if (!part.is_object()) return absl::DataLossError("a rank sent a malformed summary");
    merged.update(part);
  }
  return merged;
}

absl::StatusOr<LayerShard> OpenLayerShard(const StageContext& ctx, comm::Communicator& comm,
                                          const model::ModelRunner& runner) {
  const int layer = ctx.task->layer();
  LayerShard shard;
  shard.plan.rank = comm.rank();
  shard.plan.ranks = comm.size();
  at::Tensor window_tokens;
  MOEC_RETURN_IF_ERROR(PlanChunks(ctx, &shard.plan, &window_tokens));
  for (int64_t round = 0; round < shard.plan.rounds(); ++round) {
    const int64_t chunk = shard.plan.ChunkOf(round);
    if (chunk < 0) continue;
    MOEC_ASSIGN_OR_RETURN(shard.inputs[chunk],
                          LayerInputChunk(ctx, runner, window_tokens, shard.plan, chunk));
  }
  // Expert owners balance calibrated token counts when a `calibrate` stage is among the needs,
  // else the number of experts. Each rank reads only the experts it owns.
  const int experts = std::max(0, runner.config().NumRoutedExperts(layer));
  std::vector<int64_t> expert_tokens = CalibratedExpertTokens(ctx, layer, experts);
  if (expert_tokens.empty()) expert_tokens.assign(experts, 1);
  shard.expert_owner = AssignExperts(expert_tokens, comm.size());
  const int rank = comm.rank();
  MOEC_ASSIGN_OR_RETURN(shard.weights,
                        runner.LoadLayer(layer, [&](int e) { return shard.expert_owner[e] == rank; }));
  if (shard.weights.moe.has_value() && experts > 0 && shard.weights.moe->router.defined()) {
    shard.executor = std::make_unique<ExpertParallelExecutor>(&comm, shard.expert_owner);
  }
  return shard;
}

absl::Status RunShardRounds(const StageContext& ctx, const model::ModelRunner& runner,
                            LayerShard& shard, model::ForwardObserver* observer,
                            const std::function<absl::Status(int64_t, const at::Tensor&)>& on_output,
                            const std::function<absl::Status()>& after_round) {
  MOEC_RETURN_IF_ERROR(RunChunkRounds(ctx, runner, shard.weights, shard.plan, shard.inputs,
                                      shard.executor.get(), observer, on_output, after_round,
                                      &shard.memo));
  for (const model::LayerMemo& m : shard.memo) {
    if (m.misses > 0) {
      return absl::InternalError(absl::StrCat("layer ", shard.weights.layer, ": ", m.misses,
                                              " kept MLP inputs did not match their pass"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteShardOutputs(StageContext& ctx, comm::Communicator& comm,
                               const model::ModelRunner& runner, LayerShard& shard,
                               const nlohmann::json& summary) {
  MOEC_RETURN_IF_ERROR(RunShardRounds(
      ctx, runner, shard, nullptr,
      [&](int64_t chunk, const at::Tensor& out) {
        return PutBulk(ctx, ChunkOutputName(outputs::kHidden, chunk), out);
      },
      nullptr));
  MOEC_ASSIGN_OR_RETURN(nlohmann::json merged, MergeRankObjects(comm, summary));
  if (comm.rank() != 0) return absl::OkStatus();
  MOEC_RETURN_IF_ERROR(PutChunkedWindows(ctx, shard.plan));
  const std::string text = merged.dump();
  return ctx.io
      ->PutOutput(outputs::kSummary, storage::DType::kU8, {static_cast<int64_t>(text.size())}, text)
      .status();
}

absl::StatusOr<std::vector<OwnerPart>> SendToOwner(comm::Communicator& comm, int owner,
                                                   const OwnerPart& mine, int64_t cols,
                                                   int64_t meta_cols, at::Device device) {
  std::vector<int64_t> rows(comm.size(), 0), one(comm.size(), 0);
  at::Tensor part = at::empty({0, cols}, at::TensorOptions(device).dtype(at::kFloat));
  at::Tensor meta = at::empty({0, meta_cols}, at::kLong);
  if (mine.rows.defined()) {
    part = mine.rows.reshape({-1, cols}).to(device);
    meta = mine.meta.reshape({1, meta_cols}).to(at::kCPU);
    rows[owner] = part.size(0);
    one[owner] = 1;
  }
  std::vector<int64_t> got_rows, got_meta;
  MOEC_ASSIGN_OR_RETURN(at::Tensor parts, comm.AllToAll(part, rows, &got_rows));
  MOEC_ASSIGN_OR_RETURN(at::Tensor metas, comm.AllToAll(meta, one, &got_meta));
  std::vector<OwnerPart> out;
  int64_t at_row = 0;
  for (size_t r = 0; r < got_rows.size(); ++r) {
    if (got_meta.size() > r && got_meta[r] == 0) continue;
    OwnerPart p;
    p.rows = parts.narrow(0, at_row, got_rows[r]);
    p.meta = metas.narrow(0, static_cast<int64_t>(out.size()), 1).reshape({meta_cols});
    at_row += got_rows[r];
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace moec::dataplane
