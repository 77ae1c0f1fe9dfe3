// What a running task sees (StageContext) and its tensor I/O (FactorIo): the job's recipe, the
// task, its gang and communicator, the fingerprints of the tasks it reads, and progress and
// cancellation. The data plane (this folder) and the stage adapters (stages/) build on it.
#ifndef MOEC_DATAPLANE_TASK_CONTEXT_H_
#define MOEC_DATAPLANE_TASK_CONTEXT_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/device.h"
#include "common/recipe/recipe.h"
#include "moec/v1/job.pb.h"
#include "nlohmann/json.hpp"
#include "storage/factor_store.h"

namespace moec::comm {
class Communicator;  // comm/communicator.h
}  // namespace moec::comm

namespace moec::dataplane {

// Tensor I/O of a running task, wherever the factor store lives (the coordinator's, over
// FactorService, for workers). Thread-compatible.
class FactorIo {
 public:
  virtual ~FactorIo() = default;
  // Stores output `name` of the running task; it becomes visible, under the returned key
  // "<task fingerprint>/<name>", when the task completes.
  virtual absl::StatusOr<std::string> PutOutput(absl::string_view name, storage::DType dtype,
                                                absl::Span<const int64_t> shape,
                                                absl::string_view data) = 0;
  // Stores a bulk output — a piece of the activation chain (a layer's output hidden states, per
  // chunk), a layer's quantized codes and their scales, pruned weights: like PutOutput, but a
  // worker with an activation store keeps the bytes itself and the coordinator records only
  // their key, size, CRC32C and holder (docs/data_plane.md, "The activation chain").
  virtual absl::StatusOr<std::string> PutBulk(absl::string_view name, storage::DType dtype,
                                                    absl::Span<const int64_t> shape,
                                                    absl::string_view data) {
    return PutOutput(name, dtype, shape, data);
  }
  // Reads a committed tensor, wherever it is held.
  virtual absl::StatusOr<storage::Factor> Get(absl::string_view key) = 0;
};

// What a running stage sees. Valid for the duration of Run.
struct StageContext {
  const v1::TaskRecord* task = nullptr;
  // The job's recipe, validated (recipe::Recipe::FromCanonicalJson on workers), and this task's
  // stage in it: its parameters are all there, with their catalog types.
  std::shared_ptr<const recipe::Recipe> recipe;
  const recipe::StageSpec* stage = nullptr;
  // The job was submitted with --overwrite: its export may replace an output moec did not write.
  bool overwrite = false;
  // Where the task computes (the worker's --device): tensors of the forward, Hessians and
  // GPTQ's solve live there; what a task stores goes back to the host once, at its end.
  ComputeDevice device;
  int rank = 0;                       // rank in the gang
  std::vector<std::string> group;     // worker ids of the gang
  // Collectives of the gang (group.size() ranks); connects on first use. Not owned; null in tests
  // that do not give one (stages then treat the task as a gang of one).
  comm::Communicator* comm = nullptr;
  // Task id -> fingerprint of the tasks of the stages this task depends on: all of them for a
  // global task; for a per-layer task at layer l, the global ones and layers l-1 and l of
  // per-layer ones.
  std::map<std::string, std::string> inputs;
  FactorIo* io = nullptr;  // Not owned; null when the worker has no factor access (tests).
  // Reports progress in [0, 1] with a short message; cheap to call often.
  std::function<void(double, const std::string&)> progress = [](double, const std::string&) {};
  // Set when the task is cancelled; long stages check it and return Cancelled.
  const std::atomic<bool>* cancelled = nullptr;
  bool IsCancelled() const { return cancelled != nullptr && cancelled->load(); }

  // The factor key of output `name` of stage `stage_id` at `layer` (-1: a global stage) of this
  // job: "<fingerprint>/<name>". NotFound when that task is not among this task's inputs.
  absl::StatusOr<std::string> InputKey(absl::string_view stage_id, int layer,
                                       absl::string_view name) const;
  // The key of output `name` of the previous layer's task of this (per-layer) stage.
  absl::StatusOr<std::string> PreviousLayerKey(absl::string_view name) const;
  // Binds `recipe` and its stage `stage_id` (stage stays null when there is none).
  void SetRecipe(std::shared_ptr<const recipe::Recipe> r, absl::string_view stage_id);
};

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_TASK_CONTEXT_H_
