#include "stages/export_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/config.h"
#include "stages/model_inputs.h"
#include "storage/file_util.h"

namespace moec::stages {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kMarker[] = "moec_export.json";

absl::Status Internal(const std::string& what, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(what, ": ", ec.message()));
}

}  // namespace

absl::Status ExportStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  const std::string format = ctx.params.value("format", "gptq");
  if (format != "hf") {
    return absl::UnimplementedError(absl::StrCat(
        "export format '", format, "' is not implemented yet (quantized exports arrive with the "
        "quantization stages); available: hf"));
  }
  const std::string src = ctx.recipe.at("model").get<std::string>();
  const std::string out = ctx.recipe.at("output").get<std::string>();
  MOEC_ASSIGN_OR_RETURN(std::string config_text,
                        storage::ReadFileToString(src + "/config.json", model::kMaxModelConfigBytes));
  json config = json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return absl::DataLossError(src + "/config.json is not a JSON object");

  // Per-layer results of the stages this export needs.
  if (absl::StatusOr<std::string> skip = NeededStage(ctx, "dynamic_skip"); skip.ok()) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(*skip, -1, "skip_beta"));
    MOEC_ASSIGN_OR_RETURN(at::Tensor beta, GetTensor(ctx, key));
    json list = json::array();
    for (int64_t l = 0; l < beta.size(0); ++l) {
      const double b = beta[l].item<double>();
      list.push_back(std::isnan(b) ? json(nullptr) : json(b));
    }
    config["moec"]["format_version"] = 1;
    config["moec"]["skip_beta"] = list;
  }
  const std::string new_config = config.dump(2) + "\n";
  MOEC_RETURN_IF_ERROR(model::ParseModelConfig(new_config, out + "/config.json").status());

  const std::string tmp = absl::StrCat(out, ".tmp-", ctx.task->fingerprint().substr(0, 12));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Internal("create " + tmp, ec);
  int64_t files = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(src, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == kMarker) continue;
    fs::copy_file(e.path(), fs::path(tmp) / name, ec);
    if (ec) return Internal("copy " + e.path().string(), ec);
    ++files;
    if (ctx.IsCancelled()) return absl::CancelledError("export cancelled");
  }
  if (ec) return Internal("list " + src, ec);
  MOEC_RETURN_IF_ERROR(storage::WriteFileAtomically(tmp + "/config.json", new_config));
  const json marker = {{"job_id", ctx.task->job_id()},
                       {"output", out},
                       {"format", format},
                       {"task_fingerprint", ctx.task->fingerprint()},
                       {"source", src}};
  MOEC_RETURN_IF_ERROR(storage::WriteFileAtomically(tmp + "/" + kMarker, marker.dump(2) + "\n"));

  if (fs::exists(out, ec)) {
    absl::StatusOr<std::string> previous = storage::ReadFileToString(out + "/" + kMarker, 1 << 20);
    json p = previous.ok() ? json::parse(*previous, nullptr, false) : json();
    if (!p.is_object() || p.value("output", "") != out) {
      fs::remove_all(tmp, ec);
      return absl::FailedPreconditionError(absl::StrCat(
          "output ", out, " exists and was not written by a moec export; move it away or "
          "choose another output"));
    }
    fs::remove_all(out, ec);
    if (ec) return Internal("remove previous export " + out, ec);
  }
  MOEC_RETURN_IF_ERROR(storage::RenameDurably(tmp, out));
  ctx.progress(1.0, absl::StrCat("wrote ", out, " (", files + 2, " files)"));
  return absl::OkStatus();
}

}  // namespace moec::stages
