#include "stages/quantized_export.h"

#include <ATen/ATen.h>

#include <cstring>
#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "kernels/hqq.h"
#include "kernels/kernels.h"
#include "model/config/tensor_names.h"
#include "model/runtime/weights.h"
#include "stages/stored_codes.h"

namespace moec::stages {

using dataplane::EditedTensorSource;
using dataplane::EditedTensorSources;
using dataplane::GetTensor;
using dataplane::ReadEditedTensor;
using dataplane::StructuralEdits;

namespace {

using nlohmann::json;

using TensorSources = std::map<std::string, EditedTensorSource>;

// The quantized form of one linear, as a `gptq` / `rtn` stage stored it.
struct QuantizedLinear {
  at::Tensor packed;  // int32, as stored (stored_codes.h): GPTQ's qweight
  at::Tensor q;       // uint8 [out, in], unpacked for the formats other than gptq
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

// GPTQ's default width: the most common width of the routed experts (ties: the smallest), else
// the first linear's.
int DefaultBits(const std::map<std::string, int>& widths) {
  int default_bits = 0;
  std::map<int, int> width_count;
  for (const auto& [name, b] : widths) {
    if (name.find(".experts.") != std::string::npos) ++width_count[b];
  }
  for (const auto& [b, count] : width_count) {
    if (default_bits == 0 || count > width_count[default_bits]) default_bits = b;
  }
  if (default_bits == 0 && !widths.empty()) default_bits = widths.begin()->second;
  return default_bits;
}

// Writes one quantized export: the tensor specs of the format, then each tensor as the streaming
// writer asks for it (the codes of one linear fetched once for all its tensors).
class QuantizedWriter {
 public:
  QuantizedWriter(StageContext& ctx, const std::string& format, const std::string& quant_stage)
      : ctx_(ctx), quant_stage_(quant_stage), gptq_(format == "gptq"), hqq_(format == "hqq") {}

  absl::StatusOr<json> Write(const json& quant_params, const std::string& src,
                             const model::ModelConfig& source, const model::ModelConfig& config,
                             const StructuralEdits& edits, const std::string& tmp,
                             uint64_t max_shard_bytes);

 private:
  // Which linears were quantized, at which width (from each layer's summary).
  absl::Status ReadWidths(int layers);
  absl::StatusOr<QuantizedLinear> Fetch(const std::string& name) const;
  // One part (".qweight", ".scales", ".zeros", ".g_idx") of linear `name`'s stored quantization: the
  // checks and the specs read the small parts only, so the codes are read once, by Produce.
  absl::StatusOr<at::Tensor> FetchPart(const std::string& name, const char* part) const;
  // Refuses widths the GPTQ format cannot hold and notes whether a zero point is 0.
  absl::Status CheckGptqWidths();
  absl::StatusOr<std::vector<storage::TensorSpec>> Specs(
      const storage::SafetensorsCheckpoint& checkpoint, const TensorSources& from,
      const model::ModelConfig& config) const;
  absl::Status AppendHqqSpecs(const model::TensorSpec& t, int bits,
                              std::vector<storage::TensorSpec>* specs) const;
  absl::Status AppendGptqSpecs(const model::TensorSpec& t, int b,
                               std::vector<storage::TensorSpec>* specs) const;
  absl::StatusOr<at::Tensor> Produce(const storage::TensorSpec& spec,
                                     const storage::SafetensorsCheckpoint& checkpoint,
                                     const TensorSources& from);
  // The linear (its ".weight" name) a tensor of the format belongs to; empty: none.
  std::string ModuleOf(const std::string& name) const;
  absl::StatusOr<at::Tensor> ProduceHqq(const QuantizedLinear& ql, const at::Tensor& g_idx,
                                        const std::string& module, const std::string& name) const;
  absl::StatusOr<at::Tensor> ProduceGptq(const QuantizedLinear& ql, const std::string& name) const;
  json GptqConfig(const json& quant_params, int default_bits) const;

  StageContext& ctx_;
  const std::string quant_stage_;
  const bool gptq_;
  const bool hqq_;
  std::map<std::string, int> widths_;
  // GPTQ's v1 format stores zero - 1 and cannot hold a zero point of 0; use v2 then.
  bool zero_is_zero_ = false;
  std::string cached_name_;
  QuantizedLinear cached_;
};

absl::StatusOr<json> QuantizedWriter::Write(const json& quant_params, const std::string& src,
                                            const model::ModelConfig& source,
                                            const model::ModelConfig& config,
                                            const StructuralEdits& edits, const std::string& tmp,
                                            uint64_t max_shard_bytes) {
  // Tensors of the exported model come from the source checkpoint through the structural edits
  // (none: the identity).
  MOEC_ASSIGN_OR_RETURN(auto checkpoint, storage::SafetensorsCheckpoint::Open(src));
  MOEC_ASSIGN_OR_RETURN(auto from, EditedTensorSources(source, config, edits,
                                                       [&](const std::string& name) {
                                                         return checkpoint->Contains(name);
                                                       }));
  MOEC_RETURN_IF_ERROR(ReadWidths(config.num_hidden_layers));
  const int64_t hqq_group = quant_params.value("group_size", int64_t{128});  // for the config only
  const int default_bits = DefaultBits(widths_);
  if (gptq_) MOEC_RETURN_IF_ERROR(CheckGptqWidths());
  MOEC_ASSIGN_OR_RETURN(std::vector<storage::TensorSpec> specs, Specs(*checkpoint, from, config));
  auto produce = [&](const storage::TensorSpec& spec) { return Produce(spec, *checkpoint, from); };
  MOEC_RETURN_IF_ERROR(model::WriteCheckpointStreaming(tmp, specs, produce, max_shard_bytes));
  if (hqq_) return json{{"quant_method", "hqq"}, {"group_size", hqq_group}, {"axis", 1}};
  if (!gptq_) return json();
  return GptqConfig(quant_params, default_bits);
}

absl::Status QuantizedWriter::ReadWidths(int layers) {
  for (int l = 0; l < layers; ++l) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx_.InputKey(quant_stage_, l, outputs::kSummary));
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx_.io->Get(key));
    json summary = json::parse(f.data, nullptr, false);
    if (!summary.is_object()) return absl::DataLossError(key + " is not JSON");
    for (const auto& [name, info] : summary.items()) widths_[name] = info.value("bits", 0);
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> QuantizedWriter::FetchPart(const std::string& name,
                                                      const char* part) const {
  const int layer = std::stoi(name.substr(std::string("model.layers.").size()));
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx_.InputKey(quant_stage_, layer, name + part));
  return GetTensor(ctx_, key);
}

absl::StatusOr<QuantizedLinear> QuantizedWriter::Fetch(const std::string& name) const {
  QuantizedLinear ql;
  ql.bits = widths_.at(name);
  for (auto [part, out] : {std::pair<const char*, at::Tensor*>{kStoredCodesSuffix, &ql.packed},
                           {".scales", &ql.scales}, {".zeros", &ql.zeros}, {".g_idx", &ql.g_idx}}) {
    MOEC_ASSIGN_OR_RETURN(*out, FetchPart(name, part));
  }
  if (!gptq_) {
    MOEC_ASSIGN_OR_RETURN(ql.q, UnpackStoredCodes(ql.packed, ql.g_idx.numel(), ql.bits));
  }
  return ql;
}

absl::Status QuantizedWriter::CheckGptqWidths() {
  for (const auto& [name, b] : widths_) {
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
    MOEC_ASSIGN_OR_RETURN(at::Tensor zeros, FetchPart(name, ".zeros"));
    if ((zeros == 0).any().item<bool>()) zero_is_zero_ = true;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<storage::TensorSpec>> QuantizedWriter::Specs(
    const storage::SafetensorsCheckpoint& checkpoint, const TensorSources& from,
    const model::ModelConfig& config) const {
  std::vector<storage::TensorSpec> specs;
  for (const model::TensorSpec& t : model::ModelTensors(config)) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint.Get(from.at(t.name).name));
    auto it = widths_.find(t.name);
    if (it != widths_.end() && hqq_) {
      MOEC_RETURN_IF_ERROR(AppendHqqSpecs(t, it->second, &specs));
    } else if (it == widths_.end() || !gptq_) {
      specs.push_back({t.name, StoredDtype(v.dtype), t.shape});
    } else {
      MOEC_RETURN_IF_ERROR(AppendGptqSpecs(t, it->second, &specs));
    }
  }
  return specs;
}

absl::Status QuantizedWriter::AppendHqqSpecs(const model::TensorSpec& t, int bits,
                                             std::vector<storage::TensorSpec>* specs) const {
  // HQQ / MC-MoE packing (kernels/hqq.h, docs/formats/hqq.md): groups of G columns per row.
  const int64_t out = t.shape[0], in = t.shape[1];
  MOEC_ASSIGN_OR_RETURN(at::Tensor scales, FetchPart(t.name, ".scales"));
  const int64_t groups = scales.size(1);
  if (groups < 1 || in % groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hqq export: ", groups, " groups do not "
                                                   "divide the ", in, " columns of ", t.name));
  }
  const int64_t g = in / groups;
  const int64_t rows = out * in / g;
  const std::string prefix = t.name.substr(0, t.name.size() - 6);
  specs->push_back({prefix + "W_q", kernels::HqqPacksToInt32(bits) ? storage::DType::kI32
                                                                    : storage::DType::kU8,
                    {kernels::HqqPackedRows(rows, bits), g}});
  specs->push_back({prefix + "scale", storage::DType::kF16, {rows, 1}});
  specs->push_back({prefix + "zero", storage::DType::kF16, {rows, 1}});
  specs->push_back({prefix + "nbits", storage::DType::kI32, {1}});
  specs->push_back({prefix + "group_size", storage::DType::kI32, {1}});
  specs->push_back({prefix + "shape", storage::DType::kI32, {2}});
  return absl::OkStatus();
}

absl::Status QuantizedWriter::AppendGptqSpecs(const model::TensorSpec& t, int b,
                                              std::vector<storage::TensorSpec>* specs) const {
  const int64_t out = t.shape[0], in = t.shape[1];
  MOEC_ASSIGN_OR_RETURN(at::Tensor scales, FetchPart(t.name, ".scales"));
  const int64_t groups = scales.size(1);
  const std::string prefix = t.name.substr(0, t.name.size() - 6);
  specs->push_back({prefix + "qweight", storage::DType::kI32, {kernels::PackedWordsPerColumn(in, b), out}});
  specs->push_back({prefix + "qzeros", storage::DType::kI32, {groups, kernels::PackedWordsPerColumn(out, b)}});
  specs->push_back({prefix + "scales", storage::DType::kF16, {groups, out}});
  specs->push_back({prefix + "g_idx", storage::DType::kI32, {in}});
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> QuantizedWriter::Produce(const storage::TensorSpec& spec,
                                                    const storage::SafetensorsCheckpoint& checkpoint,
                                                    const TensorSources& from) {
  if (ctx_.IsCancelled()) return absl::CancelledError("export cancelled");
  const std::string module = ModuleOf(spec.name);
  if (module.empty()) return ReadEditedTensor(ctx_, checkpoint, from.at(spec.name));
  if (module != cached_name_) {
    MOEC_ASSIGN_OR_RETURN(cached_, Fetch(module));
    cached_name_ = module;
  }
  const QuantizedLinear& ql = cached_;
  const at::Tensor g_idx = ql.g_idx.to(at::kLong);
  if (hqq_) return ProduceHqq(ql, g_idx, module, spec.name);
  if (!gptq_) {  // fake_quant: scales[r, g] * (q - zeros[r, g])
    return (ql.q.to(at::kFloat) - ql.zeros.index_select(1, g_idx)) * ql.scales.index_select(1, g_idx);
  }
  return ProduceGptq(ql, spec.name);
}

std::string QuantizedWriter::ModuleOf(const std::string& name) const {
  std::string module;
  for (const char* suffix : {"qweight", "qzeros", "scales", "g_idx"}) {
    if (gptq_ && absl::EndsWith(name, std::string(".") + suffix)) {
      module = name.substr(0, name.size() - std::strlen(suffix)) + "weight";
    }
  }
  for (const char* suffix : {"W_q", "scale", "zero", "nbits", "group_size", "shape"}) {
    if (hqq_ && absl::EndsWith(name, std::string(".") + suffix)) {
      module = name.substr(0, name.size() - std::strlen(suffix)) + "weight";
    }
  }
  if (module.empty() && widths_.count(name) > 0) module = name;  // fake_quant
  return module;
}

absl::StatusOr<at::Tensor> QuantizedWriter::ProduceHqq(const QuantizedLinear& ql,
                                                       const at::Tensor& g_idx,
                                                       const std::string& module,
                                                       const std::string& name) const {
  const int64_t out = ql.q.size(0), in = ql.q.size(1), g = in / ql.scales.size(1);
  const int64_t rows = out * in / g;
  if (!at::equal(g_idx, at::arange(in, at::kLong).div(g, "floor"))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hqq export of ", module, ": its groups are not contiguous column blocks (act_order "
        "without static_groups); quantize with act_order off or static_groups on"));
  }
  if (absl::EndsWith(name, ".nbits")) return at::full({1}, ql.bits, at::kInt);
  if (absl::EndsWith(name, ".group_size")) return at::full({1}, g, at::kInt);
  if (absl::EndsWith(name, ".shape")) return at::tensor(std::vector<int64_t>{out, in}, at::kLong).to(at::kInt);
  if (absl::EndsWith(name, ".scale")) return ql.scales.reshape({rows, 1});
  if (absl::EndsWith(name, ".zero")) return ql.zeros.reshape({rows, 1});
  const at::Tensor codes = ql.q.to(at::kByte).contiguous().reshape({rows, g});
  at::Tensor packed = at::empty({kernels::HqqPackedRows(rows, ql.bits), g},
                                kernels::HqqPacksToInt32(ql.bits) ? at::kInt : at::kByte);
  MOEC_RETURN_IF_ERROR(kernels::HqqPack(codes.data_ptr<uint8_t>(), rows, g, ql.bits,
                                        packed.data_ptr()));
  return packed;
}

absl::StatusOr<at::Tensor> QuantizedWriter::ProduceGptq(const QuantizedLinear& ql,
                                                        const std::string& name) const {
  const int b = ql.bits;
  if (absl::EndsWith(name, ".g_idx")) return ql.g_idx.to(at::kInt);
  if (absl::EndsWith(name, ".scales")) return ql.scales.t().contiguous();
  if (absl::EndsWith(name, ".qweight")) return ql.packed;  // stored as GPTQ packs it
  // qzeros: zeros [out, groups] packed along the output axis, minus one in GPTQ's v1 format.
  at::Tensor z = at::round(ql.zeros).to(at::kLong);
  if (!zero_is_zero_) z = z - 1;
  // PackStoredCodes packs its argument's columns: z^T's are the output axis.
  MOEC_ASSIGN_OR_RETURN(at::Tensor packed, PackStoredCodes(z.t(), b));
  return packed.t().contiguous();
}

json QuantizedWriter::GptqConfig(const json& quant_params, int default_bits) const {
  json dynamic = json::object();
  for (const auto& [name, b] : widths_) {
    if (b != default_bits) {
      dynamic["+:" + EscapeRegex(name.substr(0, name.size() - 7))] = {{"bits", b}};
    }
  }
  json q = {{"quant_method", "gptq"},
            {"bits", default_bits},
            {"group_size", quant_params.value("group_size", 128)},
            {"desc_act", quant_params.value("act_order", false)},
            {"sym", quant_params.value("sym", false)},
            {"checkpoint_format", zero_is_zero_ ? "gptq_v2" : "gptq"}};
  if (!dynamic.empty()) q["dynamic"] = dynamic;
  return q;
}

}  // namespace

absl::StatusOr<json> WriteQuantized(StageContext& ctx, const std::string& format,
                                    const std::string& quant_stage, const json& quant_params,
                                    const std::string& src, const model::ModelConfig& source,
                                    const model::ModelConfig& config, const StructuralEdits& edits,
                                    const std::string& tmp, uint64_t max_shard_bytes) {
  QuantizedWriter writer(ctx, format, quant_stage);
  return writer.Write(quant_params, src, source, config, edits, tmp, max_shard_bytes);
}

}  // namespace moec::stages
