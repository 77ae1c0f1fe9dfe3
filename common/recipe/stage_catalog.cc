#include "common/recipe/stage_catalog.h"

#include <map>

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

std::vector<StageKindSpec> BuildCatalog() {
  const json kNull;
  return {
      {"calibrate", StageShape::kPerLayer,
       "router statistics per layer and expert: token counts, routing mass, p2/p1, entropy",
       {Int("batch_size", 8, 1, 4096, "calibration windows per forward batch")}},
      {"quant_loss", StageShape::kPerLayer,
       "MC-MoE per-expert, per-bit reconstruction loss of the MoE block output (RTN)",
       {IntList("bits", json::array({1, 2, 3}), 1, 8, "candidate expert widths"),
        Int("group_size", 128, -1, 65536, "quantization group (-1: whole row)"),
        Int("batch_size", 8, 1, 4096,
            "calibration windows per batch; the loss sums per-batch Frobenius norms")}},
      {"allocate_bits", StageShape::kGlobal,
       "exact integer program assigning a width to every expert (CBC)",
       {Float("average_bits", kNull, 1, 8, "mean expert width; the budget"),
        IntList("bits", json::array({1, 2, 3}), 1, 8, "candidate widths"),
        Float("alpha", 1.0, 0, 10, "exponent of the activation frequency"),
        Float("beta", 1.5, 0, 10, "exponent of the routing mass"),
        Float("gamma", 1.0, 0, 10, "exponent of the quantization loss"),
        Enum("budget", "layer", {"layer", "model"}, "one program per layer, or one for the model"),
        Enum("granularity", "expert", {"expert", "layer"},
             "per-expert widths, or one width per layer (fused-MoE serving engines)")}},
      {"gptq", StageShape::kPerLayer, "GPTQ per layer, expert-parallel",
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
        Bool("mcmoe_blockwise_feedback", false, "MC-MoE compat: no intra-block feedback <= 3 bits")}},
      {"rtn", StageShape::kPerLayer, "round-to-nearest quantization (baseline)",
       {Int("bits", 4, 1, 8, "width"), Int("attn_bits", 4, 1, 8, "attention width"),
        Int("group_size", 128, -1, 65536, "quantization group (-1: whole row)"),
        Bool("sym", false, "symmetric quantization"),
        Bool("mse", false, "MSE range search for group parameters")}},
      {"expert_prune", StageShape::kPerLayer, "Lu et al. expert subset search",
       {Int("keep", kNull, 1, 1024, "experts kept per layer (r)"),
        Enum("mode", "layerwise", {"layerwise", "progressive"}, "scoring inputs"),
        Int("exhaustive_limit", 100000, 1, 1 << 30, "largest subset count searched exhaustively"),
        Int("batch_size", 8, 1, 4096, "calibration windows per batch; the loss sums per-batch norms")}},
      {"dynamic_skip", StageShape::kGlobal, "Lu et al. dynamic skipping (beta per layer)", {}},
      {"expert_drop", StageShape::kGlobal, "He et al. expert drop by routing mass",
       {Int("keep", kNull, 1, 1024, "experts kept per layer (layerwise) or on average (global)"),
        Enum("mode", "layerwise", {"layerwise", "global"}, "same count per layer, or a threshold"),
        Int("seed", 0, 0, 1 << 30, "seed of the random baseline"),
        Bool("random", false, "drop experts at random (baseline)")}},
      {"layer_drop", StageShape::kGlobal, "He et al. drop MoE sub-blocks by cosine similarity",
       {Int("drop", kNull, 1, 1024, "MoE sub-blocks dropped")}},
      {"block_drop", StageShape::kGlobal, "He et al. drop whole layers by cosine similarity",
       {Int("drop", kNull, 1, 1024, "layers dropped"),
        Enum("mode", "discrete", {"discrete", "consecutive"}, "any layers, or one window")}},
      {"prune_weights", StageShape::kPerLayer, "expert weight pruning (Wanda, SparseGPT, magnitude)",
       {Enum("method", "wanda", {"wanda", "sparsegpt", "magnitude"}, "pruning criterion"),
        Float("sparsity", 0.5, 0, 0.99, "fraction of weights removed (unstructured)"),
        Enum("pattern", "unstructured", {"unstructured", "2:4", "4:8"}, "sparsity pattern"),
        Bool("shared_experts", false, "also prune shared experts")}},
      {"odp", StageShape::kGlobal, "MC-MoE online dynamic pruning calibration",
       {Float("protect_fraction", 0.02, 0, 1, "fraction of tokens never pruned"),
        Bool("odp_positional_prior", false, "MC-MoE compat: positional attention statistic"),
        Float("enable_fraction", 0.33, 0, 1,
              "fraction of MoE layers with ODP: those with the lowest calibrated loss")}},
      {"restructure", StageShape::kGlobal,
       "the model the structural stages it needs decided; every later stage runs on it",
       {}},
      {"export", StageShape::kGlobal, "write the compressed model as a Hugging Face directory",
       {Enum("format", "gptq", {"gptq", "hqq", "fake_quant", "hf"}, "checkpoint format"),
        Int("max_shard_mib", 5120, 1, 1 << 20, "largest safetensors shard")}},
      {"noop", StageShape::kPerLayer,
       "does nothing (control-plane tests and benchmarks)",
       {Int("sleep_ms", 0, 0, 600000, "time to spend per task"),
        Int("salt", 0, 0, 1 << 30, "makes otherwise identical noop stages distinct work"),
        Int("output_bytes", 0, 0, 1 << 30, "size of the output tensor `noop` it writes (0: none)"),
        Bool("read_inputs", false, "read (and so verify) the `noop` outputs of its inputs")}},
      {"evaluate", StageShape::kGlobal, "perplexity, size, average bits, activated parameters",
       {Int("max_windows", 0, 0, 1 << 30, "evaluation windows (0: all)"),
        Bool("baseline", true, "also evaluate the original model (cached)")}},
  };
}

// Stage result versions above 1 (StageKindSpec::version), with what changed their outputs.
const std::map<std::string, int>& Versions() {
  static const auto* versions = new std::map<std::string, int>{
      {"calibrate", 2},   // chunked hidden outputs on the data plane; softmax_mass
      {"quant_loss", 2},  // expert-parallel
      {"gptq", 3},        // 2: expert-parallel, Gram reductions in chunk order, chunked hidden;
                          // 3: inverse-Hessian factor by LAPACK potrf + trtri (rounding differs)
      {"rtn", 2},         // expert-parallel; chunked hidden
      {"export", 2},      // hqq format, structural edits, moec.odp
      {"evaluate", 2},    // measured activated parameters, MC-MoE and all-inclusive bits
      {"prune_weights", 2},  // expert-parallel; chunked hidden
      {"expert_prune", 2},  // expert-parallel; targets from the data plane's forward; chunked hidden
  };
  return *versions;
}

std::vector<StageKindSpec> VersionedCatalog() {
  std::vector<StageKindSpec> catalog = BuildCatalog();
  for (StageKindSpec& k : catalog) {
    auto it = Versions().find(k.kind);
    if (it != Versions().end()) k.version = it->second;
  }
  return catalog;
}

}  // namespace

const std::vector<StageKindSpec>& StageKinds() {
  static const auto* catalog = new std::vector<StageKindSpec>(VersionedCatalog());
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

}  // namespace moec::recipe
