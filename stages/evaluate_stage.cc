#include "stages/evaluate_stage.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/model_inputs.h"
#include "kernels/kernels.h"
#include "model/config/parameter_count.h"
#include "model/config/tensor_names.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"
#include "model/tokenizer/tokenizer.h"
#include "storage/safetensors_reader.h"

namespace moec::stages {

using dataplane::NeededStage;

namespace {

namespace fs = std::filesystem;

uint64_t SafetensorsBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && absl::EndsWith(e.path().string(), ".safetensors")) {
      total += e.file_size(ec);
    }
  }
  return total;
}

// Code width of one weight of the model: GPTQ modules by their packed width, HQQ modules by their
// `nbits` (scales, zeros and g_idx not counted), stored tensors by their dtype's bits.
absl::StatusOr<double> CodeWidth(const storage::SafetensorsCheckpoint& checkpoint,
                                 const model::TensorSpec& spec) {
  if (checkpoint.Contains(spec.name)) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView v, checkpoint.Get(spec.name));
    const int64_t n = spec.NumElements();
    return n > 0 ? 8.0 * static_cast<double>(v.size) / static_cast<double>(n) : 0.0;
  }
  const std::string prefix = spec.name.substr(0, spec.name.size() - std::strlen("weight"));
  if (checkpoint.Contains(prefix + "nbits")) {
    MOEC_ASSIGN_OR_RETURN(storage::TensorView nb, checkpoint.Get(prefix + "nbits"));
    int32_t width = 0;
    if (nb.dtype != storage::DType::kI32 || nb.size != 4) {
      return absl::DataLossError(absl::StrCat(checkpoint.path(), ": ", prefix, "nbits is not I32 [1]"));
    }
    std::memcpy(&width, nb.data, 4);
    return static_cast<double>(width);
  }
  MOEC_ASSIGN_OR_RETURN(storage::TensorView q, checkpoint.Get(prefix + "qweight"));
  if (spec.shape.size() != 2 || q.shape.size() != 2) {
    return absl::DataLossError(absl::StrCat(checkpoint.path(), ": ", prefix, "qweight is not a matrix"));
  }
  for (int b = 1; b <= 8; ++b) {
    if (kernels::PackedWordsPerColumn(spec.shape[1], b) == q.shape[0]) return static_cast<double>(b);
  }
  return absl::DataLossError(absl::StrCat(checkpoint.path(), ": ", prefix, "qweight has ", q.shape[0],
                                          " rows, no width packs ", spec.shape[1], " columns so"));
}

struct AverageBits {
  double experts = 0;  // routed expert matrices, code width
  double mcmoe = 0;    // MC-MoE: decoder linear weight matrices except routers, code width
  double all = 0;      // every stored tensor byte (scales, zeros, embeddings, ...) per parameter
};

// Element-weighted mean widths (ALGORITHMS.md 3.8 for MC-MoE's definition).
absl::StatusOr<AverageBits> AverageWidths(const std::string& dir, const model::ModelConfig& c,
                                          int64_t parameters) {
  MOEC_ASSIGN_OR_RETURN(auto checkpoint, storage::SafetensorsCheckpoint::Open(dir));
  double expert_bits = 0, expert_n = 0, linear_bits = 0, linear_n = 0;
  for (const model::TensorSpec& spec : model::ModelTensors(c)) {
    const bool expert = spec.role == model::TensorRole::kRoutedExpert;
    const bool linear = spec.shape.size() == 2 && absl::EndsWith(spec.name, ".weight") &&
                        (expert || spec.role == model::TensorRole::kAttention ||
                         spec.role == model::TensorRole::kSharedExpert ||
                         spec.role == model::TensorRole::kDenseMlp);
    if (!expert && !linear) continue;
    MOEC_ASSIGN_OR_RETURN(double width, CodeWidth(*checkpoint, spec));
    const double n = static_cast<double>(spec.NumElements());
    if (expert) {
      expert_bits += n * width;
      expert_n += n;
    }
    if (linear) {
      linear_bits += n * width;
      linear_n += n;
    }
  }
  AverageBits r;
  r.experts = expert_n > 0 ? expert_bits / expert_n : 0.0;
  r.mcmoe = linear_n > 0 ? linear_bits / linear_n : 0.0;
  r.all = parameters > 0 ? 8.0 * static_cast<double>(checkpoint->total_tensor_bytes()) / parameters : 0.0;
  return r;
}

}  // namespace

absl::StatusOr<nlohmann::json> EvaluateModel(const std::string& dir, const std::string& text,
                                             int64_t seqlen, int64_t max_windows,
                                             const std::function<void(double)>& progress,
                                             const ComputeDevice& device) {
  model::RunnerOptions options;
  options.device = model::AtDevice(device);
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner,
                        model::ModelRunner::Open(dir, options));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer, model::Tokenizer::Load(dir));
  MOEC_ASSIGN_OR_RETURN(std::vector<std::string> texts, model::LoadTexts(text));
  model::EvalWindowOptions wo;
  wo.seqlen = seqlen;
  wo.max_windows = max_windows;
  MOEC_ASSIGN_OR_RETURN(model::TokenWindows windows,
                        model::EvaluationWindows(texts, *tokenizer, wo));
  // Routed (token, expert) pairs the forward actually computes, per layer: fewer than top-k per
  // token under dynamic skipping or ODP.
  struct RoutedRows : model::ForwardObserver {
    bool WantsLinearInputs(int) const override { return true; }
    void OnMoeInput(int layer, const at::Tensor& x) override { tokens[layer] += x.size(0); }
    void OnLinearInput(const model::LinearId& id, const at::Tensor& x, const at::Tensor&) override {
      if (id.kind == model::LinearKind::kExpertGate) rows[id.layer] += x.size(0);
    }
    std::map<int, int64_t> rows, tokens;
  } routed;
  MOEC_ASSIGN_OR_RETURN(model::PerplexityResult r,
                        runner->Perplexity(windows, [&](int64_t done, int64_t total) {
                          if (progress) progress(static_cast<double>(done) / total);
                        }, nullptr, &routed));
  const model::ModelConfig& c = runner->config();
  const model::ParameterCounts p = model::CountParameters(c);
  // Activated parameters as measured: the static count's top-k experts per MoE layer replaced by
  // the experts the tokens really used.
  double measured = static_cast<double>(p.activated), per_token = 0;
  int moe_layers = 0;
  for (const auto& [layer, tokens] : routed.tokens) {
    if (tokens == 0 || !c.IsMoeLayer(layer)) continue;
    const double expert = 3.0 * c.hidden_size * c.moe_intermediate_size;
    const double used = static_cast<double>(routed.rows[layer]) / tokens;
    measured += (used - c.NumActiveExperts(layer)) * expert;
    per_token += used;
    ++moe_layers;
  }
  nlohmann::json j = {{"path", dir},
                      {"model_type", c.model_type},
                      {"perplexity", r.perplexity},
                      {"mean_nll", r.mean_nll},
                      {"windows", r.windows},
                      {"seqlen", r.seqlen},
                      {"size_bytes", SafetensorsBytes(dir)},
                      {"parameters", p.total},
                      {"activated_parameters", p.activated},
                      {"activated_parameters_measured", static_cast<int64_t>(std::llround(measured))},
                      {"routed_experts_per_token", moe_layers > 0 ? per_token / moe_layers : 0.0}};
  MOEC_ASSIGN_OR_RETURN(AverageBits bits, AverageWidths(dir, c, p.total));
  j["average_expert_bits"] = bits.experts;
  j["average_bits_mcmoe"] = bits.mcmoe;
  j["average_bits_all"] = bits.all;
  return j;
}

absl::Status EvaluateStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  if (!ctx.recipe->evaluation.has_value()) {
    return absl::FailedPreconditionError(
        "evaluate needs evaluation text; the recipe has no 'evaluation'");
  }
  const std::string text = ctx.recipe->evaluation->path;
  const int64_t seqlen = ctx.recipe->evaluation->seqlen;
  const int64_t max_windows = ctx.stage->Int("max_windows");
  const bool baseline = ctx.stage->Bool("baseline");
  const std::string original = ctx.recipe->model;
  // It evaluates the job's output when it needs the stage that writes it.
  const bool exported =
      !NeededStagesWhere(ctx, [](const recipe::StageKindSpec& k) { return k.writes_output; })
           .empty();
  const std::string evaluated = exported ? ctx.recipe->output : original;
  const double parts = baseline && exported ? 2.0 : 1.0;
  nlohmann::json report;
  MOEC_ASSIGN_OR_RETURN(report["model"],
                        EvaluateModel(evaluated, text, seqlen, max_windows, [&](double f) {
                          ctx.progress(f / parts, "evaluating " + evaluated);
                        }, ctx.device));
  if (baseline && exported) {
    MOEC_ASSIGN_OR_RETURN(report["baseline"],
                          EvaluateModel(original, text, seqlen, max_windows, [&](double f) {
                            ctx.progress((1.0 + f) / parts, "evaluating the original model");
                          }, ctx.device));
  }
  const std::string bytes = report.dump();
  return ctx.io
      ->PutOutput(outputs::kReport, storage::DType::kU8, {static_cast<int64_t>(bytes.size())}, bytes)
      .status();
}

}  // namespace moec::stages
