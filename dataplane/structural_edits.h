// Applying structural decisions when exporting (docs/formats/model_config.md): kept experts
// (`expert_prune` per layer, `expert_drop` global), dropped MoE sub-blocks (`layer_drop`),
// dropped decoder layers (`block_drop`) and pruned expert weights (`prune_weights`), read from
// the stages the export task directly needs. The written model is what a loader expects:
// experts renumbered 0..r−1 in ascending original order with the router's rows trimmed; the
// stock expert count in config.json when every MoE layer keeps the same number, else per-layer
// `moec.experts_per_layer` and `moec.kept_experts` (original indices); dropped
// layers removed and the later ones renumbered, DeepSeek's `first_k_dense_replace` and Qwen's
// `mlp_only_layers` updated.
#ifndef MOEC_DATAPLANE_STRUCTURAL_EDITS_H_
#define MOEC_DATAPLANE_STRUCTURAL_EDITS_H_

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config/config.h"
#include "nlohmann/json.hpp"
#include "dataplane/task_context.h"
#include "storage/safetensors_reader.h"

namespace moec::dataplane {

struct StructuralEdits {
  // Per source layer: the kept experts (indices in the source checkpoint, ascending), or nullopt.
  std::vector<std::optional<std::vector<int>>> kept;
  std::vector<int> dropped_moe_layers;  // source layer indices, ascending
  std::vector<int> dropped_layers;      // source layer indices, ascending
  // Pruned weights: checkpoint tensor name -> factor key of its replacement.
  std::map<std::string, std::string> replaced;
  bool empty() const;
};

// The edits of the structural stages among the task's needs. Errors: FailedPrecondition when two
// stages both choose experts; DataLoss for malformed stage outputs.
absl::StatusOr<StructuralEdits> CollectStructuralEdits(const StageContext& ctx,
                                                       const model::ModelConfig& config);

// The config.json of the edited model. Errors: Unimplemented for layer dropping where the
// architecture's MoE placement rule cannot be re-expressed (DeepSeek moe_layer_freq > 1, Qwen
// decoder_sparse_step > 1) or with ODP settings in the source.
absl::StatusOr<nlohmann::json> EditedConfig(const nlohmann::json& config_json,
                                            const model::ModelConfig& config,
                                            const StructuralEdits& edits);

// How prune_weights stores a pruned matrix (its layer summary's "stored"): as the fp32/bf16/f16
// matrix under the tensor's name, or, when the pruning only set weights to +0 (Wanda,
// magnitude), as quant::PackMask's mask under the name + kPrunedMaskSuffix, applied to the
// source checkpoint's matrix when read.
inline constexpr char kStoredAsMatrix[] = "matrix";
inline constexpr char kStoredAsMask[] = "mask";
inline constexpr char kPrunedMaskSuffix[] = ".mask";

// Where one tensor of the edited model comes from.
struct EditedTensorSource {
  std::string name;           // tensor of the source checkpoint
  std::vector<int64_t> rows;  // rows kept (a trimmed router); empty: all of it
  // Factor key of a pruned replacement of `name` (a matrix, or a mask over `name` when it ends
  // in kPrunedMaskSuffix); empty: none.
  std::string replaced_key;
};

// Edited tensor name -> its source, for every tensor of `edited` (the config EditedConfig gives
// for `edits`). `contains` says whether the source checkpoint has a tensor. Errors: Internal
// when a tensor has no source.
absl::StatusOr<std::map<std::string, EditedTensorSource>> EditedTensorSources(
    const model::ModelConfig& source, const model::ModelConfig& edited, const StructuralEdits& edits,
    const std::function<bool(const std::string&)>& contains);

// Reads one tensor of the edited model (fp32): the replacement (a stored matrix, or the source
// tensor with a stored mask applied), or the source tensor; with the kept rows.
absl::StatusOr<at::Tensor> ReadEditedTensor(const StageContext& ctx,
                                            const storage::SafetensorsCheckpoint& checkpoint,
                                            const EditedTensorSource& s);

// Writes the edited checkpoint (safetensors shards) of source directory `src` into `dir`.
absl::Status WriteEditedCheckpoint(StageContext& ctx, const std::string& src,
                                   const model::ModelConfig& source,
                                   const model::ModelConfig& edited, const StructuralEdits& edits,
                                   const std::string& dir, uint64_t max_shard_bytes);

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_STRUCTURAL_EDITS_H_
