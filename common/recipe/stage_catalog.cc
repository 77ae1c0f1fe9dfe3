#include "common/recipe/stage_catalog.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moec::recipe {
namespace {

using nlohmann::json;

ParamSpec Int(const char* name, json def, double min, double max, const char* help) {
  return {name, ParamType::kInt, std::move(def), min, max, {}, help};
}
ParamSpec Float(const char* name, json def, double min, double max, const char* help) {
  return {name, ParamType::kFloat, std::move(def), min, max, {}, help};
}
ParamSpec Bool(const char* name, bool def, const char* help) {
  return {name, ParamType::kBool, def, 0, 0, {}, help};
}
ParamSpec Enum(const char* name, json def, std::vector<std::string> choices, const char* help) {
  return {name, ParamType::kEnum, std::move(def), 0, 0, std::move(choices), help};
}
ParamSpec IntList(const char* name, json def, double min, double max, const char* help) {
  return {name, ParamType::kIntList, std::move(def), min, max, {}, help};
}

StageKindSpec Kind(const char* kind, StageShape shape, const char* help,
                   std::vector<ParamSpec> params) {
  StageKindSpec k;
  k.kind = kind;
  k.shape = shape;
  k.help = help;
  k.params = std::move(params);
  return k;
}

NeedSpec Need(std::vector<std::string> kinds, const char* why, When when = Always()) {
  return {std::move(kinds), std::move(when), why};
}

NeedSpec NeedsCalibrate() {
  return Need({"calibrate"}, "its router statistics and hidden-state chain");
}

// The tables below are the catalog. A version above 1 says what changed the stage's outputs.

void AddQuantizationKinds(std::vector<StageKindSpec>* c) {
  const json kNull;
  c->push_back(Kind("calibrate", StageShape::kPerLayer,
                    "router statistics per layer and expert: token counts, routing mass, p2/p1, "
                    "entropy",
                    {Int("batch_size", 0, 0, 4096,
                         "calibration windows per forward batch (0: at least 8 and at least "
                         "4096 tokens)")}));
  // 2: chunked hidden outputs on the data plane; softmax_mass; 3: chunks of at least 4096
  // tokens by default.
  c->back().version = 3;
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kLayerForward;
  c->back().reads_calibration = true;
  c->back().writes_hidden = Always();

  c->push_back(Kind("quant_loss", StageShape::kPerLayer,
                    "MC-MoE per-expert, per-bit reconstruction loss of the MoE block output (RTN)",
                    {IntList("bits", json::array({1, 2, 3}), 1, 8, "candidate expert widths"),
                     Int("group_size", 128, -1, 65536, "quantization group (-1: whole row)"),
                     Int("batch_size", 8, 1, 4096,
                         "calibration windows per batch; the loss sums per-batch Frobenius "
                         "norms")}));
  c->back().version = 2;  // expert-parallel
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kLayerForward;
  c->back().needs = {NeedsCalibrate()};
  c->back().reads_calibration = true;
  c->back().measured_widths_param = "bits";

  c->push_back(Kind("allocate_bits", StageShape::kGlobal,
                    "exact integer program assigning a width to every expert (CBC)",
                    {Float("average_bits", kNull, 1, 8, "mean expert width; the budget"),
                     IntList("bits", json::array({1, 2, 3}), 1, 8, "candidate widths"),
                     Float("alpha", 1.0, 0, 10, "exponent of the activation frequency"),
                     Float("beta", 1.5, 0, 10, "exponent of the routing mass"),
                     Float("gamma", 1.0, 0, 10, "exponent of the quantization loss"),
                     Enum("budget", "layer", {"layer", "model"},
                          "one program per layer, or one for the model"),
                     Enum("granularity", "expert", {"expert", "layer"},
                          "per-expert widths, or one width per layer (fused-MoE serving "
                          "engines)")}));
  c->back().needs = {Need({"calibrate"}, "its activation frequencies and routing mass"),
                     Need({"quant_loss"}, "its per-expert quantization losses")};
  c->back().allocation_widths_param = "bits";

  c->push_back(Kind(
      "gptq", StageShape::kPerLayer, "GPTQ per layer, expert-parallel",
      {Int("bits", 4, 1, 8, "expert width when no allocation is given"),
       Int("attn_bits", 4, 1, 8, "attention width"),
       Int("shared_bits", 4, 1, 8, "shared-expert and dense-MLP width"),
       Int("router_bits", 0, 0, 8, "router width (0: keep the model dtype)"),
       Int("group_size", 128, -1, 65536, "quantization group (-1: whole row)"),
       Bool("act_order", false, "quantize columns by decreasing Hessian diagonal"),
       Bool("static_groups", false, "group parameters fixed before act-order"),
       Bool("sym", false, "symmetric quantization"),
       Float("damp", 0.01, 0, 1, "Hessian dampening, fraction of the mean diagonal"),
       Bool("mse", false, "MSE range search for group parameters"),
       Bool("true_sequential", true, "quantize q/k/v, o, experts in forward order"),
       Int("min_tokens", 1, 0, 1 << 30, "experts with fewer routed tokens fall back to RTN"),
       Bool("mcmoe_blockwise_feedback", false, "MC-MoE compat: no intra-block feedback <= 3 bits")}));
  // 2: expert-parallel, Gram reductions in chunk order, chunked hidden; 3: inverse-Hessian
  // factor by LAPACK potrf + trtri (rounding differs); 4: codes stored packed
  // (stages/stored_codes.h); 5: chunks of at least 4096 tokens (Hessians add per chunk).
  c->back().version = 5;
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kQuantizeHessians;
  c->back().uses = {"allocate_bits", "calibrate"};
  c->back().reads_calibration = true;
  c->back().writes_hidden = Always();
  c->back().width_params = {"bits", "attn_bits", "shared_bits", "router_bits"};
  c->back().expert_width_param = "bits";
  c->back().shared_width_param = "shared_bits";

  c->push_back(Kind("rtn", StageShape::kPerLayer, "round-to-nearest quantization (baseline)",
                    {Int("bits", 4, 1, 8, "width"), Int("attn_bits", 4, 1, 8, "attention width"),
                     Int("group_size", 128, -1, 65536, "quantization group (-1: whole row)"),
                     Bool("sym", false, "symmetric quantization"),
                     Bool("mse", false, "MSE range search for group parameters")}));
  // 2: expert-parallel; chunked hidden; 3: codes stored packed; 4: chunks of at least 4096
  // tokens.
  c->back().version = 4;
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kQuantize;
  c->back().uses = {"allocate_bits", "calibrate"};
  c->back().reads_calibration = true;
  c->back().writes_hidden = Always();
  c->back().width_params = {"bits", "attn_bits"};
  c->back().expert_width_param = "bits";
  c->back().shared_width_param = "bits";
}

void AddStructuralKinds(std::vector<StageKindSpec>* c) {
  const json kNull;
  c->push_back(Kind("expert_prune", StageShape::kPerLayer, "Lu et al. expert subset search",
                    {Int("keep", kNull, 1, 1024, "experts kept per layer (r)"),
                     Enum("mode", "layerwise", {"layerwise", "progressive"}, "scoring inputs"),
                     Int("exhaustive_limit", 100000, 1, 1 << 30,
                         "largest subset count searched exhaustively"),
                     Int("batch_size", 8, 1, 4096,
                         "calibration windows per batch; the loss sums per-batch norms")}));
  // 2: expert-parallel; targets from the data plane's forward; chunked hidden.
  c->back().version = 2;
  // Layerwise scoring reads every layer's input from the unpruned calibrate chain: its layers
  // run in parallel. Progressive scoring reads its own previous layer's (pruned) output.
  c->back().chained = WhenParam("mode", {"progressive"});
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kExpertScores;
  c->back().needs = {NeedsCalibrate()};
  c->back().reads_calibration = true;
  c->back().writes_hidden = WhenParam("mode", {"progressive"});
  c->back().structural = StructuralEdit::kExperts;

  c->push_back(Kind("dynamic_skip", StageShape::kGlobal,
                    "Lu et al. dynamic skipping (beta per layer)", {}));
  c->back().needs = {Need({"calibrate"}, "its p2/p1 statistics")};

  c->push_back(Kind("expert_drop", StageShape::kGlobal, "He et al. expert drop by routing mass",
                    {Int("keep", kNull, 1, 1024,
                         "experts kept per layer (layerwise) or on average (global)"),
                     Enum("mode", "layerwise", {"layerwise", "global"},
                          "same count per layer, or a threshold"),
                     Int("seed", 0, 0, 1 << 30, "seed of the random baseline"),
                     Bool("random", false, "drop experts at random (baseline)")}));
  c->back().needs = {Need({"calibrate"}, "its routing mass per expert")};
  c->back().structural = StructuralEdit::kExperts;

  c->push_back(Kind("layer_drop", StageShape::kGlobal,
                    "He et al. drop MoE sub-blocks by cosine similarity",
                    {Int("drop", kNull, 1, 1024, "MoE sub-blocks dropped")}));
  c->back().memory = MemoryModel::kHiddenStates;
  c->back().needs = {NeedsCalibrate()};
  c->back().reads_calibration = true;
  c->back().structural = StructuralEdit::kMoeLayers;

  c->push_back(Kind("block_drop", StageShape::kGlobal,
                    "He et al. drop whole layers by cosine similarity",
                    {Int("drop", kNull, 1, 1024, "layers dropped"),
                     Enum("mode", "discrete", {"discrete", "consecutive"},
                          "any layers, or one window")}));
  c->back().memory = MemoryModel::kHiddenStates;
  c->back().needs = {NeedsCalibrate()};
  c->back().reads_calibration = true;
  c->back().structural = StructuralEdit::kLayers;

  c->push_back(Kind("prune_weights", StageShape::kPerLayer,
                    "expert weight pruning (Wanda, SparseGPT, magnitude)",
                    {Enum("method", "wanda", {"wanda", "sparsegpt", "magnitude"},
                          "pruning criterion"),
                     Float("sparsity", 0.5, 0, 0.99, "fraction of weights removed (unstructured)"),
                     Enum("pattern", "unstructured", {"unstructured", "2:4", "4:8"},
                          "sparsity pattern"),
                     Bool("shared_experts", false, "also prune shared experts")}));
  // 2: expert-parallel; chunked hidden; 3: chunks of at least 4096 tokens; 4: Wanda's and
  // magnitude's matrices stored as masks (dataplane::kPrunedMaskSuffix).
  c->back().version = 4;
  c->back().data_plane = true;
  c->back().memory = MemoryModel::kQuantizeHessians;
  c->back().uses = {"calibrate"};
  c->back().reads_calibration = true;
  c->back().writes_hidden = Always();
  c->back().structural = StructuralEdit::kWeights;
}

void AddOtherKinds(std::vector<StageKindSpec>* c) {
  c->push_back(Kind("odp", StageShape::kGlobal, "MC-MoE online dynamic pruning calibration",
                    {Float("protect_fraction", 0.02, 0, 1, "fraction of tokens never pruned"),
                     Bool("odp_positional_prior", false,
                          "MC-MoE compat: positional attention statistic"),
                     Float("enable_fraction", 0.33, 0, 1,
                           "fraction of MoE layers with ODP: those with the lowest calibrated "
                           "loss")}));
  c->back().memory = MemoryModel::kLayerForward;
  c->back().needs = {NeedsCalibrate()};
  c->back().reads_calibration = true;

  c->push_back(Kind("restructure", StageShape::kGlobal,
                    "the model the structural stages it needs decided; every later stage runs "
                    "on it",
                    {}));
  c->back().restructure = true;
  // Its kinds are every structural kind (FillDerivedTraits).
  c->back().needs = {Need({}, "the decisions it turns into a model")};

  c->push_back(Kind("export", StageShape::kGlobal,
                    "write the compressed model as a Hugging Face directory",
                    {Enum("format", "gptq", {"gptq", "hqq", "fake_quant", "hf"},
                          "checkpoint format"),
                     Int("max_shard_mib", 5120, 1, 1 << 20, "largest safetensors shard")}));
  c->back().version = 2;  // hqq format, structural edits, moec.odp
  c->back().memory = MemoryModel::kExport;
  c->back().needs = {Need({"gptq", "rtn"}, "the quantized weights it writes",
                          WhenParam("format", {"gptq", "hqq", "fake_quant"}))};
  c->back().uses = {"dynamic_skip", "odp"};  // and every structural kind (FillDerivedTraits)
  c->back().writes_output = true;
  c->back().formats = {
      {"gptq", true, true, {2, 3, 4, 8},
       "GPTQ int32 packing with per-module widths (GPTQModel, vLLM)"},
      {"hqq", true, true, {1, 2, 3, 4, 5, 6, 7, 8}, "MC-MoE's packed layout, read by moec's loader"},
      {"fake_quant", true, false, {1, 2, 3, 4, 5, 6, 7, 8},
       "dequantized weights in the model dtype"},
      {"hf", false, false, {}, "the model (structurally edited) in its own dtype"}};

  c->push_back(Kind("noop", StageShape::kPerLayer,
                    "does nothing (control-plane tests and benchmarks)",
                    {Int("sleep_ms", 0, 0, 600000, "time to spend per task"),
                     Int("salt", 0, 0, 1 << 30, "makes otherwise identical noop stages distinct work"),
                     Int("output_bytes", 0, 0, 1 << 30,
                         "size of the output tensor `noop` it writes (0: none)"),
                     Bool("read_inputs", false, "read (and so verify) the `noop` outputs of its inputs")}));

  c->push_back(Kind("evaluate", StageShape::kGlobal,
                    "perplexity, size, average bits, activated parameters",
                    {Int("max_windows", 0, 0, 1 << 30, "evaluation windows (0: all)"),
                     Bool("baseline", true, "also evaluate the original model (cached)")}));
  c->back().version = 2;  // measured activated parameters, MC-MoE and all-inclusive bits
  c->back().memory = MemoryModel::kEvaluate;
  c->back().uses = {"export"};
  c->back().reads_evaluation = true;
  c->back().reads_output = true;
}

// The traits that follow from others: a restructure stage needs, and a stage writing the output
// uses, every structural kind.
void FillDerivedTraits(std::vector<StageKindSpec>* catalog) {
  std::vector<std::string> structural;
  for (const StageKindSpec& k : *catalog) {
    if (k.is_structural()) structural.push_back(k.kind);
  }
  for (StageKindSpec& k : *catalog) {
    if (k.restructure) k.needs.front().kinds = structural;
    if (k.writes_output) k.uses.insert(k.uses.end(), structural.begin(), structural.end());
  }
}

std::vector<StageKindSpec> BuildCatalog() {
  std::vector<StageKindSpec> catalog;
  AddQuantizationKinds(&catalog);
  AddStructuralKinds(&catalog);
  AddOtherKinds(&catalog);
  FillDerivedTraits(&catalog);
  return catalog;
}

}  // namespace

bool When::Holds(const json& params) const {
  if (never) return false;
  if (param.empty()) return true;
  auto it = params.find(param);
  if (it == params.end() || !it->is_string()) return false;
  return std::find(values.begin(), values.end(), it->get<std::string>()) != values.end();
}

std::string When::Describe() const {
  if (never) return "never";
  if (param.empty()) return "";
  return absl::StrCat("when ", param, " is ", absl::StrJoin(values, " or "));
}

const ParamSpec* StageKindSpec::FindParam(absl::string_view name) const {
  for (const ParamSpec& p : params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const FormatSpec* StageKindSpec::FindFormat(absl::string_view name) const {
  for (const FormatSpec& f : formats) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

const std::vector<StageKindSpec>& StageKinds() {
  static const auto* catalog = new std::vector<StageKindSpec>(BuildCatalog());
  return *catalog;
}

const StageKindSpec* FindStageKind(absl::string_view kind) {
  for (const auto& k : StageKinds()) {
    if (k.kind == kind) return &k;
  }
  return nullptr;
}

std::string StageKindList() {
  std::vector<std::string> names;
  for (const auto& k : StageKinds()) names.push_back(k.kind);
  return absl::StrJoin(names, ", ");
}

std::vector<std::string> StructuralKinds() {
  std::vector<std::string> kinds;
  for (const auto& k : StageKinds()) {
    if (k.is_structural()) kinds.push_back(k.kind);
  }
  return kinds;
}

}  // namespace moec::recipe
