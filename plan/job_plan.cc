#include "plan/job_plan.h"

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

namespace moec::plan {
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

std::string Bytes(int64_t b) {
  const double v = static_cast<double>(b);
  if (v >= 1024.0 * 1024 * 1024) return absl::StrFormat("%.2f GiB", v / (1024.0 * 1024 * 1024));
  if (v >= 1024.0 * 1024) return absl::StrFormat("%.1f MiB", v / (1024.0 * 1024));
  return absl::StrFormat("%.1f KiB", v / 1024.0);
}

}  // namespace

namespace {

// What the memory and factor estimates read of the model and the recipe's data.
struct PlanInputs {
  LayerShape big;              // the largest layer
  int64_t largest_tensor = 0;  // elements (export streams one tensor at a time)
  int64_t act = 0;             // fp32 hidden states of every calibration window
  int64_t eval_act = 0;        // evaluation hidden states of one pass
  // fp32 inputs of every down projection of one layer (the widest) over the calibration windows:
  // what true-sequential GPTQ keeps for its last pass (model::LayerMemo).
  int64_t mlp_hidden = 0;
};

PlanInputs ReadPlanInputs(const recipe::Recipe& r, const model::ModelConfig& c) {
  PlanInputs in;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerShape s = ShapeOf(c, l);
    if (s.total > in.big.total) in.big = std::move(s);
  }
  for (const model::TensorSpec& t : model::ModelTensors(c)) {
    in.largest_tensor = std::max(in.largest_tensor, t.NumElements());
  }
  const int64_t H = c.hidden_size;
  const int64_t n = r.calibration ? r.calibration->samples : 0;
  const int64_t S = r.calibration ? r.calibration->seqlen : 0;
  in.act = n * S * H * 4;
  int64_t width = 0;
  for (int l = 0; l < c.num_hidden_layers; ++l) width = std::max(width, c.DownInputsPerToken(l));
  in.mlp_hidden = n * S * width * 4;
  // Evaluation windows, from the text's size at about 4 bytes per token.
  if (r.evaluation) {
    std::error_code ec;
    const int64_t bytes = static_cast<int64_t>(std::filesystem::file_size(r.evaluation->path, ec));
    if (!ec) in.eval_act = std::min<int64_t>(int64_t{1} << 30, bytes / 4 * H * 4);
  }
  return in;
}

// fp32 Hessians of the matrices a rank quantizes (the experts it owns; the rest dealt); gate/up
// and q/k/v share their inputs.
int64_t HessianBytes(const LayerShape& big, int ranks) {
  int64_t hessians = 0;
  for (const model::TensorSpec& m : big.matrices) {
    const int64_t in = m.shape[1];
    int64_t h = in * in * 4;
    if (m.role == model::TensorRole::kRoutedExpert) {
      h = h * CeilDiv(big.routed_experts, ranks) / std::max<int64_t>(1, big.routed_experts);
    }
    hessians += h;
  }
  return hessians / 2;
}

// Peak memory of one worker running one task of `st` (the kind's memory model; docs/cli.md).
void EstimateMemory(const recipe::StageSpec& st, const PlanInputs& in, int gang, PlannedStage* p) {
  const recipe::StageKindSpec& k = st.spec();
  const int W = k.data_plane ? std::max(1, gang) : 1;
  // A rank of the data plane holds the layer without the experts it does not own, and its share
  // of the windows.
  const LayerShape& big = in.big;
  const int64_t experts = big.elements.count(model::TensorRole::kRoutedExpert) > 0
                              ? big.elements.at(model::TensorRole::kRoutedExpert)
                              : 0;
  const int64_t own_experts =
      big.routed_experts > 0 ? experts * CeilDiv(big.routed_experts, W) / big.routed_experts : 0;
  const int64_t weights = (big.total - experts + own_experts) * 4;
  const int64_t acts = 2 * CeilDiv(in.act, W);
  switch (k.memory) {
    case recipe::MemoryModel::kLayerForward:
      p->memory_bytes = weights + acts;
      p->memory_note = "layer weights + hidden states";
      break;
    case recipe::MemoryModel::kHiddenStates:
      p->memory_bytes = acts;
      p->memory_note = "hidden states entering and leaving each layer";
      break;
    case recipe::MemoryModel::kQuantize:
      p->memory_bytes = 2 * weights + acts;
      p->memory_note = "layer weights (and quantized copy) + hidden states";
      break;
    case recipe::MemoryModel::kQuantizeHessians:
      p->memory_bytes = 2 * weights + acts + HessianBytes(big, W);
      p->memory_note = "layer weights + hidden states + fp32 Hessians";
      if (st.params.value("true_sequential", false)) {
        // The down projections' inputs kept for the last pass, when no larger than the weights.
        const int64_t kept = CeilDiv(in.mlp_hidden, W);
        if (kept <= weights) p->memory_bytes += kept;
        p->memory_note += " + the MLPs' inputs kept between passes";
      }
      break;
    case recipe::MemoryModel::kExpertScores:
      // Per rank, for its share of the windows: the original and pruned-chain inputs, each
      // batch's block input and target, and every expert's output on every token.
      p->memory_bytes = weights + 4 * CeilDiv(in.act, W) + CeilDiv(in.act, W) * big.routed_experts;
      p->memory_note = "owned experts + hidden states + every expert's output on its windows";
      break;
    case recipe::MemoryModel::kEvaluate:
      p->memory_bytes = big.total * 4 + 2 * in.eval_act;
      p->memory_note = "one layer + evaluation hidden states (at most 1 GiB per pass)";
      break;
    case recipe::MemoryModel::kExport:
      p->memory_bytes = 2 * in.largest_tensor * 4;
      p->memory_note = "the largest tensor (streamed one at a time)";
      break;
    case recipe::MemoryModel::kSmall:
      p->memory_bytes = int64_t{1} << 20;
      p->memory_note = "calibration statistics";
      break;
  }
  // On a GPU worker the same tensors live on the device; exports and statistics stay on the host.
  const bool on_device =
      k.memory != recipe::MemoryModel::kExport && k.memory != recipe::MemoryModel::kSmall;
  p->device_memory_bytes = on_device ? p->memory_bytes + kDeviceOverheadBytes : 0;
}

// Persisted outputs of all of `st`'s tasks: its hidden-state chain, its quantized linears and
// group parameters, the weights it prunes, else a few KiB per task.
// The stage's persisted outputs; *bulk receives the part that is bulk (all but the small ones).
int64_t EstimateFactorBytes(const recipe::StageSpec& st, const model::ModelConfig& c,
                            const model::ParameterCounts& counts, const PlanInputs& in, int tasks,
                            int64_t* bulk) {
  const recipe::StageKindSpec& k = st.spec();
  int64_t bytes = 0;
  if (k.per_layer() && k.writes_hidden.Holds(st.params)) bytes += in.act * c.num_hidden_layers;
  if (k.quantizes()) {
    const int64_t g = st.Int("group_size");
    int64_t linears = 0, groups = 0;
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      for (const model::TensorSpec& m : ShapeOf(c, l).matrices) {
        linears += m.NumElements();
        groups += m.shape[0] * CeilDiv(m.shape[1], g > 0 ? g : m.shape[1]);
      }
    }
    bytes += linears + groups * 8;
  }
  if (k.structural == recipe::StructuralEdit::kWeights) {
    // SparseGPT's updated matrices (fp32 at most); the others' masks, a bit per weight.
    const std::string method = st.params.value("method", "");
    bytes += method == "sparsegpt" ? counts.routed_experts * 4 : CeilDiv(counts.routed_experts, 8);
  }
  *bulk = bytes;
  return bytes == 0 ? tasks * int64_t{4096} : bytes;
}

// Output size of the stage that writes the output, with the widths of the quantizing stage it
// needs (an allocation's average for experts).
int64_t EstimateOutputBytes(const recipe::Recipe& r, const recipe::StageSpec& writer,
                            const model::ParameterCounts& counts, int64_t dtype_bytes,
                            int64_t hidden, int64_t model_bytes) {
  const recipe::FormatSpec* format = writer.spec().FindFormat(writer.Str("format"));
  std::vector<const recipe::StageSpec*> quantizers =
      r.NeedsWhere(writer, [](const recipe::StageKindSpec& k) { return k.quantizes(); });
  if (format == nullptr || !format->packed || quantizers.empty()) return model_bytes;
  const recipe::StageSpec& q = *quantizers.front();
  const recipe::StageKindSpec& qk = q.spec();
  double expert_bits = static_cast<double>(q.Int(qk.expert_width_param));
  const double attn_bits = static_cast<double>(q.Int("attn_bits"));
  const double shared_bits = static_cast<double>(q.Int(qk.shared_width_param));
  for (const recipe::StageSpec* a :
       r.NeedsWhere(q, [](const recipe::StageKindSpec& k) { return k.allocates(); })) {
    expert_bits = a->Float("average_bits");
  }
  const int64_t g = q.Int("group_size");
  const double codes = counts.routed_experts * expert_bits + counts.attention * attn_bits +
                       (counts.shared_experts + counts.dense_mlp) * shared_bits;
  const int64_t linears = counts.routed_experts + counts.attention + counts.shared_experts + counts.dense_mlp;
  // fp16 scale and zero per group of g inputs (about linears / g groups).
  const int64_t group_bytes = linears / std::max<int64_t>(1, g > 0 ? g : hidden) * 4;
  return static_cast<int64_t>(codes / 8) + group_bytes + (counts.total - linears) * dtype_bytes;
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
  const PlanInputs in = ReadPlanInputs(r, c);
  const std::map<std::string, std::string> views = recipe::ResolveModelViews(r.stages);
  for (const recipe::StageSpec& st : r.stages) {
    PlannedStage p;
    p.id = st.id;
    p.kind = st.kind;
    p.needs = st.needs;
    p.per_layer = st.spec().per_layer();
    p.tasks = p.per_layer ? c.num_hidden_layers : 1;
    p.gang = p.per_layer ? r.workers : 1;
    if (auto v = views.find(st.id); v != views.end()) p.view = v->second;
    EstimateMemory(st, in, p.gang, &p);
    p.factor_bytes = EstimateFactorBytes(st, c, counts, in, p.tasks, &p.bulk_bytes);
    plan.bulk_bytes += p.bulk_bytes;
    plan.peak_memory_bytes = std::max(plan.peak_memory_bytes, p.memory_bytes);
    plan.peak_device_memory_bytes = std::max(plan.peak_device_memory_bytes, p.device_memory_bytes);
    plan.factor_bytes += p.factor_bytes;
    plan.total_tasks += p.tasks;
    plan.stages.push_back(std::move(p));
    if (st.spec().writes_output) {
      plan.output_format = st.Str("format");
      plan.output_bytes = EstimateOutputBytes(r, st, counts, dtype_bytes, c.hidden_size,
                                              plan.model_bytes);
    }
  }
  return plan;
}

json PlanJson(const JobPlan& p) {
  json stages = json::array();
  for (const PlannedStage& s : p.stages) {
    stages.push_back({{"id", s.id}, {"kind", s.kind}, {"per_layer", s.per_layer},
                      {"tasks", s.tasks}, {"gang", s.gang}, {"needs", s.needs},
                      {"model_view", s.view}, {"memory_bytes", s.memory_bytes},
                      {"memory_note", s.memory_note}, {"device_memory_bytes", s.device_memory_bytes},
                      {"factor_bytes", s.factor_bytes}, {"bulk_bytes", s.bulk_bytes}});
  }
  return {{"name", p.name}, {"model", p.model}, {"model_type", p.model_type},
          {"output", p.output}, {"layers", p.layers}, {"workers", p.workers},
          {"parameters", p.parameters}, {"model_bytes", p.model_bytes},
          {"tasks", p.total_tasks}, {"stages", stages},
          {"peak_memory_per_worker_bytes", p.peak_memory_bytes},
          {"peak_gpu_memory_per_worker_bytes", p.peak_device_memory_bytes},
          {"factor_bytes", p.factor_bytes}, {"bulk_bytes", p.bulk_bytes},
          {"output_format", p.output_format},
          {"output_bytes", p.output_bytes}};
}

std::string PlanText(const JobPlan& p) {
  std::string out = absl::StrFormat(
      "plan for %s: %s (%s, %d layers, %lld parameters, %s), %d worker(s)\n\n", p.name, p.model,
      p.model_type, p.layers, static_cast<long long>(p.parameters), Bytes(p.model_bytes), p.workers);
  absl::StrAppendFormat(&out, "%-14s %-14s %7s %5s  %-22s %12s %12s %12s\n", "stage", "kind",
                        "tasks", "gang", "needs", "memory/wkr", "GPU/wkr", "factors");
  for (const PlannedStage& s : p.stages) {
    std::string needs = absl::StrJoin(s.needs, ",");
    if (!s.view.empty() && std::find(s.needs.begin(), s.needs.end(), s.view) == s.needs.end()) {
      absl::StrAppend(&needs, needs.empty() ? "" : ",", "(", s.view, ")");
    }
    absl::StrAppendFormat(&out, "%-14s %-14s %7d %5d  %-22s %12s %12s %12s\n", s.id, s.kind,
                          s.tasks, s.gang, needs.empty() ? "-" : needs, Bytes(s.memory_bytes),
                          s.device_memory_bytes > 0 ? Bytes(s.device_memory_bytes) : "host",
                          Bytes(s.factor_bytes));
  }
  absl::StrAppendFormat(&out,
                        "\n%d tasks; peak memory per worker ~%s (on a GPU worker ~%s of its GPU); "
                        "factor store ~%s",
                        p.total_tasks, Bytes(p.peak_memory_bytes), Bytes(p.peak_device_memory_bytes),
                        Bytes(p.factor_bytes));
  if (p.bulk_bytes > 0) {
    absl::StrAppendFormat(&out,
                          " (%s of it bulk: kept in the workers' activation stores, about %s per "
                          "worker of %d, with --scratch)",
                          Bytes(p.bulk_bytes), Bytes(CeilDiv(p.bulk_bytes, std::max(1, p.workers))),
                          p.workers);
  }
  if (!p.output_format.empty()) {
    absl::StrAppendFormat(&out, "; output (%s) ~%s in %s", p.output_format, Bytes(p.output_bytes), p.output);
  }
  out += "\nEstimates, not measurements (docs/cli.md \"plan\"); stages in (parentheses) run on the model view.\n";
  return out;
}

}  // namespace moec::plan
