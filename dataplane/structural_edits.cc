#include "dataplane/structural_edits.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "model/config/tensor_names.h"
#include "model/runtime/weights.h"
#include "quant/sparse.h"
#include "storage/safetensors_reader.h"

namespace moec::dataplane {

using nlohmann::json;

namespace {

// The expert-count field of config.json per architecture.
const char* ExpertCountField(const std::string& model_type) {
  if (model_type == "mixtral") return "num_local_experts";
  if (model_type == "deepseek") return "n_routed_experts";
  return "num_experts";
}

absl::StatusOr<std::vector<int>> IntList(const StageContext& ctx, const std::string& stage,
                                         int layer, const char* name) {
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(stage, layer, name));
  MOEC_ASSIGN_OR_RETURN(at::Tensor t, GetTensor(ctx, key));
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

bool StructuralEdits::empty() const {
  return dropped_moe_layers.empty() && dropped_layers.empty() && replaced.empty() &&
         std::none_of(kept.begin(), kept.end(), [](const auto& k) { return k.has_value(); });
}

namespace {

// Experts kept per layer by a stage choosing experts: per-layer stages write each layer's
// kept_experts, global ones a [layers, experts] kept_mask.
absl::Status CollectKeptExperts(const StageContext& ctx, const model::ModelConfig& config,
                                const recipe::StageSpec& stage, StructuralEdits* edits) {
  const int layers = config.num_hidden_layers;
  if (stage.spec().per_layer()) {
    for (int l = 0; l < layers; ++l) {
      if (!config.IsMoeLayer(l)) continue;
      MOEC_ASSIGN_OR_RETURN(edits->kept[l], IntList(ctx, stage.id, l, outputs::kKeptExperts));
    }
    return absl::OkStatus();
  }
  MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(stage.id, -1, outputs::kKeptMask));
  MOEC_ASSIGN_OR_RETURN(at::Tensor mask, GetTensor(ctx, key));
  if (mask.dim() != 2 || mask.size(0) != layers) {
    return absl::DataLossError(absl::StrCat(key, " is not [layers, experts]"));
  }
  for (int l = 0; l < layers; ++l) {
    if (!config.IsMoeLayer(l)) continue;
    std::vector<int> kept;
    for (int e = 0; e < config.NumRoutedExperts(l) && e < mask.size(1); ++e) {
      if (mask[l][e].item<uint8_t>() != 0) kept.push_back(e);
    }
    edits->kept[l] = kept;
  }
  return absl::OkStatus();
}

// Pruned weights: each layer's summary names the replaced tensors, stored under their names.
absl::Status CollectPrunedWeights(const StageContext& ctx, const model::ModelConfig& config,
                                  const recipe::StageSpec& stage, StructuralEdits* edits) {
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(stage.id, l, outputs::kSummary));
    MOEC_ASSIGN_OR_RETURN(storage::Factor f, ctx.io->Get(key));
    json summary = json::parse(f.data, nullptr, false);
    if (!summary.is_object()) return absl::DataLossError(key + " is not JSON");
    for (const auto& [name, info] : summary.items()) {
      const bool mask = info.is_object() && info.value("stored", kStoredAsMatrix) == kStoredAsMask;
      MOEC_ASSIGN_OR_RETURN(edits->replaced[name],
                            ctx.InputKey(stage.id, l, mask ? name + kPrunedMaskSuffix : name));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckEdits(const model::ModelConfig& config, const StructuralEdits& edits) {
  const int layers = config.num_hidden_layers;
  for (int l = 0; l < layers; ++l) {
    if (!edits.kept[l]) continue;
    const std::vector<int>& k = *edits.kept[l];
    for (size_t i = 0; i < k.size(); ++i) {
      if (k[i] < 0 || k[i] >= config.NumRoutedExperts(l) || (i > 0 && k[i] <= k[i - 1])) {
        return absl::DataLossError(absl::StrCat("kept experts of layer ", l, " are malformed"));
      }
    }
  }
  for (const std::vector<int>* v : {&edits.dropped_moe_layers, &edits.dropped_layers}) {
    for (size_t i = 0; i < v->size(); ++i) {
      if ((*v)[i] < 0 || (*v)[i] >= layers || (i > 0 && (*v)[i] <= (*v)[i - 1])) {
        return absl::DataLossError("dropped layer list is malformed");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StructuralEdits> CollectStructuralEdits(const StageContext& ctx,
                                                       const model::ModelConfig& config) {
  StructuralEdits edits;
  edits.kept.resize(config.num_hidden_layers);
  const recipe::StageSpec* experts = nullptr;
  for (const recipe::StageSpec* s :
       NeededStagesWhere(ctx, [](const recipe::StageKindSpec& k) { return k.is_structural(); })) {
    switch (s->spec().structural) {
      case recipe::StructuralEdit::kExperts:
        if (experts != nullptr) {
          return absl::FailedPreconditionError(absl::StrCat(
              "stages '", experts->id, "' and '", s->id, "' both choose experts; keep one of them"));
        }
        experts = s;
        MOEC_RETURN_IF_ERROR(CollectKeptExperts(ctx, config, *s, &edits));
        break;
      case recipe::StructuralEdit::kMoeLayers: {
        MOEC_ASSIGN_OR_RETURN(edits.dropped_moe_layers,
                              IntList(ctx, s->id, -1, outputs::kDroppedMoeLayers));
        break;
      }
      case recipe::StructuralEdit::kLayers: {
        MOEC_ASSIGN_OR_RETURN(edits.dropped_layers, IntList(ctx, s->id, -1, outputs::kDroppedLayers));
        break;
      }
      case recipe::StructuralEdit::kWeights:
        MOEC_RETURN_IF_ERROR(CollectPrunedWeights(ctx, config, *s, &edits));
        break;
      case recipe::StructuralEdit::kNone:
        break;
    }
  }
  MOEC_RETURN_IF_ERROR(CheckEdits(config, edits));
  return edits;
}

namespace {

// The source layers left after dropping `dropped_layers`, ascending.
std::vector<int> KeptLayers(int layers, const std::vector<int>& dropped_layers) {
  const std::set<int> dropped(dropped_layers.begin(), dropped_layers.end());
  std::vector<int> kept_layers;
  for (int l = 0; l < layers; ++l) {
    if (dropped.count(l) == 0) kept_layers.push_back(l);
  }
  return kept_layers;
}

// The layer fields of config.json `out` for a model of the source layers `kept_layers`; `moec` is
// the source's moec object.
absl::Status RenumberLayers(const model::ModelConfig& config, const std::vector<int>& kept_layers,
                            const json& moec, json* out) {
  if (config.moe_layer_freq != 1 || config.decoder_sparse_step != 1) {
    return absl::UnimplementedError(
        "dropping layers of a model whose MoE layers follow moe_layer_freq / decoder_sparse_step "
        "> 1 cannot be expressed in its config");
  }
  if (moec.contains("odp")) {
    return absl::UnimplementedError("dropping layers of a model with ODP settings");
  }
  (*out)["num_hidden_layers"] = static_cast<int>(kept_layers.size());
  if (config.model_type == "deepseek") {
    (*out)["first_k_dense_replace"] = static_cast<int>(std::count_if(
        kept_layers.begin(), kept_layers.end(), [&](int l) { return l < config.first_k_dense_replace; }));
  }
  if (!config.mlp_only_layers.empty()) {
    json remapped = json::array();
    for (size_t nl = 0; nl < kept_layers.size(); ++nl) {
      if (std::count(config.mlp_only_layers.begin(), config.mlp_only_layers.end(),
                     kept_layers[nl]) > 0) {
        remapped.push_back(static_cast<int>(nl));
      }
    }
    (*out)["mlp_only_layers"] = remapped;
  }
  return absl::OkStatus();
}

// Per new layer: experts kept (source indices mapped to original ones) and MoE presence.
struct ExpertLayout {
  json experts_per_layer = json::array(), kept_experts = json::array(), dropped_out = json::array();
  std::set<int> counts;
  bool pruned = false, any_moe_dropped = false;
};

// The original indices (config.OriginalExpertIndices of layer `l`, `original`) of the experts
// `kept`, or null when the layer has none.
json OriginalIds(const std::optional<std::vector<int>>& original, const std::vector<int>& kept) {
  if (!original) return nullptr;
  json ids = json::array();
  for (int e : kept) ids.push_back((*original)[e]);
  return ids;
}

ExpertLayout LayoutExperts(const model::ModelConfig& config, const StructuralEdits& edits,
                           const std::vector<int>& kept_layers) {
  const std::set<int> dropped_moe(edits.dropped_moe_layers.begin(), edits.dropped_moe_layers.end());
  ExpertLayout out;
  for (size_t nl = 0; nl < kept_layers.size(); ++nl) {
    const int l = kept_layers[nl];
    const bool moe = config.IsMoeLayer(l) && dropped_moe.count(l) == 0;
    if (config.IsMoeDropped(l) || (config.IsMoeLayer(l) && dropped_moe.count(l) > 0)) {
      out.dropped_out.push_back(static_cast<int>(nl));
      out.any_moe_dropped = true;
    }
    if (!moe) {
      out.experts_per_layer.push_back(nullptr);
      out.kept_experts.push_back(nullptr);
      continue;
    }
    const std::optional<std::vector<int>> original = config.OriginalExpertIndices(l);
    std::vector<int> source(config.NumRoutedExperts(l));
    for (int e = 0; e < static_cast<int>(source.size()); ++e) source[e] = e;
    const std::vector<int>& kept = edits.kept[l] ? *edits.kept[l] : source;
    if (edits.kept[l] || config.NumRoutedExperts(l) != config.num_experts) out.pruned = true;
    out.experts_per_layer.push_back(static_cast<int>(kept.size()));
    out.counts.insert(static_cast<int>(kept.size()));
    out.kept_experts.push_back(OriginalIds(original, kept));
  }
  return out;
}

// The expert counts of `layout` into config.json `out` or its moec object `moec`.
void SetExpertCounts(const model::ModelConfig& config, const ExpertLayout& layout, json* moec,
                     json* out) {
  if (layout.pruned) {
    if (layout.counts.size() == 1 && *layout.counts.begin() > 0) {
      // Every MoE layer keeps the same number: the stock field says it and stock loaders need
      // nothing else (the kept original indices stay in the stage's outputs).
      (*out)[ExpertCountField(config.model_type)] = *layout.counts.begin();
    } else {
      (*moec)["experts_per_layer"] = layout.experts_per_layer;
      (*moec)["kept_experts"] = layout.kept_experts;  // original indices
    }
  }
  if (layout.any_moe_dropped) (*moec)["dropped_moe_layers"] = layout.dropped_out;
}

}  // namespace

absl::StatusOr<json> EditedConfig(const json& config_json, const model::ModelConfig& config,
                                  const StructuralEdits& edits) {
  const std::vector<int> kept_layers = KeptLayers(config.num_hidden_layers, edits.dropped_layers);
  const bool layers_dropped = !edits.dropped_layers.empty();
  json out = config_json;
  json moec = out.value("moec", json::object());
  if (layers_dropped) MOEC_RETURN_IF_ERROR(RenumberLayers(config, kept_layers, moec, &out));
  const ExpertLayout layout = LayoutExperts(config, edits, kept_layers);
  moec["format_version"] = 1;
  moec.erase("experts_per_layer");
  moec.erase("kept_experts");
  moec.erase("dropped_moe_layers");
  if (moec.contains("skip_beta") && moec["skip_beta"].is_array() && layers_dropped) {
    json sliced = json::array();
    for (int l : kept_layers) sliced.push_back(moec["skip_beta"][l]);
    moec["skip_beta"] = sliced;
  }
  SetExpertCounts(config, layout, &moec, &out);
  if (moec.size() > 1) out["moec"] = moec;  // more than format_version
  else out.erase("moec");
  return out;
}

namespace {

// How the tensors of edited layer `nl` map to those of source layer `l`.
struct LayerMapping {
  LayerMapping(const model::ModelConfig& source, const model::ModelConfig& edited, int nl, int l)
      : source(source), edited(edited), nl(nl), l(l) {}

  const model::ModelConfig& source;
  const model::ModelConfig& edited;
  const int nl;
  const int l;
  std::vector<int> kept;  // source experts of the edited ones
  std::vector<std::string> new_shared, old_shared;
  std::string new_prefix, old_prefix;

  // The source of tensor `t` of the edited layer (an empty name: none).
  EditedTensorSource SourceOf(const model::TensorSpec& t) const {
    EditedTensorSource s;
    if (t.role == model::TensorRole::kRoutedExpert) {
      for (auto proj : {model::ExpertProj::kGate, model::ExpertProj::kUp, model::ExpertProj::kDown}) {
        if (model::ExpertTensorName(edited, nl, t.expert, proj) == t.name) {
          s.name = model::ExpertTensorName(source, l, kept[t.expert], proj);
        }
      }
    } else if (t.role == model::TensorRole::kRouter &&
               t.name == model::RouterTensorName(edited, nl)) {
      s.name = model::RouterTensorName(source, l);
      s.rows.assign(kept.begin(), kept.end());
    } else if (t.role == model::TensorRole::kSharedExpert || t.role == model::TensorRole::kRouter) {
      for (size_t i = 0; i < new_shared.size() && i < old_shared.size(); ++i) {
        if (new_shared[i] == t.name) s.name = old_shared[i];
      }
    } else if (absl::StartsWith(t.name, new_prefix)) {
      s.name = old_prefix + t.name.substr(new_prefix.size());
    }
    return s;
  }
};

// Adds the sources of every tensor of edited layer `nl`, source layer `l`, to `from`.
absl::Status AddLayerSources(const model::ModelConfig& source, const model::ModelConfig& edited,
                             const StructuralEdits& edits,
                             const std::function<bool(const std::string&)>& contains, int nl,
                             int l, std::map<std::string, EditedTensorSource>* from) {
  LayerMapping m(source, edited, nl, l);
  m.new_prefix = absl::StrCat("model.layers.", nl, ".");
  m.old_prefix = absl::StrCat("model.layers.", l, ".");
  m.kept.resize(source.NumRoutedExperts(l));
  for (int e = 0; e < static_cast<int>(m.kept.size()); ++e) m.kept[e] = e;
  if (edits.kept[l]) m.kept = *edits.kept[l];
  m.new_shared = model::SharedExpertTensorNames(edited, nl);
  m.old_shared = model::SharedExpertTensorNames(source, l);
  for (const model::TensorSpec& t : model::LayerTensors(edited, nl)) {
    const EditedTensorSource s = m.SourceOf(t);
    if (s.name.empty() || !contains(s.name)) {
      return absl::InternalError(absl::StrCat("no source tensor for ", t.name, " of the edited model"));
    }
    (*from)[t.name] = s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::map<std::string, EditedTensorSource>> EditedTensorSources(
    const model::ModelConfig& source, const model::ModelConfig& edited, const StructuralEdits& edits,
    const std::function<bool(const std::string&)>& contains) {
  const std::vector<int> kept_layers = KeptLayers(source.num_hidden_layers, edits.dropped_layers);
  if (static_cast<int>(kept_layers.size()) != edited.num_hidden_layers) {
    return absl::InternalError("edited config and structural edits disagree on the layer count");
  }
  std::map<std::string, EditedTensorSource> from;
  for (size_t nl = 0; nl < kept_layers.size(); ++nl) {
    MOEC_RETURN_IF_ERROR(AddLayerSources(source, edited, edits, contains, static_cast<int>(nl),
                                         kept_layers[nl], &from));
  }
  for (const model::TensorSpec& t : model::ModelTensors(edited)) {
    if (from.count(t.name) == 0) from[t.name] = {t.name, {}, {}};  // embeddings, final norm, head
  }
  for (auto& [name, s] : from) {
    if (auto r = edits.replaced.find(s.name); r != edits.replaced.end()) s.replaced_key = r->second;
  }
  return from;
}

absl::StatusOr<at::Tensor> ReadEditedTensor(const StageContext& ctx,
                                            const storage::SafetensorsCheckpoint& checkpoint,
                                            const EditedTensorSource& s) {
  at::Tensor t;
  if (absl::EndsWith(s.replaced_key, kPrunedMaskSuffix)) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint.Get(s.name));
    MOEC_ASSIGN_OR_RETURN(at::Tensor mask, GetTensor(ctx, s.replaced_key));
    MOEC_ASSIGN_OR_RETURN(t, model::TensorFromView(v, at::kFloat));
    absl::StatusOr<at::Tensor> pruned = quant::ApplyPackedMask(t.contiguous(), mask);
    if (!pruned.ok()) return absl::DataLossError(absl::StrCat(s.replaced_key, ": ", pruned.status().message()));
    t = *std::move(pruned);
  } else if (!s.replaced_key.empty()) {
    MOEC_ASSIGN_OR_RETURN(t, GetTensor(ctx, s.replaced_key));
  } else {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint.Get(s.name));
    MOEC_ASSIGN_OR_RETURN(t, model::TensorFromView(v, at::kFloat));
  }
  if (!s.rows.empty()) t = t.index_select(0, at::tensor(s.rows, at::kLong));
  return t;
}

absl::Status WriteEditedCheckpoint(StageContext& ctx, const std::string& src,
                                   const model::ModelConfig& source,
                                   const model::ModelConfig& edited, const StructuralEdits& edits,
                                   const std::string& dir, uint64_t max_shard_bytes) {
  MOEC_ASSIGN_OR_RETURN(auto checkpoint, storage::SafetensorsCheckpoint::Open(src));
  MOEC_ASSIGN_OR_RETURN(
      auto from, EditedTensorSources(source, edited, edits, [&](const std::string& name) {
        return checkpoint->Contains(name);
      }));
  std::vector<storage::TensorSpec> specs;
  for (const model::TensorSpec& t : model::ModelTensors(edited)) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint->Get(from.at(t.name).name));
    const storage::DType d = v.dtype == storage::DType::kF16 || v.dtype == storage::DType::kBF16
                                 ? v.dtype
                                 : storage::DType::kF32;
    specs.push_back({t.name, d, t.shape});
  }
  auto produce = [&](const storage::TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
    if (ctx.IsCancelled()) return absl::CancelledError("export cancelled");
    return ReadEditedTensor(ctx, *checkpoint, from.at(spec.name));
  };
  return model::WriteCheckpointStreaming(dir, specs, produce, max_shard_bytes);
}

}  // namespace moec::dataplane
