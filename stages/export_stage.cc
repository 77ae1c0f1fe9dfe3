#include "stages/export_stage.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "dataplane/model_view.h"
#include "dataplane/structural_edits.h"
#include "kernels/hqq.h"
#include "kernels/kernels.h"
#include "model/config/config.h"
#include "model/config/tensor_names.h"
#include "model/runtime/weights.h"
#include "storage/file_util.h"

namespace moec::stages {

using dataplane::CollectStructuralEdits;
using dataplane::EditedConfig;
using dataplane::EditedTensorSources;
using dataplane::GetTensor;
using dataplane::JobModelConfigJson;
using dataplane::JobModelView;
using dataplane::ModelView;
using dataplane::NeededStage;
using dataplane::ReadEditedTensor;
using dataplane::StructuralEdits;
using dataplane::WriteEditedCheckpoint;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kMarker[] = "moec_export.json";

absl::Status Internal(const std::string& what, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(what, ": ", ec.message()));
}

// The quantized form of one linear, as a `gptq` / `rtn` stage stored it.
struct QuantizedLinear {
  at::Tensor q;       // uint8 [out, in]
  at::Tensor scales;  // fp32 [out, groups]
  at::Tensor zeros;   // fp32 [out, groups]
  at::Tensor g_idx;   // int32 [in]
  int bits = 0;
};

std::string EscapeRegex(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string(".[]{}()\\*+?|^$").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

storage::DType StoredDtype(storage::DType d) {
  return d == storage::DType::kF16 || d == storage::DType::kBF16 ? d : storage::DType::kF32;
}

// Writes the tensors of a quantized export into `tmp` and returns the quantization_config to
// put into config.json (null for fake_quant).
absl::StatusOr<json> WriteQuantized(StageContext& ctx, const std::string& format,
                                    const std::string& quant_stage, const json& quant_params,
                                    const std::string& src, const model::ModelConfig& source,
                                    const model::ModelConfig& config, const StructuralEdits& edits,
                                    const std::string& tmp, uint64_t max_shard_bytes) {
  // Tensors of the exported model come from the source checkpoint through the structural edits
  // (none: the identity).
  MOEC_ASSIGN_OR_RETURN(auto checkpoint, storage::SafetensorsCheckpoint::Open(src));
  MOEC_ASSIGN_OR_RETURN(auto from, EditedTensorSources(source, config, edits,
                                                       [&](const std::string& name) {
                                                         return checkpoint->Contains(name);
                                                       }));
  // Which linears were quantized, at which width (from each layer's summary).
  std::map<std::string, int> widths;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(quant_stage, l, outputs::kSummary));
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx.io->Get(key));
    json summary = json::parse(f.data, nullptr, false);
    if (!summary.is_object()) return absl::DataLossError(key + " is not JSON");
    for (const auto& [name, info] : summary.items()) widths[name] = info.value("bits", 0);
  }
  auto fetch = [&](const std::string& name) -> absl::StatusOr<QuantizedLinear> {
    const int layer = std::stoi(name.substr(std::string("model.layers.").size()));
    QuantizedLinear ql;
    ql.bits = widths.at(name);
    for (auto [part, out] : {std::pair<const char*, at::Tensor*>{".q", &ql.q}, {".scales", &ql.scales},
                             {".zeros", &ql.zeros}, {".g_idx", &ql.g_idx}}) {
      MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(quant_stage, layer, name + part));
      MOEC_ASSIGN_OR_RETURN(*out, GetTensor(ctx, key));
    }
    return ql;
  };
  const bool gptq = format == "gptq";
  const bool hqq = format == "hqq";
  const int64_t hqq_group = quant_params.value("group_size", int64_t{128});  // for the config only
  // GPTQ's v1 format stores zero - 1 and cannot hold a zero point of 0; use v2 then.
  bool zero_is_zero = false;
  int default_bits = 0;
  std::map<int, int> width_count;
  for (const auto& [name, b] : widths) {
    if (name.find(".experts.") != std::string::npos) ++width_count[b];
  }
  for (const auto& [b, count] : width_count) {
    if (default_bits == 0 || count > width_count[default_bits]) default_bits = b;
  }
  if (default_bits == 0 && !widths.empty()) default_bits = widths.begin()->second;
  if (gptq) {
    for (const auto& [name, b] : widths) {
      if (b == 1) {
        return absl::UnimplementedError(absl::StrCat(
            name, " is quantized to 1 bit, which the GPTQ format cannot hold (sign codes have no "
            "integer zero point); export it as hqq or fake_quant"));
      }
      if (b != 2 && b != 3 && b != 4 && b != 8) {
        return absl::UnimplementedError(absl::StrCat(
            name, " is quantized to ", b, " bits; GPTQ loaders (GPTQModel, vLLM, transformers) "
            "read 2, 3, 4 and 8 bits only: export it as hqq or fake_quant"));
      }
      MOEC_ASSIGN_OR_RETURN(QuantizedLinear ql, fetch(name));
      if ((ql.zeros == 0).any().item<bool>()) zero_is_zero = true;
    }
  }
  std::vector<storage::TensorSpec> specs;
  for (const model::TensorSpec& t : model::ModelTensors(config)) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint->Get(from.at(t.name).name));
    auto it = widths.find(t.name);
    if (it != widths.end() && hqq) {
      // HQQ / MC-MoE packing (kernels/hqq.h, docs/formats/hqq.md): groups of G columns per row.
      const int64_t out = t.shape[0], in = t.shape[1];
      MOEC_ASSIGN_OR_RETURN(QuantizedLinear ql, fetch(t.name));
      const int64_t groups = ql.scales.size(1);
      if (groups < 1 || in % groups != 0) {
        return absl::InvalidArgumentError(absl::StrCat("hqq export: ", groups, " groups do not "
                                                       "divide the ", in, " columns of ", t.name));
      }
      const int64_t g = in / groups;
      const int64_t rows = out * in / g;
      const std::string prefix = t.name.substr(0, t.name.size() - 6);
      specs.push_back({prefix + "W_q", kernels::HqqPacksToInt32(it->second) ? storage::DType::kI32
                                                                             : storage::DType::kU8,
                       {kernels::HqqPackedRows(rows, it->second), g}});
      specs.push_back({prefix + "scale", storage::DType::kF16, {rows, 1}});
      specs.push_back({prefix + "zero", storage::DType::kF16, {rows, 1}});
      specs.push_back({prefix + "nbits", storage::DType::kI32, {1}});
      specs.push_back({prefix + "group_size", storage::DType::kI32, {1}});
      specs.push_back({prefix + "shape", storage::DType::kI32, {2}});
      continue;
    }
    if (it == widths.end() || !gptq) {
      specs.push_back({t.name, StoredDtype(v.dtype), t.shape});
      continue;
    }
    const int b = it->second;
    const int64_t out = t.shape[0], in = t.shape[1];
    MOEC_ASSIGN_OR_RETURN(QuantizedLinear ql, fetch(t.name));
    const int64_t groups = ql.scales.size(1);
    const std::string prefix = t.name.substr(0, t.name.size() - 6);
    specs.push_back({prefix + "qweight", storage::DType::kI32, {kernels::PackedWordsPerColumn(in, b), out}});
    specs.push_back({prefix + "qzeros", storage::DType::kI32, {groups, kernels::PackedWordsPerColumn(out, b)}});
    specs.push_back({prefix + "scales", storage::DType::kF16, {groups, out}});
    specs.push_back({prefix + "g_idx", storage::DType::kI32, {in}});
  }
  std::string cached_name;
  QuantizedLinear cached;
  auto produce = [&](const storage::TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
    if (ctx.IsCancelled()) return absl::CancelledError("export cancelled");
    std::string module;
    for (const char* suffix : {"qweight", "qzeros", "scales", "g_idx"}) {
      if (gptq && absl::EndsWith(spec.name, std::string(".") + suffix)) {
        module = spec.name.substr(0, spec.name.size() - std::strlen(suffix)) + "weight";
      }
    }
    for (const char* suffix : {"W_q", "scale", "zero", "nbits", "group_size", "shape"}) {
      if (hqq && absl::EndsWith(spec.name, std::string(".") + suffix)) {
        module = spec.name.substr(0, spec.name.size() - std::strlen(suffix)) + "weight";
      }
    }
    if (module.empty() && widths.count(spec.name) > 0) module = spec.name;  // fake_quant
    if (module.empty()) return ReadEditedTensor(ctx, *checkpoint, from.at(spec.name));
    if (module != cached_name) {
      MOEC_ASSIGN_OR_RETURN(cached, fetch(module));
      cached_name = module;
    }
    const QuantizedLinear& ql = cached;
    const at::Tensor g_idx = ql.g_idx.to(at::kLong);
    if (hqq) {
      const int64_t out = ql.q.size(0), in = ql.q.size(1), g = in / ql.scales.size(1);
      const int64_t rows = out * in / g;
      if (!at::equal(g_idx, at::arange(in, at::kLong).div(g, "floor"))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "hqq export of ", module, ": its groups are not contiguous column blocks (act_order "
            "without static_groups); quantize with act_order off or static_groups on"));
      }
      if (absl::EndsWith(spec.name, ".nbits")) return at::full({1}, ql.bits, at::kInt);
      if (absl::EndsWith(spec.name, ".group_size")) return at::full({1}, g, at::kInt);
      if (absl::EndsWith(spec.name, ".shape")) return at::tensor(std::vector<int64_t>{out, in}, at::kLong).to(at::kInt);
      if (absl::EndsWith(spec.name, ".scale")) return ql.scales.reshape({rows, 1});
      if (absl::EndsWith(spec.name, ".zero")) return ql.zeros.reshape({rows, 1});
      const at::Tensor codes = ql.q.to(at::kByte).contiguous().reshape({rows, g});
      at::Tensor packed = at::empty({kernels::HqqPackedRows(rows, ql.bits), g},
                                    kernels::HqqPacksToInt32(ql.bits) ? at::kInt : at::kByte);
      MOEC_RETURN_IF_ERROR(kernels::HqqPack(codes.data_ptr<uint8_t>(), rows, g, ql.bits,
                                            packed.data_ptr()));
      return packed;
    }
    if (!gptq) {  // fake_quant: scales[r, g] * (q - zeros[r, g])
      return (ql.q.to(at::kFloat) - ql.zeros.index_select(1, g_idx)) * ql.scales.index_select(1, g_idx);
    }
    const int b = ql.bits;
    if (absl::EndsWith(spec.name, ".g_idx")) return ql.g_idx.to(at::kInt);
    if (absl::EndsWith(spec.name, ".scales")) return ql.scales.t().contiguous();
    if (absl::EndsWith(spec.name, ".qweight")) {
      at::Tensor values = ql.q.t().contiguous();  // [in, out]
      at::Tensor packed = at::empty({kernels::PackedWordsPerColumn(values.size(0), b), values.size(1)}, at::kInt);
      MOEC_RETURN_IF_ERROR(kernels::PackRows(values.data_ptr<uint8_t>(), values.size(0), values.size(1), b,
                                             reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>())));
      return packed;
    }
    // qzeros: zeros [out, groups] packed along the output axis, minus one in GPTQ's v1 format.
    at::Tensor z = at::round(ql.zeros).to(at::kLong);
    if (!zero_is_zero) z = z - 1;
    at::Tensor values = z.to(at::kByte).contiguous();  // [out, groups]
    at::Tensor packed = at::empty({kernels::PackedWordsPerColumn(values.size(0), b), values.size(1)}, at::kInt);
    MOEC_RETURN_IF_ERROR(kernels::PackRows(values.data_ptr<uint8_t>(), values.size(0), values.size(1), b,
                                           reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>())));
    return packed.t().contiguous();
  };
  MOEC_RETURN_IF_ERROR(model::WriteCheckpointStreaming(tmp, specs, produce, max_shard_bytes));
  if (hqq) return json{{"quant_method", "hqq"}, {"group_size", hqq_group}, {"axis", 1}};
  if (!gptq) return json();
  json dynamic = json::object();
  for (const auto& [name, b] : widths) {
    if (b != default_bits) {
      dynamic["+:" + EscapeRegex(name.substr(0, name.size() - 7))] = {{"bits", b}};
    }
  }
  json q = {{"quant_method", "gptq"},
            {"bits", default_bits},
            {"group_size", quant_params.value("group_size", 128)},
            {"desc_act", quant_params.value("act_order", false)},
            {"sym", quant_params.value("sym", false)},
            {"checkpoint_format", zero_is_zero ? "gptq_v2" : "gptq"}};
  if (!dynamic.empty()) q["dynamic"] = dynamic;
  return q;
}

}  // namespace

absl::Status ExportStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  const std::string format = ctx.stage->Str("format");
  const recipe::FormatSpec* spec = ctx.stage->spec().FindFormat(format);
  if (spec == nullptr) {
    return absl::UnimplementedError(absl::StrCat("export format '", format, "' is not implemented"));
  }
  // The quantized weights come from the quantizing stage among its needs (rules.h checked that
  // a quantized format has one and that it produces widths the format holds).
  std::string quant_stage;
  const std::vector<const recipe::StageSpec*> quantizers =
      NeededStagesWhere(ctx, [](const recipe::StageKindSpec& k) { return k.quantizes(); });
  if (spec->quantized) {
    if (quantizers.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "export format '", format, "' needs a quantizing stage (gptq, rtn) among its needs"));
    }
    quant_stage = quantizers.front()->id;
  }
  const std::string src = ctx.recipe->model;
  const std::string out = ctx.recipe->output;
  // The model a restructure stage decided (model_view.h), else the recipe's.
  MOEC_ASSIGN_OR_RETURN(std::optional<ModelView> view, JobModelView(ctx));
  json config;
  if (view) {
    config = view->config;
  } else {
    MOEC_ASSIGN_OR_RETURN(config, JobModelConfigJson(ctx));
  }

  // Per-layer results of the stages this export needs.
  if (absl::StatusOr<std::string> skip = NeededStage(ctx, "dynamic_skip"); skip.ok()) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(*skip, -1, outputs::kSkipBeta));
    MOEC_ASSIGN_OR_RETURN(at::Tensor beta, GetTensor(ctx, key));
    json list = json::array();
    for (int64_t l = 0; l < beta.size(0); ++l) {
      const double b = beta[l].item<double>();
      list.push_back(std::isnan(b) ? json(nullptr) : json(b));
    }
    config["moec"]["format_version"] = 1;
    config["moec"]["skip_beta"] = list;
  }
  // Online dynamic pruning calibrated by an `odp` stage (odp_stage.h).
  if (absl::StatusOr<std::string> odp = NeededStage(ctx, "odp"); odp.ok()) {
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
    config["moec"]["format_version"] = 1;
    config["moec"]["odp"] = {{"enabled_layers", layers},
                             {"beta", betas},
                             {"tau_low", settings[0].item<double>()},
                             {"tau_high", settings[1].item<double>()},
                             {"positional_prior", settings[2].item<double>() != 0}};
  }
  // Structural decisions of the stages it needs (structural_export.h).
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig source_config, model::LoadModelConfig(src));
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
    MOEC_ASSIGN_OR_RETURN(config, EditedConfig(config, source_config, edits));
  } else if (view) {
    edits = view->edits;
  }
  const std::string new_config = config.dump(2) + "\n";
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig edited_config,
                        model::ParseModelConfig(new_config, out + "/config.json"));

  const std::string tmp = absl::StrCat(out, ".tmp-", ctx.task->fingerprint().substr(0, 12));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return Internal("create " + tmp, ec);
  int64_t files = 0;
  if (!quant_stage.empty()) {
    // Group size, symmetry and act-order of the quantization stage, for quantization_config.
    const json& quant_params = quantizers.front()->params;
    if (edits.kept.empty()) edits.kept.resize(source_config.num_hidden_layers);
    MOEC_ASSIGN_OR_RETURN(json q, WriteQuantized(ctx, format, quant_stage, quant_params, src,
                                                 source_config, edited_config, edits, tmp,
                                                 static_cast<uint64_t>(ctx.stage->Int("max_shard_mib")) << 20));
    if (!q.is_null()) config["quantization_config"] = q;
  }
  if (!edits.empty() && quant_stage.empty()) {
    MOEC_RETURN_IF_ERROR(WriteEditedCheckpoint(
        ctx, src, source_config, edited_config, edits, tmp,
        static_cast<uint64_t>(ctx.stage->Int("max_shard_mib")) << 20));
  }
  const std::string final_config = config.dump(2) + "\n";
  MOEC_RETURN_IF_ERROR(model::ParseModelConfig(final_config, out + "/config.json").status());
  for (const fs::directory_entry& e : fs::directory_iterator(src, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == "config.json" || name == kMarker) continue;
    if ((!quant_stage.empty() || !edits.empty()) &&
        (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json")) {
      continue;  // written above
    }
    fs::copy_file(e.path(), fs::path(tmp) / name, ec);
    if (ec) return Internal("copy " + e.path().string(), ec);
    ++files;
    if (ctx.IsCancelled()) return absl::CancelledError("export cancelled");
  }
  if (ec) return Internal("list " + src, ec);
  MOEC_RETURN_IF_ERROR(storage::WriteFileAtomically(tmp + "/config.json", final_config));
  const json marker = {{"job_id", ctx.task->job_id()},
                       {"output", out},
                       {"format", format},
                       {"task_fingerprint", ctx.task->fingerprint()},
                       {"source", src}};
  MOEC_RETURN_IF_ERROR(storage::WriteFileAtomically(tmp + "/" + kMarker, marker.dump(2) + "\n"));

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
  MOEC_RETURN_IF_ERROR(storage::RenameDurably(tmp, out));
  ctx.progress(1.0, absl::StrCat("wrote ", out, " (", files + 2, " files)"));
  return absl::OkStatus();
}

}  // namespace moec::stages
