#include "common/recipe/recipe.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/dataset_files.h"
#include "common/recipe/overrides.h"
#include "common/recipe/param_check.h"
#include "common/recipe/rules.h"
#include "common/recipe/stage_catalog.h"
#include "common/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace moec::recipe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kNoDirectory[] = "' is relative, and the recipe came without a file to resolve it "
                                "against: give an absolute path, or submit the recipe's file";

bool Within(const fs::path& p, const fs::path& root) {
  auto [r, q] = std::mismatch(root.begin(), root.end(), p.begin(), p.end());
  return r == root.end() || (std::next(r) == root.end() && r->empty());
}

class Parser {
 public:
  Parser(std::string source, const RecipeOptions& options)
      : source_(std::move(source)),
        // A recipe sent as text (no file) has no directory: its paths must be absolute.
        dir_(source_.empty() ? fs::path() : fs::absolute(fs::path(source_)).parent_path()),
        options_(options) {}

  absl::StatusOr<Recipe> Parse(const YAML::Node& root);

 private:
  absl::Status Err(const YAML::Node& n, absl::string_view what,
                   absl::StatusCode code = absl::StatusCode::kInvalidArgument) const {
    const int line = n.IsDefined() ? n.Mark().line : -1;
    const std::string name = source_.empty() ? "recipe" : source_;  // text without a file
    return absl::Status(code, absl::StrCat(line >= 0 ? absl::StrCat(name, ":", line + 1) : name,
                                           ": ", what));
  }
  absl::Status CheckKeys(const YAML::Node& map, const std::set<std::string>& allowed,
                         absl::string_view context) const;
  absl::StatusOr<std::string> String(const YAML::Node& n, absl::string_view what) const;
  absl::StatusOr<int64_t> Int(const YAML::Node& n, absl::string_view what, int64_t min,
                              int64_t max) const;
  absl::StatusOr<std::string> Path(const YAML::Node& n, absl::string_view what) const;
  absl::StatusOr<DataSpec> Data(const YAML::Node& n, absl::string_view what, bool calibration) const;
  absl::StatusOr<StageSpec> Stage(const YAML::Node& n) const;
  absl::Status Needs(const YAML::Node& needs, StageSpec* s) const;
  absl::Status StageParams(const YAML::Node& n, const StageKindSpec& spec, StageSpec* s) const;
  absl::Status CheckWith(const YAML::Node& with, const std::set<std::string>& names,
                         const StageSpec& s) const;
  absl::StatusOr<json> Param(const YAML::Node& n, const ParamSpec& spec,
                             absl::string_view stage) const;
  absl::StatusOr<json> IntListParam(const YAML::Node& n, const ParamSpec& spec,
                                    const std::string& what) const;
  absl::Status Order(const YAML::Node& stages_node, std::vector<StageSpec>* stages) const;
  absl::Status IndexStages(const YAML::Node& node, const std::vector<StageSpec>& stages,
                           std::map<std::string, size_t>* index) const;
  absl::Status CycleError(const YAML::Node& node, const std::vector<StageSpec>& stages,
                          const std::vector<bool>& placed,
                          const std::map<std::string, size_t>& index) const;

  const std::string source_;
  const fs::path dir_;
  const RecipeOptions& options_;
};

absl::Status Parser::CheckKeys(const YAML::Node& map, const std::set<std::string>& allowed,
                               absl::string_view context) const {
  if (!map.IsMap()) return Err(map, absl::StrCat(context, " must be a mapping"));
  std::set<std::string> seen;
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    if (!seen.insert(key).second) {
      return Err(kv.first, absl::StrCat(context, ": duplicate key '", key, "'"));
    }
    if (!allowed.count(key)) {
      return Err(kv.first, absl::StrCat(context, ": unknown key '", key, "' (known: ",
                                        absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Parser::String(const YAML::Node& n, absl::string_view what) const {
  if (!n.IsDefined() || n.IsNull()) return Err(n, absl::StrCat("missing ", what));
  if (!n.IsScalar()) return Err(n, absl::StrCat(what, " must be a string"));
  return n.Scalar();
}

absl::StatusOr<int64_t> Parser::Int(const YAML::Node& n, absl::string_view what, int64_t min,
                                    int64_t max) const {
  int64_t v = 0;
  if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v)) {
    return Err(n, absl::StrCat(what, " must be an integer"));
  }
  if (v < min || v > max) {
    return Err(n, absl::StrCat(what, " must be in [", min, ", ", max, "], got ", v));
  }
  return v;
}

absl::StatusOr<std::string> Parser::Path(const YAML::Node& n, absl::string_view what) const {
  MOEC_ASSIGN_OR_RETURN(std::string raw, String(n, what));
  if (raw.empty()) return Err(n, absl::StrCat(what, " is empty"));
  fs::path p(raw);
  if (p.is_relative() && dir_.empty()) return Err(n, absl::StrCat(what, " '", raw, kNoDirectory));
  if (p.is_relative()) p = dir_ / p;
  std::error_code ec;
  p = fs::weakly_canonical(p, ec);
  if (ec) return Err(n, absl::StrCat(what, " '", raw, "': ", ec.message()));
  if (!options_.allowed_roots.empty()) {
    bool ok = false;
    for (const auto& root : options_.allowed_roots) {
      if (Within(p, fs::weakly_canonical(root, ec))) ok = true;
    }
    if (!ok) {
      return Err(n, absl::StrCat(what, " ", p.string(), " is outside the allowed roots (",
                                 absl::StrJoin(options_.allowed_roots, ", "), ")"),
                 absl::StatusCode::kPermissionDenied);
    }
  }
  return p.string();
}

absl::StatusOr<DataSpec> Parser::Data(const YAML::Node& n, absl::string_view what,
                                      bool calibration) const {
  MOEC_RETURN_IF_ERROR(CheckKeys(n, calibration ? std::set<std::string>{"path", "samples",
                                                                        "seqlen", "seed",
                                                                        "sampling",
                                                                        "chunk_tokens"}
                                                : std::set<std::string>{"path", "seqlen",
                                                                        "samples"},
                                 what));
  DataSpec d;
  MOEC_ASSIGN_OR_RETURN(d.path, Path(n["path"], absl::StrCat(what, ".path")));
  if (!HasDatasetExtension(d.path)) {
    return Err(n["path"], absl::StrCat(what, ".path: ", d.path, " has no dataset extension (",
                                       kDatasetExtensionList, "): the format follows from it"));
  }
  if (options_.check_files && !fs::is_regular_file(d.path)) {
    return Err(n["path"], absl::StrCat(what, ".path: no such file ", d.path),
               absl::StatusCode::kNotFound);
  }
  if (n["samples"]) {
    MOEC_ASSIGN_OR_RETURN(d.samples, Int(n["samples"], absl::StrCat(what, ".samples"), 1, 1 << 24));
  }
  if (n["seqlen"]) {
    MOEC_ASSIGN_OR_RETURN(d.seqlen, Int(n["seqlen"], absl::StrCat(what, ".seqlen"), 2, 1 << 20));
  }
  if (n["seed"]) {
    MOEC_ASSIGN_OR_RETURN(d.seed, Int(n["seed"], absl::StrCat(what, ".seed"), 0, INT64_MAX));
  }
  if (n["sampling"]) {
    MOEC_ASSIGN_OR_RETURN(d.sampling, String(n["sampling"], absl::StrCat(what, ".sampling")));
    if (d.sampling != "random_windows" && d.sampling != "chunks") {
      return Err(n["sampling"], absl::StrCat(what, ".sampling must be random_windows or chunks, got '",
                                             d.sampling, "'"));
    }
  }
  if (n["chunk_tokens"]) {
    MOEC_ASSIGN_OR_RETURN(d.chunk_tokens,
                          Int(n["chunk_tokens"], absl::StrCat(what, ".chunk_tokens"), 0, 1 << 24));
  }
  return d;
}

absl::StatusOr<json> Parser::Param(const YAML::Node& n, const ParamSpec& spec,
                                   absl::string_view stage) const {
  const std::string what = absl::StrCat("stage '", stage, "' parameter '", spec.name, "'");
  json v;
  bool typed = n.IsScalar();
  switch (spec.type) {
    case ParamType::kInt: {
      int64_t i = 0;
      typed = typed && YAML::convert<int64_t>::decode(n, i);
      v = i;
      break;
    }
    case ParamType::kFloat: {
      double d = 0;
      typed = typed && YAML::convert<double>::decode(n, d);
      v = d;
      break;
    }
    case ParamType::kBool: {
      bool b = false;
      typed = typed && YAML::convert<bool>::decode(n, b);
      v = b;
      break;
    }
    case ParamType::kString:
    case ParamType::kEnum:
      if (typed) v = n.Scalar();
      break;
    case ParamType::kIntList:
      return IntListParam(n, spec, what);
  }
  if (!typed) return Err(n, absl::StrCat(what, " must be ", internal::ParamTypeName(spec)));
  const std::string problem = internal::ParamProblem(v, spec);
  if (!problem.empty()) return Err(n, absl::StrCat(what, " ", problem));
  return v;
}

absl::StatusOr<json> Parser::IntListParam(const YAML::Node& n, const ParamSpec& spec,
                                          const std::string& what) const {
  if (!n.IsSequence() || n.size() == 0) {
    return Err(n, absl::StrCat(what, " must be ", internal::ParamTypeName(spec)));
  }
  json arr = json::array();
  for (const auto& e : n) {
    MOEC_ASSIGN_OR_RETURN(int64_t v, Int(e, what, static_cast<int64_t>(spec.min),
                                         static_cast<int64_t>(spec.max)));
    arr.push_back(v);
  }
  return arr;
}

absl::StatusOr<StageSpec> Parser::Stage(const YAML::Node& n) const {
  MOEC_RETURN_IF_ERROR(CheckKeys(n, {"id", "kind", "needs", "with"}, "stage"));
  StageSpec s;
  s.line = n.Mark().line + 1;
  MOEC_ASSIGN_OR_RETURN(s.id, String(n["id"], "stage id"));
  if (!internal::ValidId(s.id)) {
    return Err(n["id"], absl::StrCat("stage id '", s.id, "' must be 1-64 of [A-Za-z0-9_-]"));
  }
  MOEC_ASSIGN_OR_RETURN(s.kind, String(n["kind"], absl::StrCat("kind of stage '", s.id, "'")));
  const StageKindSpec* spec = FindStageKind(s.kind);
  if (spec == nullptr) {
    return Err(n["kind"], absl::StrCat("stage '", s.id, "': unknown kind '", s.kind,
                                       "' (known: ", StageKindList(), ")"));
  }
  MOEC_RETURN_IF_ERROR(Needs(n["needs"], &s));
  MOEC_RETURN_IF_ERROR(StageParams(n, *spec, &s));
  return s;
}

// The needs of stage `s` (node `needs`, which may be absent).
absl::Status Parser::Needs(const YAML::Node& needs, StageSpec* s) const {
  if (!needs) return absl::OkStatus();
  if (!needs.IsSequence()) {
    return Err(needs, absl::StrCat("stage '", s->id, "': needs must be a list"));
  }
  for (const auto& e : needs) {
    MOEC_ASSIGN_OR_RETURN(std::string need, String(e, absl::StrCat("stage '", s->id, "' needs")));
    s->needs.push_back(need);
  }
  return absl::OkStatus();
}

// The parameters of stage `s` (node `n`, kind `spec`): those of its `with` mapping, the kind's
// defaults for the others.
absl::Status Parser::StageParams(const YAML::Node& n, const StageKindSpec& spec,
                                 StageSpec* s) const {
  YAML::Node with = n["with"];
  std::set<std::string> names;
  for (const auto& p : spec.params) names.insert(p.name);
  if (with && !with.IsNull()) MOEC_RETURN_IF_ERROR(CheckWith(with, names, *s));
  s->params = json::object();
  const bool has_with = with && with.IsMap();
  for (const ParamSpec& p : spec.params) {
    if (!has_with || !with[p.name]) {
      if (p.default_value.is_null()) {
        return Err(n, absl::StrCat("stage '", s->id, "': missing required parameter '", p.name,
                                   "' (", p.help, ")"));
      }
      s->params[p.name] = p.default_value;
      continue;
    }
    MOEC_ASSIGN_OR_RETURN(s->params[p.name], Param(with[p.name], p, s->id));
  }
  return absl::OkStatus();
}

// Refuses a `with` of stage `s` that is not a mapping of the parameters `names` of its kind.
absl::Status Parser::CheckWith(const YAML::Node& with, const std::set<std::string>& names,
                               const StageSpec& s) const {
  if (!with.IsMap()) return Err(with, absl::StrCat("stage '", s.id, "': with must be a mapping"));
  for (const auto& kv : with) {
    const std::string key = kv.first.as<std::string>();
    if (!names.count(key)) {
      return Err(kv.first, absl::StrCat("stage '", s.id, "': unknown parameter '", key,
                                        "' for kind ", s.kind, " (known: ",
                                        names.empty() ? "none" : absl::StrJoin(names, ", "),
                                        ")"));
    }
  }
  return CheckKeys(with, names, absl::StrCat("stage '", s.id, "' with"));
}

// Orders stages topologically, keeping file order where dependencies allow.
absl::Status Parser::Order(const YAML::Node& node, std::vector<StageSpec>* stages) const {
  std::map<std::string, size_t> index;
  MOEC_RETURN_IF_ERROR(IndexStages(node, *stages, &index));
  std::vector<StageSpec> out;
  std::vector<bool> placed(stages->size(), false);
  while (out.size() < stages->size()) {
    bool progress = false;
    for (size_t i = 0; i < stages->size() && !progress; ++i) {
      if (placed[i]) continue;
      bool ready = true;
      for (const auto& need : (*stages)[i].needs) ready = ready && placed[index[need]];
      if (ready) {
        placed[i] = true;
        out.push_back((*stages)[i]);
        progress = true;
      }
    }
    if (!progress) return CycleError(node, *stages, placed, index);
  }
  *stages = std::move(out);
  return absl::OkStatus();
}

// Stage id -> position in `stages`; refuses duplicate ids and needs that name no other stage.
absl::Status Parser::IndexStages(const YAML::Node& node, const std::vector<StageSpec>& stages,
                                 std::map<std::string, size_t>* index) const {
  for (size_t i = 0; i < stages.size(); ++i) {
    if (!index->emplace(stages[i].id, i).second) {
      return Err(node[i]["id"], absl::StrCat("duplicate stage id '", stages[i].id, "'"));
    }
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    for (size_t k = 0; k < stages[i].needs.size(); ++k) {
      const std::string& need = stages[i].needs[k];
      if (!index->count(need)) {
        return Err(node[i]["needs"][k], absl::StrCat("stage '", stages[i].id,
                                                     "' needs '", need, "', which is not a stage"));
      }
      if (need == stages[i].id) {
        return Err(node[i]["needs"][k], absl::StrCat("stage '", need, "' needs itself"));
      }
    }
  }
  return absl::OkStatus();
}

// Every stage not `placed` waits on another unplaced one: walks the needs to find the cycle.
absl::Status Parser::CycleError(const YAML::Node& node, const std::vector<StageSpec>& stages,
                                const std::vector<bool>& placed,
                                const std::map<std::string, size_t>& index) const {
  size_t cur = 0;
  while (placed[cur]) ++cur;
  std::vector<size_t> path;
  std::vector<int> pos(stages.size(), -1);
  while (pos[cur] < 0) {
    pos[cur] = static_cast<int>(path.size());
    path.push_back(cur);
    for (const auto& need : stages[cur].needs) {
      if (!placed[index.at(need)]) {
        cur = index.at(need);
        break;
      }
    }
  }
  std::vector<std::string> ids;
  for (size_t k = pos[cur]; k < path.size(); ++k) ids.push_back(stages[path[k]].id);
  ids.push_back(stages[cur].id);
  return Err(node[cur], absl::StrCat("stages form a cycle: ", absl::StrJoin(ids, " -> ")));
}

absl::StatusOr<Recipe> Parser::Parse(const YAML::Node& root) {
  MOEC_RETURN_IF_ERROR(CheckKeys(root, {"name", "model", "output", "calibration", "evaluation",
                                        "workers", "threads", "stages"},
                                 "recipe"));
  Recipe r;
  r.source = source_;
  MOEC_ASSIGN_OR_RETURN(r.name, String(root["name"], "name"));
  if (!internal::ValidId(r.name, /*allow_dot=*/true)) {
    return Err(root["name"], absl::StrCat("name '", r.name, "' must be 1-64 of [A-Za-z0-9._-]"));
  }
  MOEC_ASSIGN_OR_RETURN(r.model, Path(root["model"], "model"));
  if (options_.check_files) {
    if (!fs::is_directory(r.model)) {
      return Err(root["model"], absl::StrCat("model: no such directory ", r.model),
                 absl::StatusCode::kNotFound);
    }
    if (!fs::is_regular_file(fs::path(r.model) / "config.json")) {
      return Err(root["model"], absl::StrCat("model: ", r.model, " has no config.json"),
                 absl::StatusCode::kNotFound);
    }
  }
  MOEC_ASSIGN_OR_RETURN(r.output, Path(root["output"], "output"));
  if (root["calibration"]) {
    MOEC_ASSIGN_OR_RETURN(r.calibration, Data(root["calibration"], "calibration", true));
  }
  if (root["evaluation"]) {
    MOEC_ASSIGN_OR_RETURN(r.evaluation, Data(root["evaluation"], "evaluation", false));
  }
  if (root["workers"]) {
    MOEC_ASSIGN_OR_RETURN(int64_t w, Int(root["workers"], "workers", 1, 1024));
    r.workers = static_cast<int>(w);
  }
  if (root["threads"]) {
    MOEC_ASSIGN_OR_RETURN(int64_t t, Int(root["threads"], "threads", 1, 1024));
    r.threads = static_cast<int>(t);
  }
  YAML::Node stages = root["stages"];
  if (!stages || !stages.IsSequence() || stages.size() == 0) {
    return Err(stages ? stages : root, "stages must be a non-empty list");
  }
  for (const auto& s : stages) {
    MOEC_ASSIGN_OR_RETURN(StageSpec spec, Stage(s));
    r.stages.push_back(std::move(spec));
  }
  MOEC_RETURN_IF_ERROR(Order(stages, &r.stages));
  MOEC_RETURN_IF_ERROR(CheckStageRules(r));
  return r;
}

}  // namespace

absl::StatusOr<Recipe> ParseRecipe(absl::string_view yaml, const std::string& source_path,
                                   absl::Span<const std::string> overrides,
                                   const RecipeOptions& options) {
  if (yaml.size() > options.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(source_path, ": recipe of ", yaml.size(),
                                                     " bytes exceeds ", options.max_bytes));
  }
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat(source_path, ": a recipe is a mapping"));
    }
    for (const auto& ov : overrides) MOEC_RETURN_IF_ERROR(ApplyOverride(root, source_path, ov));
    Parser parser(source_path, options);
    return parser.Parse(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_path, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  }
}

absl::StatusOr<Recipe> LoadRecipeFile(const std::string& path,
                                      absl::Span<const std::string> overrides,
                                      const RecipeOptions& options) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("recipe ", path, ": no such file"));
  }
  auto size = fs::file_size(path, ec);
  if (ec || size > options.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("recipe ", path, " exceeds ", options.max_bytes,
                                                     " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return ParseRecipe(buf.str(), path, overrides, options);
}

}  // namespace moec::recipe
