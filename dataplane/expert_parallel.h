// The expert-parallel data plane of layer tasks (docs/data_plane.md). The calibration windows
// of a layer are cut into fixed chunks (independent of the gang size W); chunk c belongs to rank
// c mod W and is processed in round c / W, so every rank meets the chunks in global order. Each
// routed expert has one owner rank; the rows routed to it travel there by all_to_all, the owner
// runs the expert (and accumulates its statistics, in chunk order) and sends the outputs back.
// Reductions of data-parallel statistics go to one owner too and are applied in chunk order.
// Hence a layer's outputs are bit-identical for every W. Includes ATen.
#ifndef MOEC_DATAPLANE_EXPERT_PARALLEL_H_
#define MOEC_DATAPLANE_EXPERT_PARALLEL_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "model/runtime/forward.h"
#include "nlohmann/json.hpp"
#include "dataplane/task_context.h"

namespace moec::dataplane {

// Windows per chunk when a stage does not choose (kAutoChunkWindows): at least
// kMinChunkWindows and at least `chunk_tokens` tokens (the recipe's calibration.chunk_tokens,
// 4096 by default), so that short windows still give the routed experts' GEMMs about a thousand
// rows each (docs/data_plane.md, "Chunks").
inline constexpr int64_t kAutoChunkWindows = 0;
inline constexpr int64_t kMinChunkWindows = 8;
int64_t DefaultChunkWindows(int64_t seqlen, int64_t chunk_tokens);
// DefaultChunkWindows, made smaller where needed for at least 2 chunks per rank of a gang of
// `ranks` (the recipe's `workers`, not the gang a lease got, so bytes do not depend on it) over
// `windows` windows, down to one window per chunk: data parallelism is not capped by the chunk
// size.
int64_t GangChunkWindows(int64_t windows, int64_t seqlen, int64_t chunk_tokens, int ranks);

// Chunks of a layer task and this rank's share of them.
struct ChunkPlan {
  int64_t windows = 0;  // calibration windows of the job
  // Windows per chunk (the last may be shorter); kAutoChunkWindows until PlanChunks resolves it.
  int64_t chunk_windows = kAutoChunkWindows;
  int rank = 0;
  int ranks = 1;
  int64_t chunks() const { return (windows + chunk_windows - 1) / chunk_windows; }
  int64_t rounds() const { return (chunks() + ranks - 1) / ranks; }
  // This rank's chunk in `round`, or -1 when it has none (it still joins the collectives).
  int64_t ChunkOf(int64_t round) const {
    const int64_t c = round * ranks + rank;
    return c < chunks() ? c : -1;
  }
  int64_t First(int64_t chunk) const { return chunk * chunk_windows; }
  int64_t Count(int64_t chunk) const {
    return std::min(chunk_windows, windows - chunk * chunk_windows);
  }
};

// Owner rank of every expert: longest-processing-time greedy on `tokens` (experts by decreasing
// count, ties by index, each to the least-loaded rank, ties by rank). Deterministic.
std::vector<int> AssignExperts(const std::vector<int64_t>& tokens, int ranks);

// Routed tokens per expert of `layer` from the `calibrate` stage among the task's needs (or its
// needs' needs, by recipe), or nullopt-like empty vector when there is none.
std::vector<int64_t> CalibratedExpertTokens(const StageContext& ctx, int layer, int experts);

// Runs routed experts on their owner ranks. Every rank must call Run once per round (with zero
// rows when it has no chunk). Errors of the collectives are kept in status() and the outputs are
// then zeros; callers check status() after each forward.
class ExpertParallelExecutor : public model::ExpertExecutor {
 public:
  ExpertParallelExecutor(comm::Communicator* comm, std::vector<int> owner)
      : comm_(comm), owner_(std::move(owner)) {}
  at::Tensor Run(int layer, const model::MoeWeights& w, const at::Tensor& rows,
                 const std::vector<int64_t>& counts, const at::Tensor& token_index,
                 model::ForwardObserver* observer, model::LayerMemo* memo) override;
  // A round in which this rank has no chunk: it still joins the all_to_all exchanges (and runs
  // the experts it owns on other ranks' rows), with no rows of its own on the runner's device.
  void RunIdle(const model::ModelRunner& runner, int layer, const model::MoeWeights& w,
               model::ForwardObserver* observer, model::LayerMemo* memo = nullptr);
  const absl::Status& status() const { return status_; }
  const std::vector<int>& owner() const { return owner_; }
  bool Owns(int expert) const { return owner_[expert] == comm_->rank(); }

 private:
  absl::StatusOr<at::Tensor> RunOrError(int layer, const model::MoeWeights& w,
                                        const at::Tensor& rows, const std::vector<int64_t>& counts,
                                        const at::Tensor& token_index,
                                        model::ForwardObserver* observer, model::LayerMemo* memo);
  comm::Communicator* comm_;
  std::vector<int> owner_;
  absl::Status status_;
};

// Name of chunk c of a chunked output, e.g. "hidden.c00003".
std::string ChunkOutputName(absl::string_view name, int64_t chunk);

// The hidden states [count, seq, hidden] entering this task's layer for `chunk`: the embedded
// calibration windows at layer 0 (`windows` holds all of them, tokenized once), else the
// previous layer task's chunk output "hidden.cNNNNN" of this stage (or its whole "hidden",
// narrowed, when it was written unchunked).
absl::StatusOr<at::Tensor> LayerInputChunk(const StageContext& ctx,
                                           const model::ModelRunner& runner,
                                           const at::Tensor& window_tokens,
                                           const ChunkPlan& plan, int64_t chunk);

// Tokens [windows, seqlen] (int64) of the job's calibration windows.
absl::StatusOr<at::Tensor> CalibrationTokens(const StageContext& ctx);

// Fills plan->windows and plan->chunk_windows for this task of a per-layer chunked stage: at
// layer 0 from the calibration windows (returned in *window_tokens), with DefaultChunkWindows
// unless the stage chose a count, else from output `windows` of the previous layer's task.
absl::Status PlanChunks(const StageContext& ctx, ChunkPlan* plan, at::Tensor* window_tokens);
// The {windows, chunk_windows} record at factor key `key` (a chunked stage's `windows` output)
// as a plan (rank 0 of 1). Errors: NotFound; DataLoss when it is malformed.
absl::StatusOr<ChunkPlan> ReadChunkedWindows(const StageContext& ctx, const std::string& key);
// Writes output `windows` I64 [2] = {windows, chunk_windows} (rank 0 of a chunked stage).
absl::Status PutChunkedWindows(StageContext& ctx, const ChunkPlan& plan);
// Output `name` of task (stage_id, layer) as one tensor: the output itself when it exists, else
// its chunks "name.cNNNNN" concatenated (the layout `windows` describes).
absl::StatusOr<at::Tensor> ReadChunkedOutput(const StageContext& ctx, absl::string_view stage_id,
                                             int layer, absl::string_view name);
// The same by factor keys: `prefix` is the task's "<fingerprint>/".
absl::StatusOr<at::Tensor> ReadChunkedTensor(const StageContext& ctx, const std::string& prefix,
                                             absl::string_view name);

// Hidden states [count, seq, hidden] of windows [first, first + count) entering this task's layer
// along the chain of per-layer stage `stage_id` (the embedded calibration windows, tokenized in
// `window_tokens`, at layer 0; else that stage's previous-layer `hidden`, whole or chunked — only
// the chunks overlapping the range are read).
absl::StatusOr<at::Tensor> ReadLayerInputWindows(const StageContext& ctx,
                                                 const model::ModelRunner& runner,
                                                 const at::Tensor& window_tokens,
                                                 absl::string_view stage_id, int64_t first,
                                                 int64_t count);

// The gang's communicator, or a single-rank one (kept in `fallback`) when the context has none.
comm::Communicator& GangComm(StageContext& ctx, std::unique_ptr<comm::Communicator>* fallback);

// One pass of layer `layer` (weights `w`) over this rank's chunks, round by round: the chunk's
// input (`inputs`) through RunLayer with `observer` and the routed experts on `executor` (null:
// no routed experts), then `on_output(chunk, output)`; a rank without a chunk in a round still
// takes part in the experts' all_to_all. `after_round` runs on every rank after each round (for
// ordered reductions). `memo` (null or empty: none) holds one LayerMemo per round, rewound
// before the round. Cancellation ends it with Cancelled.
absl::Status RunChunkRounds(const StageContext& ctx, const model::ModelRunner& runner,
                            const model::LayerWeights& w, const ChunkPlan& plan,
                            const std::map<int64_t, at::Tensor>& inputs,
                            ExpertParallelExecutor* executor, model::ForwardObserver* observer,
                            const std::function<absl::Status(int64_t, const at::Tensor&)>& on_output,
                            const std::function<absl::Status()>& after_round,
                            std::vector<model::LayerMemo>* memo = nullptr);

// One rank's contribution to an ordered reduction: `rows` [n, cols] (F32) and `meta` [1, k]
// (I64), or undefined tensors when the rank has nothing this round.
struct OwnerPart {
  at::Tensor rows;
  at::Tensor meta;
};
// Sends every rank's `mine` to rank `owner` (all_to_all; every rank calls it). On the owner:
// the parts received, in rank order — i.e. in chunk order within a round (see above); elsewhere
// none. `cols` and `meta_cols` give the shapes of empty parts, `device` where rows live (the
// task's device: with NCCL they never leave it; meta stays on the host).
absl::StatusOr<std::vector<OwnerPart>> SendToOwner(comm::Communicator& comm, int owner,
                                                   const OwnerPart& mine, int64_t cols,
                                                   int64_t meta_cols, at::Device device);

// Merges every rank's JSON object (a per-rank `summary`) into one, on every rank.
absl::StatusOr<nlohmann::json> MergeRankObjects(comm::Communicator& comm, const nlohmann::json& mine);

// A rank's share of one layer task on the data plane: the plan of its chunks and their inputs
// (LayerInputChunk), the owner of every routed expert (AssignExperts on calibrated token counts,
// else uniform), the layer's weights with only the experts this rank owns read, and the
// executor that runs the experts on their owners (null when the layer has no routed experts).
struct LayerShard {
  ChunkPlan plan;
  std::map<int64_t, at::Tensor> inputs;  // chunk -> hidden states entering the layer
  std::vector<int> expert_owner;
  model::LayerWeights weights;
  std::unique_ptr<ExpertParallelExecutor> executor;
  // Per round, what a pass keeps for the later passes of the task (model::LayerMemo); empty:
  // nothing is kept. The stage sizes it (plan.rounds()) and says what each pass records.
  std::vector<model::LayerMemo> memo;
  int64_t seq() const { return inputs.empty() ? 1 : inputs.begin()->second.size(1); }
};
absl::StatusOr<LayerShard> OpenLayerShard(const StageContext& ctx, comm::Communicator& comm,
                                          const model::ModelRunner& runner);

// RunChunkRounds over the shard's chunks, with the shard's memo; Internal when a kept MLP input
// did not match its pass.
absl::Status RunShardRounds(const StageContext& ctx, const model::ModelRunner& runner,
                            LayerShard& shard, model::ForwardObserver* observer,
                            const std::function<absl::Status(int64_t, const at::Tensor&)>& on_output,
                            const std::function<absl::Status()>& after_round);

// The end of a layer task on the data plane, once its weights are final: one more pass writes
// the layer's output per chunk ("hidden.cNNNNN"), the ranks' `summary` objects are merged, and
// rank 0 writes `windows` and `summary` (JSON).
absl::Status WriteShardOutputs(StageContext& ctx, comm::Communicator& comm,
                               const model::ModelRunner& runner, LayerShard& shard,
                               const nlohmann::json& summary);

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_EXPERT_PARALLEL_H_
