// ConfigObject (checked JSON field access) and the "moec" overrides object of config.json.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/config/config_json.h"

namespace moec::model::internal {
namespace {

using nlohmann::json;

constexpr int kMoecFormatVersion = 1;

}  // namespace

std::string ConfigObject::Path(absl::string_view key) const {
  return prefix_.empty() ? std::string(key) : absl::StrCat(prefix_, ".", key);
}

absl::Status ConfigObject::Error(absl::string_view path, absl::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat("config file ", source_, ": field '", path, "': ", what));
}

const json* ConfigObject::Find(absl::string_view key) const {
  auto it = obj_.find(std::string(key));
  if (it == obj_.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> ConfigObject::AsInt(const json& v, absl::string_view path, int64_t min,
                                            int64_t max) const {
  if (!v.is_number_integer()) return Error(path, "expected an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) {
    return Error(path, absl::StrCat(v.get<uint64_t>(), " is out of range [", min, ", ", max, "]"));
  }
  const int64_t x = v.get<int64_t>();
  if (x < min || x > max) {
    return Error(path, absl::StrCat(x, " is out of range [", min, ", ", max, "]"));
  }
  return x;
}

absl::StatusOr<double> ConfigObject::AsNumber(const json& v, absl::string_view path, double min,
                                              double max) const {
  if (!v.is_number()) return Error(path, "expected a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < min || x > max) {
    return Error(path, absl::StrCat(x, " is out of range [", min, ", ", max, "]"));
  }
  return x;
}

absl::StatusOr<int64_t> ConfigObject::RequiredInt(absl::string_view key, int64_t min,
                                                  int64_t max) const {
  const json* v = Find(key);
  if (v == nullptr) return Error(Path(key), "missing required integer");
  return AsInt(*v, Path(key), min, max);
}

absl::StatusOr<int64_t> ConfigObject::OptionalInt(absl::string_view key, int64_t fallback,
                                                  int64_t min, int64_t max) const {
  const json* v = Find(key);
  if (v == nullptr) return fallback;
  return AsInt(*v, Path(key), min, max);
}

absl::StatusOr<double> ConfigObject::OptionalPositive(absl::string_view key,
                                                      double fallback) const {
  const json* v = Find(key);
  if (v == nullptr) return fallback;
  MOEC_ASSIGN_OR_RETURN(double x, AsNumber(*v, Path(key), 0.0, std::numeric_limits<double>::max()));
  if (x <= 0) return Error(Path(key), "must be > 0");
  return x;
}

absl::StatusOr<bool> ConfigObject::OptionalBool(absl::string_view key, bool fallback) const {
  const json* v = Find(key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return Error(Path(key), "expected a boolean");
  return v->get<bool>();
}

absl::StatusOr<std::string> ConfigObject::OptionalString(absl::string_view key) const {
  const json* v = Find(key);
  if (v == nullptr) return std::string();
  if (!v->is_string()) return Error(Path(key), "expected a string");
  return v->get<std::string>();
}

absl::StatusOr<std::vector<int>> ConfigObject::OptionalIndexSet(absl::string_view key, int min,
                                                                int max) const {
  const json* v = Find(key);
  std::vector<int> out;
  if (v == nullptr) return out;
  if (!v->is_array()) return Error(Path(key), "expected a list of integers");
  for (size_t i = 0; i < v->size(); ++i) {
    const std::string path = absl::StrCat(Path(key), "[", i, "]");
    MOEC_ASSIGN_OR_RETURN(int64_t x, AsInt((*v)[i], path, min, max));
    out.push_back(static_cast<int>(x));
  }
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end()) {
    return Error(Path(key), "lists an index twice");
  }
  return out;
}

namespace {

// A per-layer list `key` of the moec object: absent -> empty, else exactly `layers` entries.
absl::StatusOr<const json*> PerLayerList(const ConfigObject& moec, absl::string_view key,
                                         int layers) {
  const json* v = moec.Find(key);
  if (v == nullptr) return nullptr;
  if (!v->is_array()) return moec.Error(moec.Path(key), "expected a per-layer list");
  if (v->size() != static_cast<size_t>(layers)) {
    return moec.Error(moec.Path(key), absl::StrCat("has ", v->size(),
                                                   " entries, expected one "
                                                   "per layer (num_hidden_layers = ",
                                                   layers, ")"));
  }
  return v;
}

// Entry `l` of a per-layer list must be null at layers without a MoE block.
absl::Status NullOutsideMoe(const ConfigObject& moec, const ModelConfig& c, absl::string_view key,
                            const json& list, int l) {
  if (!list[l].is_null() && !c.IsMoeLayer(l)) {
    return moec.Error(absl::StrCat(moec.Path(key), "[", l, "]"),
                      c.IsMoeDropped(l) ? "must be null: the layer's MoE block is dropped"
                                        : "must be null: the layer has no MoE block");
  }
  return absl::OkStatus();
}

absl::Status ParseExperts(const ConfigObject& moec, ModelConfig* c) {
  const int layers = c->num_hidden_layers;
  MOEC_ASSIGN_OR_RETURN(const json* counts, PerLayerList(moec, "experts_per_layer", layers));
  if (counts != nullptr) {
    c->moec.experts_per_layer.resize(layers);
    for (int l = 0; l < layers; ++l) {
      MOEC_RETURN_IF_ERROR(NullOutsideMoe(moec, *c, "experts_per_layer", *counts, l));
      if ((*counts)[l].is_null()) continue;
      MOEC_ASSIGN_OR_RETURN(
          int64_t n, moec.AsInt((*counts)[l], absl::StrCat("moec.experts_per_layer[", l, "]"), 0,
                                c->num_experts));
      c->moec.experts_per_layer[l] = static_cast<int>(n);
    }
  }
  MOEC_ASSIGN_OR_RETURN(const json* kept, PerLayerList(moec, "kept_experts", layers));
  if (kept == nullptr) return absl::OkStatus();
  c->moec.kept_experts.resize(layers);
  for (int l = 0; l < layers; ++l) {
    MOEC_RETURN_IF_ERROR(NullOutsideMoe(moec, *c, "kept_experts", *kept, l));
    const json& entry = (*kept)[l];
    if (entry.is_null()) continue;
    const std::string path = absl::StrCat("moec.kept_experts[", l, "]");
    if (!entry.is_array()) return moec.Error(path, "expected a list of expert indices or null");
    std::vector<int> ids;
    for (size_t i = 0; i < entry.size(); ++i) {
      MOEC_ASSIGN_OR_RETURN(
          int64_t e, moec.AsInt(entry[i], absl::StrCat(path, "[", i, "]"), 0, c->num_experts - 1));
      if (!ids.empty() && e <= ids.back()) {
        return moec.Error(path, "expert indices must be strictly ascending");
      }
      ids.push_back(static_cast<int>(e));
    }
    if (!c->moec.experts_per_layer.empty() && c->moec.experts_per_layer[l].has_value() &&
        *c->moec.experts_per_layer[l] != static_cast<int>(ids.size())) {
      return moec.Error(path, absl::StrCat("lists ", ids.size(),
                                           " experts but "
                                           "moec.experts_per_layer[",
                                           l, "] is ", *c->moec.experts_per_layer[l]));
    }
    c->moec.kept_experts[l] = std::move(ids);
  }
  return absl::OkStatus();
}

// A per-layer list of optional fractions in [0, 1], null outside MoE layers.
absl::StatusOr<std::vector<std::optional<double>>> ParseBetas(const ConfigObject& obj,
                                                              const ModelConfig& c,
                                                              absl::string_view key) {
  std::vector<std::optional<double>> out;
  MOEC_ASSIGN_OR_RETURN(const json* list, PerLayerList(obj, key, c.num_hidden_layers));
  if (list == nullptr) return out;
  out.resize(c.num_hidden_layers);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    MOEC_RETURN_IF_ERROR(NullOutsideMoe(obj, c, key, *list, l));
    if ((*list)[l].is_null()) continue;
    MOEC_ASSIGN_OR_RETURN(out[l],
                          obj.AsNumber((*list)[l], absl::StrCat(obj.Path(key), "[", l, "]"), 0, 1));
  }
  return out;
}

absl::Status CheckKeys(const ConfigObject& obj, std::initializer_list<absl::string_view> known) {
  const absl::flat_hash_set<absl::string_view> allowed(known);
  for (auto it = obj.object().begin(); it != obj.object().end(); ++it) {
    if (!allowed.contains(it.key())) return obj.Error(obj.Path(it.key()), "unknown field");
  }
  return absl::OkStatus();
}

absl::Status ParseOdp(const ConfigObject& moec, ModelConfig* c) {
  const json* v = moec.Find("odp");
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_object()) return moec.Error("moec.odp", "expected an object");
  const ConfigObject odp(*v, moec.source(), "moec.odp");
  MOEC_RETURN_IF_ERROR(
      CheckKeys(odp, {"enabled_layers", "beta", "tau_low", "tau_high", "positional_prior"}));
  OdpSettings s;
  MOEC_ASSIGN_OR_RETURN(s.enabled_layers,
                        odp.OptionalIndexSet("enabled_layers", 0, c->num_hidden_layers - 1));
  for (int l : s.enabled_layers) {
    if (!c->IsMoeLayer(l)) {
      return odp.Error("moec.odp.enabled_layers", absl::StrCat("layer ", l, " has no MoE block"));
    }
  }
  MOEC_ASSIGN_OR_RETURN(s.beta, ParseBetas(odp, *c, "beta"));
  for (int l = 0; l < c->num_hidden_layers; ++l) {
    const bool enabled = std::binary_search(s.enabled_layers.begin(), s.enabled_layers.end(), l);
    const bool has_beta = !s.beta.empty() && s.beta[l].has_value();
    if (enabled != has_beta) {
      return odp.Error(absl::StrCat("moec.odp.beta[", l, "]"),
                       enabled ? "missing for an enabled layer" : "set for a layer not enabled");
    }
  }
  const json* low = odp.Find("tau_low");
  if (low != nullptr) {
    MOEC_ASSIGN_OR_RETURN(s.tau_low, odp.AsNumber(*low, "moec.odp.tau_low", 0, 1));
  }
  const json* high = odp.Find("tau_high");
  if (high != nullptr) {
    MOEC_ASSIGN_OR_RETURN(s.tau_high, odp.AsNumber(*high, "moec.odp.tau_high", 0, 1));
  }
  if (s.tau_low + s.tau_high > 1) {
    return odp.Error("moec.odp.tau_high", "tau_low + tau_high must not exceed 1");
  }
  MOEC_ASSIGN_OR_RETURN(s.positional_prior, odp.OptionalBool("positional_prior", false));
  c->moec.odp = std::move(s);
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseMoecOverrides(const json& value, ModelConfig* c) {
  const ConfigObject root(value, c->source, "");
  if (!value.is_object()) return root.Error("moec", "expected an object");
  const ConfigObject moec(value, c->source, "moec");
  MOEC_RETURN_IF_ERROR(CheckKeys(moec, {"format_version", "experts_per_layer", "kept_experts",
                                        "dropped_moe_layers", "skip_beta", "odp"}));
  MOEC_ASSIGN_OR_RETURN(int64_t version, moec.OptionalInt("format_version", kMoecFormatVersion,
                                                          kMoecFormatVersion, kMoecFormatVersion));
  c->moec.format_version = static_cast<int>(version);
  MOEC_ASSIGN_OR_RETURN(c->moec.dropped_moe_layers,
                        moec.OptionalIndexSet("dropped_moe_layers", 0, c->num_hidden_layers - 1));
  for (int l : c->moec.dropped_moe_layers) {
    if (!c->IsArchitecturalMoeLayer(l)) {
      return moec.Error("moec.dropped_moe_layers",
                        absl::StrCat("layer ", l, " is a dense layer, not a MoE layer"));
    }
  }
  MOEC_RETURN_IF_ERROR(ParseExperts(moec, c));
  MOEC_ASSIGN_OR_RETURN(c->moec.skip_beta, ParseBetas(moec, *c, "skip_beta"));
  return ParseOdp(moec, c);
}

}  // namespace moec::model::internal
