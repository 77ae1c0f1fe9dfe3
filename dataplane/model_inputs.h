// Helpers shared by the stages that run the model: the job's calibration windows, the hidden
// states entering a layer (embeddings at layer 0, else the previous layer task's "hidden"
// output), and tensors to and from the factor store. Includes ATen.
#ifndef MOEC_DATAPLANE_MODEL_INPUTS_H_
#define MOEC_DATAPLANE_MODEL_INPUTS_H_

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/recipe/stage_catalog.h"
#include "dataplane/model_view.h"  // OpenJobModel
#include "dataplane/task_context.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"

namespace moec::dataplane {


// The calibration windows of the job (recipe "calibration": path, samples, seqlen, seed,
// sampling random_windows | chunks), tokenized with the model's tokenizer.
// Errors: FailedPrecondition when the recipe has no calibration data; those of LoadTexts and
// the sampling functions.
absl::StatusOr<model::TokenWindows> CalibrationWindows(const StageContext& ctx);

// Hidden states [windows, seqlen, hidden] entering the task's layer: the embedded calibration
// windows at layer 0, else output `hidden` of the previous layer's task of this stage.
absl::StatusOr<at::Tensor> LayerInput(const StageContext& ctx, const model::ModelRunner& runner);

// The id of the stage of kind `kind` among the needs of this task's stage (the first one in
// recipe order). FailedPrecondition naming the kind when there is none.
absl::StatusOr<std::string> NeededStage(const StageContext& ctx, absl::string_view kind);
// The stages among the needs of this task's stage whose kind has a trait (recipe order).
std::vector<const recipe::StageSpec*> NeededStagesWhere(
    const StageContext& ctx, const std::function<bool(const recipe::StageKindSpec&)>& pred);

// Hidden states entering the task's layer along the chain of stage `stage_id` (a per-layer stage
// this task needs that writes `hidden`): the embedded calibration windows at layer 0, else that
// stage's previous-layer output.
absl::StatusOr<at::Tensor> LayerInputFrom(const StageContext& ctx,
                                          const model::ModelRunner& runner,
                                          absl::string_view stage_id);

// Stores `t` (contiguous CPU copy; F32, F64, I64, I32 or U8) as output `name` of the task.
absl::Status PutTensor(StageContext& ctx, absl::string_view name, const at::Tensor& t);
// As PutTensor, for a bulk output (FactorIo::PutBulk: kept by a worker with an activation store).
absl::Status PutBulk(StageContext& ctx, absl::string_view name, const at::Tensor& t);
// Reads the committed tensor `key` (F32, F64, I64, I32 or U8).
absl::StatusOr<at::Tensor> GetTensor(const StageContext& ctx, absl::string_view key);

}  // namespace moec::dataplane

#endif  // MOEC_DATAPLANE_MODEL_INPUTS_H_
