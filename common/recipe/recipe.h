// Recipes: the YAML a user writes (docs/recipes.md), parsed and validated into a Recipe with
// precise errors ("recipe.yaml:12: stage 'bits': unknown parameter 'averge_bits'"). Used by the
// client before submitting and by the coordinator again (it never trusts the client).
#ifndef MOEC_COMMON_RECIPE_RECIPE_H_
#define MOEC_COMMON_RECIPE_RECIPE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace moec::recipe {

// Calibration or evaluation text.
struct DataSpec {
  std::string path;  // absolute, resolved against the recipe's directory
  int64_t samples = 128;
  int64_t seqlen = 512;
  int64_t seed = 0;
  std::string sampling = "random_windows";  // random_windows | chunks
  // Calibration only: per-layer stages run the windows in chunks of at least 8 windows and at
  // least this many tokens (docs/data_plane.md, "Chunks"); 0: 8 windows.
  int64_t chunk_tokens = 4096;
};

struct StageKindSpec;  // stage_catalog.h

struct StageSpec {
  std::string id;
  std::string kind;
  std::vector<std::string> needs;
  nlohmann::json params;  // every parameter of the kind, defaults filled in
  int line = 0;           // 1-based line in the recipe (0 when unknown)

  // The kind's catalog entry (never null in a validated recipe).
  const StageKindSpec& spec() const;
  // Parameters by name. A validated recipe holds every parameter of the kind with its type, so
  // these only throw (nlohmann::json's exceptions) for a name the kind does not have: a bug in
  // the caller, which StageRunner reports as an Internal error of the task.
  int64_t Int(const std::string& name) const { return params.at(name).get<int64_t>(); }
  double Float(const std::string& name) const { return params.at(name).get<double>(); }
  bool Bool(const std::string& name) const { return params.at(name).get<bool>(); }
  std::string Str(const std::string& name) const { return params.at(name).get<std::string>(); }
  std::vector<int64_t> IntList(const std::string& name) const {
    return params.at(name).get<std::vector<int64_t>>();
  }
};

struct Recipe {
  std::string name;
  std::string source;  // the recipe file (or name given to ParseRecipe)
  std::string model;   // absolute
  std::string output;  // absolute
  std::optional<DataSpec> calibration;
  std::optional<DataSpec> evaluation;
  int workers = 1;
  // Compute threads of every task (libtorch and OpenBLAS) on any worker; 0: each worker's own.
  // Outputs depend on the thread count (some reductions are split by it), so fixing it makes a
  // job's bytes independent of how many workers run it and of their cores (docs/recipes.md).
  int threads = 0;
  std::vector<StageSpec> stages;  // in a topological order (file order where free)

  // Canonical JSON (sorted keys, no source file): identical recipes give identical bytes.
  std::string CanonicalJson() const;
  // The recipe a canonical JSON describes, validated again against the stage catalog (kinds,
  // parameter names, types and ranges; parameters it lacks get their defaults): what workers
  // run. Paths are taken as they are (already resolved), files are not checked. Errors:
  // InvalidArgument naming the field for anything malformed.
  static absl::StatusOr<Recipe> FromCanonicalJson(absl::string_view json);
  const StageSpec* FindStage(absl::string_view id) const;
  // The stages among `stage`'s direct needs, in recipe order, whose kind satisfies `pred`.
  std::vector<const StageSpec*> NeedsWhere(
      const StageSpec& stage, const std::function<bool(const StageKindSpec&)>& pred) const;
  // The first stage of kind `kind` among `stage`'s direct needs (recipe order), or nullptr.
  const StageSpec* NeededOfKind(const StageSpec& stage, absl::string_view kind) const;
};

// Model views (dataplane/model_view.h): stage id -> the restructure stage it runs after, directly
// or through other stages, for every stage that runs on a restructured model. `stages` in a
// topological order (Recipe::stages is).
std::map<std::string, std::string> ResolveModelViews(absl::Span<const StageSpec> stages);

struct RecipeOptions {
  // Check that the model directory (with config.json) and data files exist.
  bool check_files = true;
  // When non-empty, every path of the recipe must resolve inside one of these directories.
  std::vector<std::string> allowed_roots;
  // Largest accepted recipe text.
  size_t max_bytes = 1 << 20;
};

// Parses `yaml` as the recipe file `source_path` (relative paths resolve against its directory),
// after applying `overrides` ("key.path=value", e.g. "stages.bits.with.average_bits=2.0";
// `stages.<id>` selects the stage with that id; the value is parsed as YAML).
// Errors: InvalidArgument "<file>:<line>: <what>" for malformed YAML, unknown keys, wrong types
// or ranges, unknown stage kinds or parameters, duplicate ids, missing `needs`, cycles, bad
// overrides; NotFound for missing model or data files; PermissionDenied for a path outside the
// allowed roots; ResourceExhausted for an oversized recipe.
absl::StatusOr<Recipe> ParseRecipe(absl::string_view yaml, const std::string& source_path,
                                   absl::Span<const std::string> overrides,
                                   const RecipeOptions& options = {});

// Reads and parses a recipe file. Errors: those of ParseRecipe, NotFound for a missing file.
absl::StatusOr<Recipe> LoadRecipeFile(const std::string& path,
                                      absl::Span<const std::string> overrides,
                                      const RecipeOptions& options = {});

}  // namespace moec::recipe

#endif  // MOEC_COMMON_RECIPE_RECIPE_H_
