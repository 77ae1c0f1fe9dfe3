#include "stages/export_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "dataplane/model_view.h"
#include "dataplane/structural_edits.h"
#include "model/config/config.h"
#include "stages/quantized_export.h"
#include "storage/file_util.h"

namespace moec::stages {

using dataplane::CollectStructuralEdits;
using dataplane::EditedConfig;
using dataplane::GetTensor;
using dataplane::JobModelConfigJson;
using dataplane::JobModelView;
using dataplane::ModelView;
using dataplane::NeededStage;
using dataplane::StructuralEdits;
using dataplane::WriteEditedCheckpoint;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kMarker[] = "moec_export.json";

absl::Status Internal(const std::string& what, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(what, ": ", ec.message()));
}

uint64_t MaxShardBytes(const StageContext& ctx) {
  return static_cast<uint64_t>(ctx.stage->Int("max_shard_mib")) << 20;
}

// The quantizing stage among the export's needs, or null for a format that is not quantized.
// (rules.h checked that a quantized format has one and that it produces widths the format holds.)
absl::StatusOr<const recipe::StageSpec*> QuantizingStage(const StageContext& ctx,
                                                         const std::string& format,
                                                         const recipe::FormatSpec& spec) {
  const std::vector<const recipe::StageSpec*> quantizers =
      NeededStagesWhere(ctx, [](const recipe::StageKindSpec& k) { return k.quantizes(); });
  if (!spec.quantized) return nullptr;
  if (quantizers.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "export format '", format, "' needs a quantizing stage (gptq, rtn) among its needs"));
  }
  return quantizers.front();
}

// moec.skip_beta of the dynamic_skip stage among the export's needs, if any.
absl::Status AddSkipBeta(const StageContext& ctx, json* config) {
  absl::StatusOr<std::string> skip = NeededStage(ctx, "dynamic_skip");
  if (!skip.ok()) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(*skip, -1, outputs::kSkipBeta));
  MOEC_ASSIGN_OR_RETURN(at::Tensor beta, GetTensor(ctx, key));
  json list = json::array();
  for (int64_t l = 0; l < beta.size(0); ++l) {
    const double b = beta[l].item<double>();
    list.push_back(std::isnan(b) ? json(nullptr) : json(b));
  }
  (*config)["moec"]["format_version"] = 1;
  (*config)["moec"]["skip_beta"] = list;
  return absl::OkStatus();
}

// Online dynamic pruning calibrated by an `odp` stage among the export's needs, if any
// (odp_stage.h): moec.odp.
absl::Status AddOdpSettings(const StageContext& ctx, json* config) {
  absl::StatusOr<std::string> odp = NeededStage(ctx, "odp");
  if (!odp.ok()) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string bkey, ctx.InputKey(*odp, -1, outputs::kOdpBeta));
  MOEC_ASSIGN_OR_RETURN(std::string ekey, ctx.InputKey(*odp, -1, outputs::kEnabledLayers));
  MOEC_ASSIGN_OR_RETURN(at::Tensor beta, GetTensor(ctx, bkey));
  MOEC_ASSIGN_OR_RETURN(at::Tensor enabled, GetTensor(ctx, ekey));
  json layers = json::array(), betas = json(std::vector<json>(beta.size(0), nullptr));
  for (int64_t i = 0; i < enabled.numel(); ++i) {
    const int64_t l = enabled[i].item<int64_t>();
    if (l < 0 || l >= beta.size(0)) return absl::DataLossError(ekey + " names a layer out of range");
    layers.push_back(l);
    betas[l] = beta[l].item<double>();
  }
  MOEC_ASSIGN_OR_RETURN(std::string skey, ctx.InputKey(*odp, -1, outputs::kOdpSettings));
  MOEC_ASSIGN_OR_RETURN(at::Tensor settings, GetTensor(ctx, skey));
  if (settings.numel() != 3) return absl::DataLossError(skey + " is not {tau_low, tau_high, prior}");
  (*config)["moec"]["format_version"] = 1;
  (*config)["moec"]["odp"] = {{"enabled_layers", layers},
                              {"beta", betas},
                              {"tau_low", settings[0].item<double>()},
                              {"tau_high", settings[1].item<double>()},
                              {"positional_prior", settings[2].item<double>() != 0}};
  return absl::OkStatus();
}

// The config.json of the model `view` decided, else the recipe's, with the per-layer results of
// the stages the export needs.
absl::StatusOr<json> NeededConfig(const StageContext& ctx, const std::optional<ModelView>& view) {
  json config;
  if (view) {
    config = view->config;
  } else {
    MOEC_ASSIGN_OR_RETURN(config, JobModelConfigJson(ctx));
  }
  MOEC_RETURN_IF_ERROR(AddSkipBeta(ctx, &config));
  MOEC_RETURN_IF_ERROR(AddOdpSettings(ctx, &config));
  return config;
}

// The structural edits of the export: those of the structural stages it needs (applied to
// `config` here), else those the restructure stage of `view` already applied.
absl::StatusOr<StructuralEdits> ExportEdits(const StageContext& ctx,
                                            const std::optional<ModelView>& view,
                                            const std::string& quant_stage,
                                            const model::ModelConfig& source_config, json* config) {
  MOEC_ASSIGN_OR_RETURN(StructuralEdits edits, CollectStructuralEdits(ctx, source_config));
  if (!edits.empty()) {
    if (view) {
      return absl::FailedPreconditionError(absl::StrCat(
          "export needs structural stages directly and through restructure stage '",
          view->stage_id, "', which already applies them; remove them from its needs"));
    }
    if (!quant_stage.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the quantization stage '", quant_stage, "' ran on the unedited model; to quantize the "
          "model the structural stages decided, put a restructure stage between them (structural "
          "stages -> restructure -> ", quant_stage, " -> export; docs/recipes.md)"));
    }
    MOEC_ASSIGN_OR_RETURN(*config, EditedConfig(*config, source_config, edits));
  } else if (view) {
    edits = view->edits;
  }
  return edits;
}

// An empty directory next to `out` to assemble the export in.
absl::StatusOr<std::string> FreshTempDir(const StageContext& ctx, const std::string& out) {
  const std::string tmp = absl::StrCat(out, ".tmp-", ctx.task->fingerprint().substr(0, 12));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Internal("create " + tmp, ec);
  return tmp;
}

// Copies the files of `src` into `tmp` but config.json, the marker and, when `weights_written`,
// the weights; returns how many it copied.
absl::StatusOr<int64_t> CopySourceFiles(StageContext& ctx, const std::string& src,
                                        const std::string& tmp, bool weights_written) {
  int64_t files = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(src, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == kMarker) continue;
    if (weights_written &&
        (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json")) {
      continue;  // written above
    }
    fs::copy_file(e.path(), fs::path(tmp) / name, ec);
    if (ec) return Internal("copy " + e.path().string(), ec);
    ++files;
    if (ctx.IsCancelled()) return absl::CancelledError("export cancelled");
  }
  if (ec) return Internal("list " + src, ec);
  return files;
}

absl::Status WriteMarker(const StageContext& ctx, const std::string& tmp, const std::string& out,
                         const std::string& format, const std::string& src) {
  const json marker = {{"job_id", ctx.task->job_id()},
                       {"output", out},
                       {"format", format},
                       {"task_fingerprint", ctx.task->fingerprint()},
                       {"source", src}};
  return storage::WriteFileAtomically(tmp + "/" + kMarker, marker.dump(2) + "\n");
}

// Renames the assembled export `tmp` to `out`, replacing a previous moec export there.
absl::Status MoveIntoPlace(const StageContext& ctx, const std::string& tmp,
                           const std::string& out) {
  std::error_code ec;
  if (fs::exists(out, ec)) {
    absl::StatusOr<std::string> previous = storage::ReadFileToString(out + "/" + kMarker, 1 << 20);
    json p = previous.ok() ? json::parse(*previous, nullptr, false) : json();
    // A directory moec did not write is replaced only when the job was submitted with
    // --overwrite (JobRecord.overwrite, carried by the lease).
    if ((!p.is_object() || p.value("output", "") != out) && !ctx.overwrite) {
      fs::remove_all(tmp, ec);
      return absl::FailedPreconditionError(absl::StrCat(
          "output ", out, " exists and was not written by a moec export; move it away, "
          "choose another output, or submit with --overwrite"));
    }
    fs::remove_all(out, ec);
    if (ec) return Internal("remove previous export " + out, ec);
  }
  return storage::RenameDurably(tmp, out);
}

}  // namespace

absl::Status ExportStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  const std::string format = ctx.stage->Str("format");
  const recipe::FormatSpec* spec = ctx.stage->spec().FindFormat(format);
  if (spec == nullptr) {
    return absl::UnimplementedError(absl::StrCat("export format '", format, "' is not implemented"));
  }
  // The quantized weights come from the quantizing stage among its needs.
  MOEC_ASSIGN_OR_RETURN(const recipe::StageSpec* quantizer, QuantizingStage(ctx, format, *spec));
  const std::string quant_stage = quantizer != nullptr ? quantizer->id : "";
  const std::string src = ctx.recipe->model;
  const std::string out = ctx.recipe->output;
  // The model a restructure stage decided (model_view.h), else the recipe's.
  MOEC_ASSIGN_OR_RETURN(std::optional<ModelView> view, JobModelView(ctx));
  // Per-layer results of the stages this export needs.
  MOEC_ASSIGN_OR_RETURN(json config, NeededConfig(ctx, view));
  // Structural decisions of the stages it needs (structural_export.h).
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig source_config, model::LoadModelConfig(src));
  MOEC_ASSIGN_OR_RETURN(StructuralEdits edits,
                        ExportEdits(ctx, view, quant_stage, source_config, &config));
  const std::string new_config = config.dump(2) + "\n";
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig edited_config,
                        model::ParseModelConfig(new_config, out + "/config.json"));

  MOEC_ASSIGN_OR_RETURN(const std::string tmp, FreshTempDir(ctx, out));
  if (!quant_stage.empty()) {
    // Group size, symmetry and act-order of the quantization stage, for quantization_config.
    const json& quant_params = quantizer->params;
    if (edits.kept.empty()) edits.kept.resize(source_config.num_hidden_layers);
    MOEC_ASSIGN_OR_RETURN(json q, WriteQuantized(ctx, format, quant_stage, quant_params, src,
                                                 source_config, edited_config, edits, tmp,
                                                 MaxShardBytes(ctx)));
    if (!q.is_null()) config["quantization_config"] = q;
  }
  if (!edits.empty() && quant_stage.empty()) {
    MOEC_RETURN_IF_ERROR(WriteEditedCheckpoint(ctx, src, source_config, edited_config, edits, tmp,
                                               MaxShardBytes(ctx)));
  }
  const std::string final_config = config.dump(2) + "\n";
  MOEC_RETURN_IF_ERROR(model::ParseModelConfig(final_config, out + "/config.json").status());
  MOEC_ASSIGN_OR_RETURN(const int64_t files,
                        CopySourceFiles(ctx, src, tmp, !quant_stage.empty() || !edits.empty()));
  MOEC_RETURN_IF_ERROR(storage::WriteFileAtomically(tmp + "/config.json", final_config));
  MOEC_RETURN_IF_ERROR(WriteMarker(ctx, tmp, out, format, src));

  MOEC_RETURN_IF_ERROR(MoveIntoPlace(ctx, tmp, out));
  ctx.progress(1.0, absl::StrCat("wrote ", out, " (", files + 2, " files)"));
  return absl::OkStatus();
}

}  // namespace moec::stages
