// The stage kinds a recipe can name: their parameters (types, ranges, defaults) and their traits
// (how they expand into tasks, what they need, read and write, where they run, what they cost).
// One table, read by recipe validation and its cross-stage rules (rules.h), the planner, `moec
// plan`, the stage adapters and the docs (docs/recipes.md, docs/stages.md): nothing else keeps
// knowledge about a kind by name.
#ifndef MOEC_COMMON_RECIPE_STAGE_CATALOG_H_
#define MOEC_COMMON_RECIPE_STAGE_CATALOG_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace moec::recipe {

enum class ParamType { kInt, kFloat, kBool, kString, kEnum, kIntList };

struct ParamSpec {
  std::string name;
  ParamType type;
  nlohmann::json default_value;  // null: the parameter is required
  double min = 0;                // kInt, kFloat, kIntList elements: inclusive bounds
  double max = 0;
  std::vector<std::string> choices;  // kEnum
  std::string help;
};

// How the planner expands a stage into tasks.
enum class StageShape {
  kGlobal,    // one task for the whole model
  kPerLayer,  // one task per layer (a gang of the recipe's `workers`)
};

// A condition on a stage's parameters: always true when `param` is empty, never true when
// `never` is set, else true when the parameter (an enum) has one of `values`.
struct When {
  std::string param;
  std::vector<std::string> values;
  bool never = false;
  bool Holds(const nlohmann::json& params) const;
  std::string Describe() const;  // "" (always), "never", "when mode is progressive"
};
inline When Always() { return {}; }
inline When Never() { return {{}, {}, true}; }
inline When WhenParam(std::string param, std::vector<std::string> values) {
  return {std::move(param), std::move(values), false};
}

// A stage of one of `kinds` that a stage must have among its direct needs (whose outputs it
// reads), when `when` holds for its parameters.
struct NeedSpec {
  std::vector<std::string> kinds;
  When when;
  std::string why;  // what it reads from it, for error messages
};

// The edit a structural stage decides (dataplane/structural_edits.h).
enum class StructuralEdit {
  kNone,
  kExperts,    // experts kept per layer (expert_prune, expert_drop): at most one per consumer
  kMoeLayers,  // MoE sub-blocks dropped (layer_drop)
  kLayers,     // decoder layers dropped (block_drop)
  kWeights,    // expert weights pruned (prune_weights)
};

// What dominates the peak memory of one worker running one of the stage's tasks (`moec plan`;
// docs/cli.md "plan").
enum class MemoryModel {
  kSmall,          // statistics and decisions
  kLayerForward,   // one layer (the experts a rank owns) + its share of the hidden states
  kHiddenStates,   // hidden states only (similarities of layer inputs and outputs)
  kQuantize,       // the layer twice (weights and quantized copy) + hidden states
  kQuantizeHessians,  // kQuantize + fp32 Hessians of the matrices a rank quantizes
  kExpertScores,   // owned experts + hidden states + every expert's output on its windows
  kEvaluate,       // one layer + evaluation hidden states
  kExport,         // the largest tensor, streamed one at a time
};

// An output format of a stage that writes the job's output (`export`'s `format`).
struct FormatSpec {
  std::string name;
  bool quantized = false;   // needs a quantizing stage among the exporting stage's needs
  bool packed = false;      // stores integer codes (else weights in the model's dtype)
  std::vector<int> widths;  // widths it can hold (quantized formats)
  std::string help;
};

struct StageKindSpec {
  std::string kind;
  StageShape shape;
  std::string help;
  std::vector<ParamSpec> params;
  // Version of the stage's results, part of every task fingerprint: bump it whenever a change to
  // the stage's code changes its outputs, so outputs stored by an older build are not reused.
  int version = 1;

  // --- Planning ---
  // Per-layer: layer l waits for layer l-1 of the same stage (its input is that layer's output).
  When chained = Always();
  // Runs on the expert-parallel data plane: a layer's chunks and experts sharded over a gang.
  bool data_plane = false;
  MemoryModel memory = MemoryModel::kSmall;

  // --- What it needs, reads and writes ---
  std::vector<NeedSpec> needs;
  // Kinds whose outputs it reads when a stage of that kind is among its direct needs (optional
  // inputs; required ones are in `needs`).
  std::vector<std::string> uses;
  bool reads_calibration = false;  // the recipe's `calibration` windows
  bool reads_evaluation = false;   // the recipe's `evaluation` text
  bool reads_output = false;       // the job's `output` directory (after an export it needs)
  bool writes_output = false;      // the job's `output` directory
  When writes_hidden = Never();    // per-layer chunked hidden states ("hidden"), a layer chain

  // --- Model edits ---
  StructuralEdit structural = StructuralEdit::kNone;
  // Turns the structural decisions it needs into the model every later stage runs on.
  bool restructure = false;

  // --- Widths ---
  // Quantizing stages: the int parameters giving the widths of what they quantize (0: kept in
  // the model dtype); `expert_width_param` is replaced by the widths of an allocating stage among
  // its needs; `shared_width_param` gives the shared experts' and dense MLPs' width.
  std::vector<std::string> width_params;
  std::string expert_width_param;
  std::string shared_width_param;
  // Allocating stages: the int-list parameter of candidate expert widths.
  std::string allocation_widths_param;
  // Stages measuring per-width statistics for an allocation: the int-list parameter of widths.
  std::string measured_widths_param;
  // Stages that write the output: their formats (parameter `format`).
  std::vector<FormatSpec> formats;

  bool per_layer() const { return shape == StageShape::kPerLayer; }
  bool quantizes() const { return !width_params.empty(); }
  bool allocates() const { return !allocation_widths_param.empty(); }
  bool is_structural() const { return structural != StructuralEdit::kNone; }
  const ParamSpec* FindParam(absl::string_view name) const;
  const FormatSpec* FindFormat(absl::string_view name) const;
};

// All stage kinds, in documentation order.
const std::vector<StageKindSpec>& StageKinds();

// The spec of `kind`, or nullptr.
const StageKindSpec* FindStageKind(absl::string_view kind);

// "calibrate, quant_loss, ..." for error messages.
std::string StageKindList();

// The kinds with the structural trait, in catalog order.
std::vector<std::string> StructuralKinds();

}  // namespace moec::recipe

#endif  // MOEC_COMMON_RECIPE_STAGE_CATALOG_H_
