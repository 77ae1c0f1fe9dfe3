#include "dataplane/model_view.h"

#include <ATen/ATen.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/recipe/stage_catalog.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "common/task_id.h"
#include "dataplane/model_inputs.h"
#include "model/config/tensor_names.h"
#include "model/runtime/forward.h"
#include "model/runtime/weights.h"
#include "storage/file_util.h"
#include "storage/safetensors_reader.h"

namespace moec::dataplane {

using nlohmann::json;

namespace {

absl::StatusOr<std::vector<int>> IntArray(const json& j, const char* what) {
  if (!j.is_array()) return absl::DataLossError(absl::StrCat("model view: ", what, " is not a list"));
  std::vector<int> out;
  for (const json& v : j) {
    if (!v.is_number_integer()) {
      return absl::DataLossError(absl::StrCat("model view: ", what, " holds a non-integer"));
    }
    out.push_back(v.get<int>());
  }
  return out;
}

}  // namespace

absl::StatusOr<json> SourceConfigJson(const std::string& src) {
  MOEC_ASSIGN_OR_RETURN(std::string text,
                        storage::ReadFileToString(src + "/config.json", model::kMaxModelConfigBytes));
  json config = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::DataLossError(src + "/config.json is not a JSON object");
  return config;
}

absl::StatusOr<std::string> RecipeModel(const StageContext& ctx) {
  if (ctx.recipe == nullptr) return absl::FailedPreconditionError("the task has no recipe");
  return ctx.recipe->model;
}


json StructuralEditsToJson(const StructuralEdits& edits) {
  json kept = json::array();
  for (const auto& k : edits.kept) kept.push_back(k ? json(*k) : json(nullptr));
  return {{"kept", kept},
          {"dropped_moe_layers", edits.dropped_moe_layers},
          {"dropped_layers", edits.dropped_layers},
          {"replaced", edits.replaced}};
}

absl::StatusOr<StructuralEdits> StructuralEditsFromJson(const json& j) {
  if (!j.is_object() || !j.contains("kept") || !j["kept"].is_array() ||
      !j.contains("replaced") || !j["replaced"].is_object()) {
    return absl::DataLossError("model view: malformed structural edits");
  }
  StructuralEdits e;
  for (const json& k : j["kept"]) {
    if (k.is_null()) {
      e.kept.emplace_back();
    } else {
      MOEC_ASSIGN_OR_RETURN(std::vector<int> v, IntArray(k, "kept"));
      e.kept.emplace_back(std::move(v));
    }
  }
  MOEC_ASSIGN_OR_RETURN(e.dropped_moe_layers, IntArray(j.value("dropped_moe_layers", json()), "dropped_moe_layers"));
  MOEC_ASSIGN_OR_RETURN(e.dropped_layers, IntArray(j.value("dropped_layers", json()), "dropped_layers"));
  for (const auto& [name, key] : j["replaced"].items()) {
    if (!key.is_string()) return absl::DataLossError("model view: a replaced key is not a string");
    e.replaced[name] = key.get<std::string>();
  }
  return e;
}

absl::StatusOr<std::optional<ModelView>> JobModelView(const StageContext& ctx) {
  if (ctx.task == nullptr) return std::nullopt;
  if (ctx.recipe == nullptr) return std::nullopt;
  for (const recipe::StageSpec& s : ctx.recipe->stages) {
    if (!s.spec().restructure) continue;
    const std::string& id = s.id;
    if (ctx.inputs.count(TaskId{ctx.task->job_id(), id, -1}.ToString()) == 0) continue;
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(id, -1, outputs::kView));
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx.io->Get(key));
    json j = json::parse(f.data, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("config") || !j["config"].is_object() ||
        !j.contains("edits")) {
      return absl::DataLossError(absl::StrCat(key, " is not a model view"));
    }
    ModelView view;
    view.stage_id = id;
    view.config = j["config"];
    MOEC_ASSIGN_OR_RETURN(view.edits, StructuralEditsFromJson(j["edits"]));
    return view;
  }
  return std::nullopt;
}

absl::StatusOr<json> JobModelConfigJson(const StageContext& ctx) {
  MOEC_ASSIGN_OR_RETURN(std::optional<ModelView> view, JobModelView(ctx));
  if (view) return view->config;
  MOEC_ASSIGN_OR_RETURN(std::string src, RecipeModel(ctx));
  return SourceConfigJson(src);
}

absl::StatusOr<model::ModelConfig> JobModelConfig(const StageContext& ctx) {
  MOEC_ASSIGN_OR_RETURN(std::optional<ModelView> view, JobModelView(ctx));
  if (view) return model::ParseModelConfig(view->config.dump(), "the model view's config");
  MOEC_ASSIGN_OR_RETURN(std::string src, RecipeModel(ctx));
  return model::LoadModelConfig(src);
}

absl::StatusOr<std::unique_ptr<model::ModelRunner>> OpenJobModel(const StageContext& ctx) {
  MOEC_ASSIGN_OR_RETURN(std::string src, RecipeModel(ctx));
  MOEC_ASSIGN_OR_RETURN(std::optional<ModelView> view, JobModelView(ctx));
  model::RunnerOptions options;
  options.device = model::AtDevice(ctx.device);
  if (!view) return model::ModelRunner::Open(src, options);
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig source, model::LoadModelConfig(src));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig edited,
                        model::ParseModelConfig(view->config.dump(), "the model view's config"));
  std::shared_ptr<storage::SafetensorsCheckpoint> checkpoint;
  {
    MOEC_ASSIGN_OR_RETURN(auto c, storage::SafetensorsCheckpoint::Open(src));
    checkpoint = std::move(c);
  }
  MOEC_ASSIGN_OR_RETURN(auto sources,
                        EditedTensorSources(source, edited, view->edits,
                                            [&](const std::string& name) {
                                              return checkpoint->Contains(name);
                                            }));
  // The runner lives within the task, as does `ctx` (pruned weights are read through its io).
  const StageContext* c = &ctx;
  model::TensorSource read = [c, checkpoint, sources = std::move(sources)](
                                 const model::TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
    auto it = sources.find(spec.name);
    if (it == sources.end()) {
      return absl::NotFoundError(absl::StrCat("the model view has no tensor ", spec.name));
    }
    return ReadEditedTensor(*c, *checkpoint, it->second);
  };
  return model::ModelRunner::OpenView(src, std::move(edited), std::move(read), options);
}

bool SkipRemovedLayer(StageContext& ctx, const model::ModelConfig& config) {
  if (ctx.task == nullptr || ctx.task->layer() < config.num_hidden_layers) return false;
  ctx.progress(1.0, absl::StrCat("layer ", ctx.task->layer(), " was removed by the model view; "
                                 "nothing to do"));
  return true;
}

}  // namespace moec::dataplane
