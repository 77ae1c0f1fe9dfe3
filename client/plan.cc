#include "client/plan.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/recipe/stage_catalog.h"
#include "common/status_macros.h"
#include "model/config/config.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"

namespace moec::client {
namespace {

using nlohmann::json;

// Elements per role of one decoder layer, and the layer's matrices (for Hessians and groups).
struct LayerShape {
  std::map<model::TensorRole, int64_t> elements;
  int64_t total = 0;
  int64_t routed_experts = 0;  // experts in the layer
  std::vector<model::TensorSpec> matrices;
};

LayerShape ShapeOf(const model::ModelConfig& c, int layer) {
  LayerShape s;
  for (const model::TensorSpec& t : model::LayerTensors(c, layer)) {
    s.elements[t.role] += t.NumElements();
    s.total += t.NumElements();
    if (t.shape.size() == 2 && t.role != model::TensorRole::kRouter) s.matrices.push_back(t);
  }
  s.routed_experts = c.IsMoeLayer(layer) ? c.NumRoutedExperts(layer) : 0;
  return s;
}

int64_t CeilDiv(int64_t a, int64_t b) { return b <= 0 ? a : (a + b - 1) / b; }

bool OnDataPlane(const std::string& kind) {
  return kind == "calibrate" || kind == "quant_loss" || kind == "gptq" || kind == "rtn" ||
         kind == "prune_weights" || kind == "expert_prune";
}

bool WritesHidden(const std::string& kind, const json& params) {
  return kind == "calibrate" || kind == "gptq" || kind == "rtn" || kind == "prune_weights" ||
         (kind == "expert_prune" && params.value("mode", "layerwise") == "progressive");
}

std::string Bytes(int64_t b) {
  const double v = static_cast<double>(b);
  if (v >= 1024.0 * 1024 * 1024) return absl::StrFormat("%.2f GiB", v / (1024.0 * 1024 * 1024));
  if (v >= 1024.0 * 1024) return absl::StrFormat("%.1f MiB", v / (1024.0 * 1024));
  return absl::StrFormat("%.1f KiB", v / 1024.0);
}

}  // namespace

absl::StatusOr<JobPlan> PlanRecipe(const recipe::Recipe& r) {
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig c, model::LoadModelConfig(r.model));
  JobPlan plan;
  plan.name = r.name;
  plan.model = r.model;
  plan.output = r.output;
  plan.model_type = c.model_type;
  plan.layers = c.num_hidden_layers;
  plan.workers = r.workers;
  const model::ParameterCounts counts = model::CountParameters(c);
  plan.parameters = counts.total;
  const int64_t dtype_bytes = c.torch_dtype == "bfloat16" || c.torch_dtype == "float16" ? 2 : 4;
  plan.model_bytes = counts.total * dtype_bytes;

  // The largest layer, and the largest tensor (export streams one at a time).
  LayerShape big;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerShape s = ShapeOf(c, l);
    if (s.total > big.total) big = std::move(s);
  }
  int64_t largest_tensor = 0;
  for (const model::TensorSpec& t : model::ModelTensors(c)) largest_tensor = std::max(largest_tensor, t.NumElements());
  const int64_t H = c.hidden_size;
  const int64_t n = r.calibration ? r.calibration->samples : 0;
  const int64_t S = r.calibration ? r.calibration->seqlen : 0;
  const int64_t act = n * S * H * 4;  // fp32 hidden states of every calibration window
  // Evaluation windows, from the text's size at about 4 bytes per token.
  int64_t eval_act = 0;
  if (r.evaluation) {
    std::error_code ec;
    const int64_t bytes = static_cast<int64_t>(std::filesystem::file_size(r.evaluation->path, ec));
    if (!ec) eval_act = std::min<int64_t>(int64_t{1} << 30, bytes / 4 * H * 4);
  }

  std::map<std::string, std::string> view_of;
  for (const recipe::StageSpec& st : r.stages) {
    PlannedStage p;
    p.id = st.id;
    p.kind = st.kind;
    p.needs = st.needs;
    const recipe::StageKindSpec* kind = recipe::FindStageKind(st.kind);
    p.per_layer = kind != nullptr && kind->shape == recipe::StageShape::kPerLayer;
    p.tasks = p.per_layer ? c.num_hidden_layers : 1;
    p.gang = p.per_layer ? r.workers : 1;
    for (const std::string& need : st.needs) {
      const recipe::StageSpec* ns = r.FindStage(need);
      const std::string v = ns != nullptr && ns->kind == "restructure" ? need : view_of[need];
      if (!v.empty()) view_of[st.id] = p.view = v;
    }
    const json& q = st.params;
    const int W = OnDataPlane(st.kind) ? std::max(1, p.gang) : 1;
    // A rank of the data plane holds the layer without the experts it does not own, and its
    // share of the windows.
    const int64_t experts = big.elements[model::TensorRole::kRoutedExpert];
    const int64_t own_experts = big.routed_experts > 0
                                    ? experts * CeilDiv(big.routed_experts, W) / big.routed_experts
                                    : 0;
    const int64_t weights = (big.total - experts + own_experts) * 4;
    const int64_t acts = 2 * CeilDiv(act, W);
    if (st.kind == "calibrate" || st.kind == "quant_loss" || st.kind == "odp" ||
        st.kind == "block_drop" || st.kind == "layer_drop") {
      p.memory_bytes = weights + acts;
      p.memory_note = "layer weights + hidden states";
      if (st.kind == "block_drop" || st.kind == "layer_drop") p.memory_bytes = acts;
    } else if (st.kind == "gptq" || st.kind == "rtn" || st.kind == "prune_weights") {
      int64_t hessians = 0;
      if (st.kind != "rtn") {
        // fp32 Hessians of the matrices a rank quantizes (experts it owns; the rest dealt).
        std::set<std::string> seen_inputs;
        for (const model::TensorSpec& m : big.matrices) {
          const bool routed = m.role == model::TensorRole::kRoutedExpert;
          const int64_t in = m.shape[1];
          int64_t h = in * in * 4;
          if (routed) h = h * CeilDiv(big.routed_experts, W) / std::max<int64_t>(1, big.routed_experts);
          hessians += h;
        }
        hessians /= 2;  // gate/up and q/k/v share their inputs
      }
      p.memory_bytes = 2 * weights + acts + hessians;
      p.memory_note = st.kind == "rtn" ? "layer weights (and quantized copy) + hidden states"
                                       : "layer weights + hidden states + fp32 Hessians";
    } else if (st.kind == "expert_prune") {
      // Per rank, for its share of the windows: the original and pruned-chain inputs, each
      // batch's block input and target, and every expert's output on every token.
      p.memory_bytes = weights + 4 * CeilDiv(act, W) + CeilDiv(act, W) * big.routed_experts;
      p.memory_note = "owned experts + hidden states + every expert's output on its windows";
    } else if (st.kind == "evaluate") {
      p.memory_bytes = big.total * 4 + 2 * eval_act;
      p.memory_note = "one layer + evaluation hidden states (at most 1 GiB per pass)";
    } else if (st.kind == "export") {
      p.memory_bytes = 2 * largest_tensor * 4;
      p.memory_note = "the largest tensor (streamed one at a time)";
    } else {
      p.memory_bytes = int64_t{1} << 20;
      p.memory_note = "calibration statistics";
    }
    // Persisted outputs.
    if (p.per_layer && WritesHidden(st.kind, q)) p.factor_bytes += act * c.num_hidden_layers;
    if (st.kind == "gptq" || st.kind == "rtn") {
      const int64_t g = q.value("group_size", int64_t{128});
      int64_t linears = 0, groups = 0;
      for (int l = 0; l < c.num_hidden_layers; ++l) {
        for (const model::TensorSpec& m : ShapeOf(c, l).matrices) {
          linears += m.NumElements();
          groups += m.shape[0] * CeilDiv(m.shape[1], g > 0 ? g : m.shape[1]);
        }
      }
      p.factor_bytes += linears + groups * 8;
    }
    if (st.kind == "prune_weights") p.factor_bytes += counts.routed_experts * 4;
    if (p.factor_bytes == 0) p.factor_bytes = p.tasks * int64_t{4096};
    plan.peak_memory_bytes = std::max(plan.peak_memory_bytes, p.memory_bytes);
    plan.factor_bytes += p.factor_bytes;
    plan.total_tasks += p.tasks;
    plan.stages.push_back(std::move(p));
  }

  // Output size of the (last) export.
  for (const recipe::StageSpec& st : r.stages) {
    if (st.kind != "export") continue;
    plan.output_format = st.params.value("format", "gptq");
    if (plan.output_format == "hf" || plan.output_format == "fake_quant") {
      plan.output_bytes = plan.model_bytes;
      continue;
    }
    // Quantized: widths of the quantization stage it needs (an allocation's average for experts).
    double expert_bits = 4, attn_bits = 4, shared_bits = 4;
    int64_t g = 128;
    for (const recipe::StageSpec& qs : r.stages) {
      if (qs.kind != "gptq" && qs.kind != "rtn") continue;
      expert_bits = qs.params.value("bits", 4);
      attn_bits = qs.params.value("attn_bits", 4);
      shared_bits = qs.kind == "gptq" ? qs.params.value("shared_bits", 4) : expert_bits;
      g = qs.params.value("group_size", int64_t{128});
    }
    for (const recipe::StageSpec& a : r.stages) {
      if (a.kind == "allocate_bits") expert_bits = a.params.value("average_bits", expert_bits);
    }
    const double codes = counts.routed_experts * expert_bits + counts.attention * attn_bits +
                         (counts.shared_experts + counts.dense_mlp) * shared_bits;
    const int64_t linears = counts.routed_experts + counts.attention + counts.shared_experts + counts.dense_mlp;
    // fp16 scale and zero per group of g inputs (about linears / g groups).
    const int64_t group_bytes = linears / std::max<int64_t>(1, g > 0 ? g : H) * 4;
    plan.output_bytes = static_cast<int64_t>(codes / 8) + group_bytes +
                        (counts.total - linears) * dtype_bytes;
  }
  return plan;
}

json PlanJson(const JobPlan& p) {
  json stages = json::array();
  for (const PlannedStage& s : p.stages) {
    stages.push_back({{"id", s.id}, {"kind", s.kind}, {"per_layer", s.per_layer},
                      {"tasks", s.tasks}, {"gang", s.gang}, {"needs", s.needs},
                      {"model_view", s.view}, {"memory_bytes", s.memory_bytes},
                      {"memory_note", s.memory_note}, {"factor_bytes", s.factor_bytes}});
  }
  return {{"name", p.name}, {"model", p.model}, {"model_type", p.model_type},
          {"output", p.output}, {"layers", p.layers}, {"workers", p.workers},
          {"parameters", p.parameters}, {"model_bytes", p.model_bytes},
          {"tasks", p.total_tasks}, {"stages", stages},
          {"peak_memory_per_worker_bytes", p.peak_memory_bytes},
          {"factor_bytes", p.factor_bytes}, {"output_format", p.output_format},
          {"output_bytes", p.output_bytes}};
}

std::string PlanText(const JobPlan& p) {
  std::string out = absl::StrFormat(
      "plan for %s: %s (%s, %d layers, %lld parameters, %s), %d worker(s)\n\n", p.name, p.model,
      p.model_type, p.layers, static_cast<long long>(p.parameters), Bytes(p.model_bytes), p.workers);
  absl::StrAppendFormat(&out, "%-14s %-14s %7s %5s  %-22s %12s %12s\n", "stage", "kind", "tasks",
                        "gang", "needs", "memory/wkr", "factors");
  for (const PlannedStage& s : p.stages) {
    std::string needs = absl::StrJoin(s.needs, ",");
    if (!s.view.empty() && std::find(s.needs.begin(), s.needs.end(), s.view) == s.needs.end()) {
      absl::StrAppend(&needs, needs.empty() ? "" : ",", "(", s.view, ")");
    }
    absl::StrAppendFormat(&out, "%-14s %-14s %7d %5d  %-22s %12s %12s\n", s.id, s.kind, s.tasks,
                          s.gang, needs.empty() ? "-" : needs, Bytes(s.memory_bytes),
                          Bytes(s.factor_bytes));
  }
  absl::StrAppendFormat(&out, "\n%d tasks; peak memory per worker ~%s; factor store ~%s", p.total_tasks,
                        Bytes(p.peak_memory_bytes), Bytes(p.factor_bytes));
  if (!p.output_format.empty()) {
    absl::StrAppendFormat(&out, "; output (%s) ~%s in %s", p.output_format, Bytes(p.output_bytes), p.output);
  }
  out += "\nEstimates, not measurements (docs/cli.md \"plan\"); stages in (parentheses) run on the model view.\n";
  return out;
}

}  // namespace moec::client
