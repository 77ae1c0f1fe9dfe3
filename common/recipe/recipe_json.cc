// The canonical JSON form of a recipe (what a job stores and workers read), and the queries over
// a validated recipe that coordinator, client and stages share.
#include <set>

#include "absl/strings/str_cat.h"
#include "common/recipe/param_check.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_catalog.h"
#include "common/status_macros.h"

namespace moec::recipe {
namespace {

using nlohmann::json;

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("canonical recipe: field '", field, "': ", what));
}

absl::StatusOr<std::string> StringField(const json& j, const std::string& key,
                                        const std::string& field) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return Bad(field, "expected a string");
  return it->get<std::string>();
}

absl::StatusOr<int64_t> IntField(const json& j, const std::string& key, const std::string& field,
                                 int64_t min, int64_t max) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return Bad(field, "expected an integer");
  const int64_t v = it->get<int64_t>();
  if (v < min || v > max) return Bad(field, absl::StrCat("must be in [", min, ", ", max, "]"));
  return v;
}

absl::StatusOr<std::optional<DataSpec>> DataField(const json& j, const std::string& key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return Bad(key, "expected an object or null");
  DataSpec d;
  MOEC_ASSIGN_OR_RETURN(d.path, StringField(*it, "path", key + ".path"));
  MOEC_ASSIGN_OR_RETURN(d.samples, IntField(*it, "samples", key + ".samples", 1, 1 << 24));
  MOEC_ASSIGN_OR_RETURN(d.seqlen, IntField(*it, "seqlen", key + ".seqlen", 2, 1 << 20));
  MOEC_ASSIGN_OR_RETURN(d.seed, IntField(*it, "seed", key + ".seed", 0, INT64_MAX));
  MOEC_ASSIGN_OR_RETURN(d.sampling, StringField(*it, "sampling", key + ".sampling"));
  if (d.sampling != "random_windows" && d.sampling != "chunks") {
    return Bad(key + ".sampling", "must be random_windows or chunks");
  }
  // Absent in recipes stored before it existed: the default.
  if (it->contains("chunk_tokens")) {
    MOEC_ASSIGN_OR_RETURN(d.chunk_tokens,
                          IntField(*it, "chunk_tokens", key + ".chunk_tokens", 0, 1 << 24));
  }
  return d;
}

// Every parameter of the kind: checked when present, its default when not.
absl::StatusOr<json> ParamsField(const json& with, const StageKindSpec& kind,
                                 const std::string& field) {
  if (!with.is_object()) return Bad(field, "expected an object");
  for (const auto& [name, value] : with.items()) {
    if (kind.FindParam(name) == nullptr) {
      return Bad(field, absl::StrCat("unknown parameter '", name, "' for kind ", kind.kind));
    }
  }
  json params = json::object();
  for (const ParamSpec& p : kind.params) {
    const std::string at = absl::StrCat(field, ".", p.name);
    auto it = with.find(p.name);
    if (it == with.end()) {
      if (p.default_value.is_null()) return Bad(at, "missing required parameter");
      params[p.name] = p.default_value;
      continue;
    }
    if (!internal::HasParamType(*it, p)) {
      return Bad(at, absl::StrCat("expected ", internal::ParamTypeName(p)));
    }
    const std::string problem = internal::ParamProblem(*it, p);
    if (!problem.empty()) return Bad(at, problem);
    params[p.name] = *it;
  }
  return params;
}

absl::StatusOr<StageSpec> StageField(const json& s, const std::string& field,
                                     const std::set<std::string>& earlier) {
  if (!s.is_object()) return Bad(field, "expected an object");
  StageSpec stage;
  MOEC_ASSIGN_OR_RETURN(stage.id, StringField(s, "id", field + ".id"));
  if (!internal::ValidId(stage.id)) return Bad(field + ".id", "must be 1-64 of [A-Za-z0-9_-]");
  if (earlier.count(stage.id) > 0) return Bad(field + ".id", "duplicate stage id");
  MOEC_ASSIGN_OR_RETURN(stage.kind, StringField(s, "kind", field + ".kind"));
  const StageKindSpec* kind = FindStageKind(stage.kind);
  if (kind == nullptr) {
    return Bad(field + ".kind", absl::StrCat("unknown kind '", stage.kind, "' (known: ",
                                             StageKindList(), ")"));
  }
  auto needs = s.find("needs");
  if (needs == s.end() || !needs->is_array()) return Bad(field + ".needs", "expected a list");
  for (const json& n : *needs) {
    if (!n.is_string() || earlier.count(n.get<std::string>()) == 0) {
      return Bad(field + ".needs", "must name stages listed before it");
    }
    stage.needs.push_back(n.get<std::string>());
  }
  auto with = s.find("with");
  MOEC_ASSIGN_OR_RETURN(stage.params, ParamsField(with == s.end() ? json::object() : *with,
                                                  *kind, field + ".with"));
  return stage;
}

}  // namespace

std::string Recipe::CanonicalJson() const {
  json j;
  j["name"] = name;
  j["model"] = model;
  j["output"] = output;
  j["workers"] = workers;
  if (threads > 0) j["threads"] = threads;  // absent when not fixed: older jobs keep their JSON
  auto data = [](const std::optional<DataSpec>& d) {
    if (!d) return json();
    return json{{"path", d->path},         {"samples", d->samples},
                {"seqlen", d->seqlen},     {"seed", d->seed},
                {"sampling", d->sampling}, {"chunk_tokens", d->chunk_tokens}};
  };
  j["calibration"] = data(calibration);
  j["evaluation"] = data(evaluation);
  j["stages"] = json::array();
  for (const auto& s : stages) {
    j["stages"].push_back({{"id", s.id}, {"kind", s.kind}, {"needs", s.needs}, {"with", s.params}});
  }
  return j.dump();
}

absl::StatusOr<Recipe> Recipe::FromCanonicalJson(absl::string_view text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("canonical recipe: not a JSON object");
  static const std::set<std::string> kKeys = {"name",        "model",      "output", "workers", "threads",
                                              "calibration", "evaluation", "stages",
                                              // Jobs stored before JobRecord.overwrite existed.
                                              "overwrite"};
  for (const auto& [key, value] : j.items()) {
    if (kKeys.count(key) == 0) return Bad(key, "unknown field");
  }
  Recipe r;
  r.source = "canonical recipe";
  MOEC_ASSIGN_OR_RETURN(r.name, StringField(j, "name", "name"));
  if (!internal::ValidId(r.name, /*allow_dot=*/true)) return Bad("name", "not a valid name");
  MOEC_ASSIGN_OR_RETURN(r.model, StringField(j, "model", "model"));
  MOEC_ASSIGN_OR_RETURN(r.output, StringField(j, "output", "output"));
  if (r.model.empty() || r.output.empty()) return Bad("model", "model and output must be set");
  MOEC_ASSIGN_OR_RETURN(int64_t workers, IntField(j, "workers", "workers", 1, 1024));
  r.workers = static_cast<int>(workers);
  if (j.contains("threads")) {
    MOEC_ASSIGN_OR_RETURN(int64_t threads, IntField(j, "threads", "threads", 1, 1024));
    r.threads = static_cast<int>(threads);
  }
  MOEC_ASSIGN_OR_RETURN(r.calibration, DataField(j, "calibration"));
  MOEC_ASSIGN_OR_RETURN(r.evaluation, DataField(j, "evaluation"));
  auto stages = j.find("stages");
  if (stages == j.end() || !stages->is_array() || stages->empty()) {
    return Bad("stages", "expected a non-empty list");
  }
  std::set<std::string> earlier;
  for (size_t i = 0; i < stages->size(); ++i) {
    MOEC_ASSIGN_OR_RETURN(StageSpec s,
                          StageField((*stages)[i], absl::StrCat("stages[", i, "]"), earlier));
    earlier.insert(s.id);
    r.stages.push_back(std::move(s));
  }
  return r;
}

const StageKindSpec& StageSpec::spec() const {
  const StageKindSpec* k = FindStageKind(kind);
  if (k == nullptr) {
    // Only a StageSpec that did not come from validation can get here.
    static const StageKindSpec kUnknown{};
    return kUnknown;
  }
  return *k;
}

const StageSpec* Recipe::FindStage(absl::string_view id) const {
  for (const auto& s : stages) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

std::vector<const StageSpec*> Recipe::NeedsWhere(
    const StageSpec& stage, const std::function<bool(const StageKindSpec&)>& pred) const {
  std::vector<const StageSpec*> out;
  for (const StageSpec& s : stages) {
    if (std::find(stage.needs.begin(), stage.needs.end(), s.id) != stage.needs.end() &&
        pred(s.spec())) {
      out.push_back(&s);
    }
  }
  return out;
}

const StageSpec* Recipe::NeededOfKind(const StageSpec& stage, absl::string_view kind) const {
  std::vector<const StageSpec*> found =
      NeedsWhere(stage, [&](const StageKindSpec& k) { return k.kind == kind; });
  return found.empty() ? nullptr : found.front();
}

std::map<std::string, std::string> ResolveModelViews(absl::Span<const StageSpec> stages) {
  std::map<std::string, std::string> view_of;
  std::map<std::string, const StageSpec*> by_id;
  for (const StageSpec& s : stages) {
    for (const std::string& need : s.needs) {
      auto n = by_id.find(need);
      if (n == by_id.end()) continue;
      const bool restructure = n->second->spec().restructure;
      auto inherited = view_of.find(need);
      const std::string v = restructure ? need
                                        : inherited == view_of.end() ? "" : inherited->second;
      if (!v.empty()) view_of[s.id] = v;
    }
    by_id[s.id] = &s;
  }
  return view_of;
}

}  // namespace moec::recipe
