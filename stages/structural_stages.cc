#include "stages/structural_stages.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "model/config/config.h"

namespace moec::stages {

using dataplane::CalibrationTokens;
using dataplane::GetTensor;
using dataplane::NeededStage;
using dataplane::OpenJobModel;
using dataplane::PutTensor;
using dataplane::ReadChunkedOutput;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Residual stream entering layer `layer` of the unmodified model (layer == layers: the last
// layer's output), from the calibrate chain.
absl::StatusOr<at::Tensor> ChainHidden(const StageContext& ctx, const model::ModelRunner& runner,
                                       const std::string& calibrate, int layer) {
  if (layer == 0) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor tokens, CalibrationTokens(ctx));
    return runner.Embed(tokens);
  }
  return ReadChunkedOutput(ctx, calibrate, layer - 1, outputs::kHidden);
}

// Mean over tokens of the cosine similarity of a and b [..., hidden], in float64.
double MeanCosine(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.reshape({-1, a.size(-1)}).to(at::kDouble);
  const at::Tensor y = b.reshape({-1, b.size(-1)}).to(x.device(), at::kDouble);  // a chain
  // input read from the factor store is on the host, an embedding on the task's device
  return at::cosine_similarity(x, y, 1, 1e-12).mean().item<double>();
}

// Indices of the `n` largest values (ties: lower index first), ascending.
std::vector<int64_t> LargestN(const std::vector<double>& v, int n) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const double x = std::isnan(v[a]) ? -INFINITY : v[a], y = std::isnan(v[b]) ? -INFINITY : v[b];
    return x > y;
  });
  order.resize(std::min<size_t>(order.size(), n));
  std::sort(order.begin(), order.end());
  return order;
}

absl::StatusOr<int> RequiredInt(const StageContext& ctx, const char* name) {
  return static_cast<int>(ctx.stage->Int(name));
}

// expert_drop's scores of every routed expert.
struct DropScores {
  at::Tensor scores;  // [layers, max experts], NaN where a layer has no such expert
  // (score, layer, expert) of every routed expert, for the global threshold.
  std::vector<std::tuple<double, int, int>> all;
  int moe_layers = 0;
  int experts_total = 0;
};

// Each routed expert's routing mass per calibration window (of calibrate stage `calibrate`), or
// with `random` uniform noise from `rng`.
absl::StatusOr<DropScores> ScoreExperts(const StageContext& ctx, const model::ModelConfig& config,
                                        const std::string& calibrate, bool random,
                                        std::mt19937_64& rng) {
  std::uniform_real_distribution<double> noise(0.0, 1.0);
  const int layers = config.num_hidden_layers;
  int width = 0;
  for (int l = 0; l < layers; ++l) width = std::max(width, config.NumRoutedExperts(l));
  DropScores out;
  out.scores = at::full({layers, width}, kNaN, at::kDouble);
  for (int l = 0; l < layers; ++l) {
    const int e_count = config.NumRoutedExperts(l);
    if (!config.IsMoeLayer(l) || e_count == 0) continue;
    ++out.moe_layers;
    out.experts_total += e_count;
    // DeepSeek's gate reports its raw top-k weights; the softmax routers their full softmax.
    const char* name = config.model_type == "deepseek" ? "routing_mass" : "softmax_mass";
    MOEC_ASSIGN_OR_RETURN(std::string key, ctx.InputKey(calibrate, l, name));
    MOEC_ASSIGN_OR_RETURN(at::Tensor mass, GetTensor(ctx, key));
    MOEC_ASSIGN_OR_RETURN(std::string wkey, ctx.InputKey(calibrate, l, outputs::kWindows));
    absl::StatusOr<at::Tensor> windows = GetTensor(ctx, wkey);
    const double samples = windows.ok() ? static_cast<double>((*windows)[0].item<int64_t>()) : 1.0;
    for (int e = 0; e < e_count; ++e) {
      const double s = random ? noise(rng) : mass[e].item<double>() / samples;
      out.scores[l][e] = s;
      out.all.emplace_back(s, l, e);
    }
  }
  return out;
}

// The [layers, max experts] kept mask: per MoE layer its `keep` highest scores (layerwise), or
// all but the round((mean experts - keep) * MoE layers) lowest scores of the model (global).
at::Tensor KeptMask(const model::ModelConfig& config, DropScores& s, int keep, bool layerwise) {
  const int layers = config.num_hidden_layers;
  at::Tensor kept = at::zeros({layers, s.scores.size(1)}, at::kByte);
  if (layerwise) {
    for (int l = 0; l < layers; ++l) {
      const int e_count = config.NumRoutedExperts(l);
      if (!config.IsMoeLayer(l) || e_count == 0) continue;
      std::vector<double> row(e_count);
      for (int e = 0; e < e_count; ++e) row[e] = s.scores[l][e].item<double>();
      for (int64_t e : LargestN(row, keep)) kept[l][e] = 1;
    }
    return kept;
  }
  const double mean = s.moe_layers > 0 ? static_cast<double>(s.experts_total) / s.moe_layers : 0;
  const int64_t drop = std::clamp<int64_t>(std::llround((mean - keep) * s.moe_layers), 0,
                                           static_cast<int64_t>(s.all.size()));
  std::stable_sort(s.all.begin(), s.all.end(),
                   [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
  for (size_t i = drop; i < s.all.size(); ++i) {
    kept[std::get<1>(s.all[i])][std::get<2>(s.all[i])] = 1;
  }
  return kept;
}

}  // namespace

absl::Status ExpertDropStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(model::ModelConfig config,
                        model::LoadModelConfig(ctx.recipe->model));
  MOEC_ASSIGN_OR_RETURN(const int keep, RequiredInt(ctx, "keep"));
  const std::string mode = ctx.stage->Str("mode");
  const bool random = ctx.stage->Bool("random");
  std::mt19937_64 rng(static_cast<uint64_t>(ctx.stage->Int("seed")));
  MOEC_ASSIGN_OR_RETURN(DropScores s, ScoreExperts(ctx, config, calibrate, random, rng));
  const at::Tensor kept = KeptMask(config, s, keep, mode == "layerwise");
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kKeptMask, kept));
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kDropScores, s.scores));
  ctx.progress(1.0, absl::StrCat(kept.sum().item<int64_t>(), " of ", s.experts_total,
                                 " experts kept"));
  return absl::OkStatus();
}

absl::Status LayerDropStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(const int drop, RequiredInt(ctx, "drop"));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  const int layers = config.num_hidden_layers;
  // h + y is the layer's output and y the MoE sub-block's: h = out − y.
  struct Capture : model::ForwardObserver {
    void OnMoeOutput(int, const at::Tensor& y) override { moe = y.clone(); }
    void OnLayerOutput(int, const at::Tensor& out) override { output = out.clone(); }
    at::Tensor moe, output;
  };
  std::vector<double> similarity(layers, kNaN);
  for (int l = 0; l < layers; ++l) {
    if (ctx.IsCancelled()) return absl::CancelledError("layer_drop cancelled");
    if (!config.IsMoeLayer(l)) continue;
    MOEC_ASSIGN_OR_RETURN(at::Tensor input, ChainHidden(ctx, *runner, calibrate, l));
    MOEC_ASSIGN_OR_RETURN(model::LayerWeights w, runner->LoadLayer(l));
    double sum = 0;
    int64_t tokens = 0;
    for (int64_t s = 0; s < input.size(0); s += 8) {
      const int64_t n = std::min<int64_t>(8, input.size(0) - s);
      Capture c;
      runner->RunLayer(w, input.narrow(0, s, n), &c);
      const at::Tensor out = c.output.reshape({-1, c.output.size(-1)});
      const at::Tensor h = out - c.moe.reshape({-1, out.size(-1)});
      sum += MeanCosine(h, out) * out.size(0);
      tokens += out.size(0);
    }
    similarity[l] = tokens > 0 ? sum / tokens : kNaN;
    ctx.progress(static_cast<double>(l + 1) / layers, absl::StrCat("layer ", l));
  }
  std::vector<int64_t> dropped = LargestN(similarity, drop);
  dropped.erase(std::remove_if(dropped.begin(), dropped.end(),
                               [&](int64_t l) { return std::isnan(similarity[l]); }),
                dropped.end());
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kDroppedMoeLayers, at::tensor(dropped, at::kLong)));
  return PutTensor(ctx, outputs::kSimilarity, at::tensor(similarity, at::kDouble));
}

absl::Status BlockDropStage::Run(StageContext& ctx) {
  if (ctx.rank != 0) return absl::OkStatus();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(const int drop, RequiredInt(ctx, "drop"));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const int layers = runner->config().num_hidden_layers;
  if (drop >= layers) {
    return absl::InvalidArgumentError(absl::StrCat("block_drop: drop ", drop, " of ", layers,
                                                   " layers would leave none"));
  }
  const bool consecutive = ctx.stage->Str("mode") == "consecutive";
  const int gap = consecutive ? drop : 1;  // cos(h_l, h_{l+gap})
  std::vector<double> similarity;
  for (int l = 0; l + gap <= layers; ++l) {
    if (ctx.IsCancelled()) return absl::CancelledError("block_drop cancelled");
    MOEC_ASSIGN_OR_RETURN(at::Tensor a, ChainHidden(ctx, *runner, calibrate, l));
    MOEC_ASSIGN_OR_RETURN(at::Tensor b, ChainHidden(ctx, *runner, calibrate, l + gap));
    similarity.push_back(MeanCosine(a, b));
    ctx.progress(static_cast<double>(l + 1) / (layers - gap + 1), absl::StrCat("layer ", l));
  }
  std::vector<int64_t> dropped;
  if (consecutive) {
    const int64_t start = LargestN(similarity, 1)[0];
    for (int i = 0; i < drop; ++i) dropped.push_back(start + i);
  } else {
    dropped = LargestN(similarity, drop);
  }
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kDroppedLayers, at::tensor(dropped, at::kLong)));
  return PutTensor(ctx, outputs::kSimilarity, at::tensor(similarity, at::kDouble));
}

}  // namespace moec::stages
