#include "model/runtime/forward.h"

#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/task_profile.h"

namespace moec::model {
namespace {

// Which matrix of a SwiGLU MLP a tensor name ends with (Mixtral's w1/w3/w2 or *_proj).
MlpWeights* Slot(MlpWeights* mlp, const std::string& name, at::Tensor** out) {
  if (absl::EndsWith(name, "w1.weight") || absl::EndsWith(name, "gate_proj.weight")) {
    *out = &mlp->gate;
  } else if (absl::EndsWith(name, "w3.weight") || absl::EndsWith(name, "up_proj.weight")) {
    *out = &mlp->up;
  } else if (absl::EndsWith(name, "w2.weight") || absl::EndsWith(name, "down_proj.weight")) {
    *out = &mlp->down;
  } else {
    *out = nullptr;
  }
  return mlp;
}

at::Tensor* AttentionSlot(AttentionWeights* a, const std::string& name) {
  struct Entry {
    const char* suffix;
    at::Tensor AttentionWeights::*member;
  };
  static const Entry kEntries[] = {
      {"q_proj.weight", &AttentionWeights::q},      {"k_proj.weight", &AttentionWeights::k},
      {"v_proj.weight", &AttentionWeights::v},      {"o_proj.weight", &AttentionWeights::o},
      {"q_proj.bias", &AttentionWeights::q_bias},   {"k_proj.bias", &AttentionWeights::k_bias},
      {"v_proj.bias", &AttentionWeights::v_bias},   {"o_proj.bias", &AttentionWeights::o_bias},
      {"q_norm.weight", &AttentionWeights::q_norm}, {"k_norm.weight", &AttentionWeights::k_norm},
  };
  for (const Entry& e : kEntries) {
    if (absl::EndsWith(name, e.suffix)) return &(a->*e.member);
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Open(const std::string& model_dir,
                                                               const RunnerOptions& options) {
  MOEC_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<WeightLoader> loader,
                        WeightLoader::Open(model_dir, ToScalarType(options.dtype), config.quantization));
  return std::unique_ptr<ModelRunner>(
      new ModelRunner(std::move(config), std::move(loader), options));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::OpenView(const std::string& model_dir,
                                                                   ModelConfig config,
                                                                   TensorSource source,
                                                                   const RunnerOptions& options) {
  if (source == nullptr) return absl::InvalidArgumentError("OpenView needs a tensor source");
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<WeightLoader> loader,
                        WeightLoader::Open(model_dir, ToScalarType(options.dtype), config.quantization));
  return std::unique_ptr<ModelRunner>(
      new ModelRunner(std::move(config), std::move(loader), options, std::move(source)));
}

absl::StatusOr<at::Tensor> ModelRunner::Load(const TensorSpec& spec) const {
  profile::ScopedPhase phase(profile::Phase::kLoad);
  at::Tensor t;
  if (source_ == nullptr) {
    MOEC_ASSIGN_OR_RETURN(t, loader_->Load(spec));
  } else {
    MOEC_ASSIGN_OR_RETURN(t, source_(spec));
    if (t.sizes() != at::IntArrayRef(spec.shape)) {
      return absl::InvalidArgumentError(absl::StrCat("model view: tensor ", spec.name, " is [",
                                                     absl::StrJoin(t.sizes().vec(), ", "),
                                                     "], expected [",
                                                     absl::StrJoin(spec.shape, ", "), "]"));
    }
    t = t.to(loader_->dtype()).contiguous();
  }
  return ToDevice(t, options_.device, spec.name);
}

absl::StatusOr<LayerWeights> AssembleLayer(const ModelConfig& config, int layer,
                                           const TensorSource& source) {
  if (layer < 0 || layer >= config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ",
                                                   config.num_hidden_layers, ")"));
  }
  LayerWeights w;
  w.layer = layer;
  if (config.IsMoeLayer(layer)) {
    w.moe.emplace();
    w.moe->experts.resize(config.NumRoutedExperts(layer));
  }
  for (const TensorSpec& spec : LayerTensors(config, layer)) {
    MOEC_ASSIGN_OR_RETURN(at::Tensor t, source(spec));
    w.bytes += static_cast<int64_t>(t.nbytes());
    at::Tensor* slot = nullptr;
    switch (spec.role) {
      case TensorRole::kNorm:
        slot = absl::EndsWith(spec.name, "input_layernorm.weight") ? &w.input_norm : &w.post_norm;
        break;
      case TensorRole::kAttention:
        slot = AttentionSlot(&w.attention, spec.name);
        break;
      case TensorRole::kRouter:
        slot = absl::EndsWith(spec.name, "shared_expert_gate.weight") ? &w.moe->shared_expert_gate
                                                                       : &w.moe->router;
        break;
      case TensorRole::kRoutedExpert:
        Slot(&w.moe->experts[spec.expert], spec.name, &slot);
        break;
      case TensorRole::kSharedExpert:
        Slot(&w.moe->shared, spec.name, &slot);
        break;
      case TensorRole::kDenseMlp:
        Slot(&w.dense, spec.name, &slot);
        break;
      default:
        break;
    }
    if (slot == nullptr) {
      return absl::InternalError(absl::StrCat("no slot for tensor '", spec.name, "'"));
    }
    *slot = std::move(t);
  }
  return w;
}

absl::StatusOr<LayerWeights> ModelRunner::LoadLayer(int layer) const {
  return AssembleLayer(config_, layer, [this](const TensorSpec& spec) { return Load(spec); });
}

absl::StatusOr<LayerWeights> ModelRunner::LoadLayer(
    int layer, const std::function<bool(int)>& want_expert) const {
  return AssembleLayer(config_, layer, [&](const TensorSpec& spec) -> absl::StatusOr<at::Tensor> {
    if (spec.role == TensorRole::kRoutedExpert && !want_expert(spec.expert)) {
      return at::empty({0}, dtype());
    }
    return Load(spec);
  });
}

absl::StatusOr<HeadWeights> ModelRunner::LoadHead() const {
  HeadWeights head;
  MOEC_ASSIGN_OR_RETURN(head.norm, Load({FinalNormTensorName(), {config_.hidden_size}}));
  MOEC_ASSIGN_OR_RETURN(head.lm_head, Load({LmHeadTensorName(config_),
                                            {config_.vocab_size, config_.hidden_size}}));
  return head;
}

absl::StatusOr<at::Tensor> ModelRunner::Embed(const at::Tensor& tokens) const {
  if (tokens.dim() != 2 || tokens.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("token ids must be an int64 tensor [batch, seq]");
  }
  if (tokens.numel() > 0) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", lo < 0 ? lo : hi, " outside the vocabulary [0, ",
                       config_.vocab_size, ") of ", config_.source));
    }
  }
  if (config_.sliding_window.has_value() && tokens.size(1) > *config_.sliding_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences of ", tokens.size(1), " tokens exceed the sliding attention window of ",
        *config_.sliding_window, " in ", config_.source, "; sliding-window attention is not ",
        "implemented, use a shorter seqlen"));
  }
  MOEC_ASSIGN_OR_RETURN(at::Tensor table, Load({EmbeddingTensorName(),
                                                {config_.vocab_size, config_.hidden_size}}));
  return at::embedding(table, tokens.to(options_.device));
}

RopeTables ModelRunner::Rope(int64_t seq) const {
  absl::MutexLock lock(&rope_mu_);
  if (seq > rope_seq_) {
    // On the host, then copied: the same tables on every device.
    rope_ = MakeRopeTables(seq, config_.head_dim, config_.rope_theta);
    rope_.cos = rope_.cos.to(options_.device);
    rope_.sin = rope_.sin.to(options_.device);
    rope_seq_ = seq;
  }
  return rope_;
}

at::Tensor ModelRunner::RunLayer(const LayerWeights& weights, const at::Tensor& hidden,
                                 ForwardObserver* observer, ExpertExecutor* experts,
                                 LayerMemo* memo) const {
  profile::ScopedPhase phase(profile::Phase::kForward);
  // Layer inputs read back from the factor store are host tensors: they join the weights here.
  return DecoderLayer(config_, weights, hidden.to(options_.device), Rope(hidden.size(1)), observer,
                      experts, memo);
}

at::Tensor ModelRunner::RunLayerInMicroBatches(const LayerWeights& weights,
                                               const at::Tensor& hidden,
                                               ForwardObserver* observer) const {
  const int64_t n = hidden.size(0), seq = hidden.size(1);
  const int64_t mb = options_.micro_batch_tokens > 0
                         ? std::clamp<int64_t>(options_.micro_batch_tokens / seq, 1, n)
                         : n;
  if (mb >= n) return RunLayer(weights, hidden, observer);
  // Windows are independent through a layer: each micro-batch's output replaces its input rows.
  at::Tensor h = hidden.to(options_.device);
  for (int64_t b = 0; b < n; b += mb) {
    at::Tensor part = h.narrow(0, b, std::min(mb, n - b));
    part.copy_(RunLayer(weights, part, observer));
  }
  return h;
}

std::unique_ptr<LayerPrefetcher> ModelRunner::StreamLayers() const {
  const bool ahead = options_.prefetch_layers.value_or(!options_.device.is_cpu());
  return std::make_unique<LayerPrefetcher>([this](int l) { return LoadLayer(l); },
                                           config_.num_hidden_layers, options_.device, ahead);
}

at::Tensor ModelRunner::ApplyHead(const HeadWeights& head, const at::Tensor& hidden) const {
  profile::ScopedPhase phase(profile::Phase::kForward);
  profile::AddFlops(profile::MatmulFlops(hidden.numel() / hidden.size(-1), head.lm_head.size(0),
                                         head.lm_head.size(1)));
  at::Tensor normed = RmsNorm(hidden, head.norm, config_.rms_norm_eps);
  return at::linear(normed, head.lm_head).to(at::kFloat);
}

absl::StatusOr<at::Tensor> ModelRunner::Forward(const at::Tensor& tokens,
                                                ForwardObserver* observer,
                                                const ProgressFn& progress) const {
  MOEC_ASSIGN_OR_RETURN(at::Tensor h, Embed(tokens));
  const int64_t total = config_.num_hidden_layers + 1;
  std::unique_ptr<LayerPrefetcher> layers = StreamLayers();
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    MOEC_ASSIGN_OR_RETURN(LayerWeights w, layers->Next());
    h = RunLayer(w, h, observer);
    if (progress) progress(l + 1, total);
  }
  MOEC_ASSIGN_OR_RETURN(HeadWeights head, LoadHead());
  at::Tensor logits = ApplyHead(head, h);
  if (progress) progress(total, total);
  return logits;
}

namespace {

absl::Status CheckCancelled(const std::atomic<bool>* cancelled) {
  if (cancelled != nullptr && cancelled->load()) {
    return absl::CancelledError("perplexity evaluation cancelled");
  }
  return absl::OkStatus();
}

// Adds the mean next-token NLL of each of the `count` windows of `tokens` [count, seq], whose
// last hidden states are `h`, to `*nll_sum`, in order.
void AddWindowNlls(const ModelRunner& runner, const HeadWeights& head, const at::Tensor& h,
                   const at::Tensor& tokens, int64_t count, int64_t seq, double* nll_sum) {
  // One window at a time: logits of a window are seq * vocab floats.
  for (int64_t i = 0; i < count; ++i) {
    at::Tensor logits = runner.ApplyHead(head, h.narrow(0, i, 1)).squeeze(0);  // [seq, vocab]
    at::Tensor logp = at::log_softmax(logits.narrow(0, 0, seq - 1), -1);
    at::Tensor target = tokens[i].narrow(0, 1, seq - 1).unsqueeze(1).to(logp.device());
    const double mean = -logp.gather(1, target).mean().item<double>();
    *nll_sum += mean;
  }
}

}  // namespace

absl::StatusOr<PerplexityResult> ModelRunner::Perplexity(const TokenWindows& windows,
                                                         const ProgressFn& progress,
                                                         const std::atomic<bool>* cancelled,
                                                     ForwardObserver* observer) const {
  const int64_t n = windows.count(), seq = windows.seqlen;
  if (n == 0 || seq < 2) {
    return absl::InvalidArgumentError(
        "perplexity needs at least one window of at least 2 tokens");
  }
  const int64_t elem = at::elementSize(dtype());
  const int64_t per_window = seq * config_.hidden_size * elem;
  const int64_t group = std::clamp<int64_t>(options_.activation_budget_bytes / per_window, 1, n);
  const int64_t passes = (n + group - 1) / group;
  const int64_t steps_per_pass = config_.num_hidden_layers + 2;
  const int64_t total = passes * steps_per_pass;
  int64_t done = 0;
  at::Tensor all = at::from_blob(const_cast<int32_t*>(windows.tokens.data()), {n, seq}, at::kInt)
                       .to(at::kLong);
  double nll_sum = 0;
  for (int64_t start = 0; start < n; start += group) {
    const int64_t count = std::min(group, n - start);
    at::Tensor tokens = all.narrow(0, start, count);
    MOEC_ASSIGN_OR_RETURN(at::Tensor h, Embed(tokens));
    if (progress) progress(++done, total);
    std::unique_ptr<LayerPrefetcher> layers = StreamLayers();
    for (int l = 0; l < config_.num_hidden_layers; ++l) {
      MOEC_RETURN_IF_ERROR(CheckCancelled(cancelled));
      MOEC_ASSIGN_OR_RETURN(LayerWeights w, layers->Next());
      h = RunLayerInMicroBatches(w, h, observer);
      if (progress) progress(++done, total);
    }
    MOEC_ASSIGN_OR_RETURN(HeadWeights head, LoadHead());
    AddWindowNlls(*this, head, h, tokens, count, seq, &nll_sum);
    if (progress) progress(++done, total);
  }
  PerplexityResult result;
  result.windows = n;
  result.seqlen = seq;
  result.mean_nll = nll_sum / static_cast<double>(n);
  result.perplexity = std::exp(result.mean_nll);
  result.predicted_tokens = n * (seq - 1);
  if (!std::isfinite(result.mean_nll)) {
    return absl::DataLossError(
        absl::StrCat("perplexity of ", config_.source, " is not finite (NLL ", result.mean_nll,
                     "): the weights or activations overflow in ",
                     ComputeDtypeName(options_.dtype)));
  }
  return result;
}

}  // namespace moec::model
