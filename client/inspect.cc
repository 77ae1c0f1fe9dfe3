#include "client/inspect.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/config/tensor_names.h"
#include "nlohmann/json.hpp"
#include "storage/dtype.h"
#include "storage/file_util.h"
#include "storage/safetensors_reader.h"

namespace moec::client {
namespace {

namespace fs = std::filesystem;

void FillFromConfig(const model::ModelConfig& c, ModelInspection* out) {
  out->model_type = c.model_type;
  out->num_layers = c.num_hidden_layers;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    out->num_moe_layers += c.IsMoeLayer(l);
    out->num_dense_layers += c.IsDenseLayer(l);
    out->num_dropped_moe_layers += c.IsMoeDropped(l);
    out->routed_experts_per_layer.push_back(c.NumRoutedExperts(l));
  }
  out->num_experts = c.num_experts;
  out->top_k = c.num_experts_per_tok;
  out->shared_expert_intermediate_size = c.SharedExpertIntermediateSize();
  if (c.arch == model::Architecture::kDeepseek) {
    out->shared_experts = c.n_shared_experts;
  } else if (out->shared_expert_intermediate_size > 0) {
    out->shared_experts = 1;  // Qwen2-MoE: one shared MLP
  }
  out->hidden_size = c.hidden_size;
  out->intermediate_size = c.intermediate_size;
  out->moe_intermediate_size = c.moe_intermediate_size;
  out->num_attention_heads = c.num_attention_heads;
  out->num_key_value_heads = c.num_key_value_heads;
  out->head_dim = c.head_dim;
  out->vocab_size = c.vocab_size;
  out->tie_word_embeddings = c.tie_word_embeddings;
  out->torch_dtype = c.torch_dtype;
  out->parameters = model::CountParameters(c);
}

// moec's per-layer overrides, one entry per layer that has any.
void FillOverrides(const model::ModelConfig& c, ModelInspection* out) {
  const model::MoecOverrides& m = c.moec;
  out->odp = m.odp;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerOverride o;
    o.layer = l;
    if (!m.experts_per_layer.empty()) o.experts = m.experts_per_layer[l];
    if (!m.kept_experts.empty()) o.kept_experts = m.kept_experts[l];
    o.moe_dropped = c.IsMoeDropped(l);
    if (!m.skip_beta.empty()) o.skip_beta = m.skip_beta[l];
    if (m.odp.has_value() && l < static_cast<int>(m.odp->beta.size())) o.odp_beta = m.odp->beta[l];
    if (o.experts || o.kept_experts || o.moe_dropped || o.skip_beta || o.odp_beta) {
      out->layer_overrides.push_back(std::move(o));
    }
  }
}

// "architectures" and whether a "moec" object is present; LoadModelConfig has validated the
// file already, so a failure here only leaves these fields empty.
void FillRawConfigFields(const std::string& model_dir, ModelInspection* out) {
  absl::StatusOr<std::string> text = storage::ReadFileToString(
      (fs::path(model_dir) / "config.json").string(), model::kMaxModelConfigBytes);
  if (!text.ok()) return;
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array()) {
    for (const nlohmann::json& a : *it) {
      if (a.is_string()) out->architectures.push_back(a.get<std::string>());
    }
  }
  if (auto it = j.find("moec"); it != j.end() && it->is_object()) out->has_moec_overrides = true;
}

absl::Status FillFromWeights(const std::string& model_dir, const model::ModelConfig& c,
                             ModelInspection* out) {
  std::error_code ec;
  const bool single = fs::exists(fs::path(model_dir) / "model.safetensors", ec);
  const bool sharded = fs::exists(fs::path(model_dir) / "model.safetensors.index.json", ec);
  if (!single && !sharded) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(auto ckpt, storage::SafetensorsCheckpoint::Open(model_dir));
  out->has_weights = true;
  out->num_shards = static_cast<int>(ckpt->shards().size());
  for (const auto& shard : ckpt->shards()) {
    const uintmax_t size = fs::file_size(shard->path(), ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot stat ", shard->path(), ": ", ec.message()));
    }
    out->size_on_disk += size;
  }
  absl::flat_hash_map<std::string, std::vector<int64_t>> expected;
  for (model::TensorSpec& s : model::ModelTensors(c)) expected[s.name] = std::move(s.shape);
  for (const std::string& name : ckpt->TensorNames()) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, ckpt->Get(name));
    ++out->num_tensors;
    out->tensor_bytes += v.size;
    ++out->tensors_by_dtype[std::string(storage::DTypeName(v.dtype))];
    auto it = expected.find(name);
    if (it == expected.end()) {
      out->unexpected_tensors.push_back(name);
      continue;
    }
    if (!std::equal(v.shape.begin(), v.shape.end(), it->second.begin(), it->second.end())) {
      out->mismatched_shapes.push_back(name);
    }
    expected.erase(it);
  }
  for (const auto& [name, shape] : expected) out->missing_tensors.push_back(name);
  std::sort(out->missing_tensors.begin(), out->missing_tensors.end());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelInspection> InspectModel(const std::string& model_dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(model_dir, ec);
  if (!fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
  }
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("model path ", model_dir, " is not a directory"));
  }
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig config, model::LoadModelConfig(model_dir));
  ModelInspection out;
  out.model_dir = model_dir;
  FillFromConfig(config, &out);
  FillOverrides(config, &out);
  FillRawConfigFields(model_dir, &out);
  MOEC_RETURN_IF_ERROR(
      Annotate(FillFromWeights(model_dir, config, &out), absl::StrCat("model ", model_dir)));
  return out;
}

}  // namespace moec::client
