#include "stages/restructure_stage.h"

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_view.h"
#include "dataplane/structural_edits.h"
#include "model/config/config.h"
#include "storage/safetensors_reader.h"

namespace moec::stages {

using dataplane::CollectStructuralEdits;
using dataplane::EditedConfig;
using dataplane::EditedTensorSources;
using dataplane::RecipeModel;
using dataplane::SourceConfigJson;
using dataplane::StructuralEdits;
using dataplane::StructuralEditsToJson;


using nlohmann::json;

absl::Status RestructureStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string src, RecipeModel(ctx));
  MOEC_ASSIGN_OR_RETURN(json config_json, SourceConfigJson(src));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig source, model::LoadModelConfig(src));
  MOEC_ASSIGN_OR_RETURN(StructuralEdits edits, CollectStructuralEdits(ctx, source));
  if (edits.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stage '", ctx.task->stage_id(), "' (restructure) needs at least one structural stage "
        "(expert_prune, expert_drop, layer_drop, block_drop, prune_weights)"));
  }
  MOEC_ASSIGN_OR_RETURN(json edited, EditedConfig(config_json, source, edits));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig edited_config,
                        model::ParseModelConfig(edited.dump(), "the edited config"));
  // Every tensor of the edited model must have a source; check it now rather than in every task.
  MOEC_ASSIGN_OR_RETURN(auto checkpoint, storage::SafetensorsCheckpoint::Open(src));
  MOEC_RETURN_IF_ERROR(EditedTensorSources(source, edited_config, edits,
                                           [&](const std::string& name) {
                                             return checkpoint->Contains(name);
                                           })
                           .status());
  const std::string text = json{{"config", edited}, {"edits", StructuralEditsToJson(edits)}}.dump();
  MOEC_RETURN_IF_ERROR(
      ctx.io->PutOutput(outputs::kView, storage::DType::kU8, {static_cast<int64_t>(text.size())}, text)
          .status());
  ctx.progress(1.0, absl::StrCat("model view: ", edited_config.num_hidden_layers, " of ",
                                 source.num_hidden_layers, " layers, ",
                                 edits.replaced.size(), " pruned tensors"));
  return absl::OkStatus();
}

}  // namespace moec::stages
