#include "tools/train_loop.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include <ATen/core/grad_mode.h>

#include "model/config/tensor_names.h"
#include "model/data/datasets.h"
#include "model/runtime/forward.h"
#include "model/runtime/layers.h"

namespace moec::tools::internal {

using model::DecoderLayer;
using model::EmbeddingTensorName;
using model::FinalNormTensorName;
using model::ForwardObserver;
using model::LayerWeights;
using model::LmHeadTensorName;
using model::MakeRopeTables;
using model::ModelConfig;
using model::NamedTensor;
using model::RmsNorm;
using model::RopeTables;
using model::TensorRole;
using model::TensorSpec;
using model::UniformBelow;
using model::WriteCheckpointTensors;

namespace {

// Collects router logits (with their autograd history) for the load-balancing loss.
class RouterCollector : public ForwardObserver {
 public:
  void OnRouterLogits(int layer, const at::Tensor& logits) override { logits_.push_back(logits); }
  std::vector<at::Tensor> Take() { return std::move(logits_); }

 private:
  std::vector<at::Tensor> logits_;
};

// Switch Transformer load balancing: E * sum_e f_e * P_e, f_e = share of top-k slots, P_e =
// mean router probability.
at::Tensor LoadBalancingLoss(const at::Tensor& logits, int top_k) {
  const int64_t experts = logits.size(1);
  at::Tensor probs = at::softmax(logits, -1);
  at::Tensor chosen = std::get<1>(probs.topk(top_k, -1));
  at::Tensor counts =
      at::zeros({experts}, probs.options()).index_add_(0, chosen.reshape(-1),
                                                       at::ones({chosen.numel()}, probs.options()));
  at::Tensor f = (counts / static_cast<double>(chosen.numel())).detach();
  return static_cast<double>(experts) * (f * probs.mean(0)).sum();
}

// Logits of tokens [batch, seq] through the trainable parameters.
at::Tensor ForwardTrain(const Model& m, const at::Tensor& tokens, const RopeTables& rope,
                        ForwardObserver* observer) {
  const ModelConfig& c = m.config;
  at::Tensor h = at::embedding(m.by_name.at(EmbeddingTensorName()), tokens);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    absl::StatusOr<LayerWeights> w = AssembleLayer(
        c, l, [&](const TensorSpec& s) -> absl::StatusOr<at::Tensor> { return m.by_name.at(s.name); });
    h = DecoderLayer(c, *w, h, rope, observer);
  }
  h = RmsNorm(h, m.by_name.at(FinalNormTensorName()), c.rms_norm_eps);
  return at::linear(h, m.by_name.at(LmHeadTensorName(c)));
}

// AdamW's moment estimates, one of each per parameter.
struct AdamState {
  std::vector<at::Tensor> m, v;
};

// A batch [o.batch, o.seqlen + 1] of windows of `corpus` at random positions below `positions`.
at::Tensor SampleBatch(const at::Tensor& corpus, const TrainOptions& o, int64_t positions,
                       std::mt19937_64* rng) {
  std::vector<at::Tensor> rows;
  for (int b = 0; b < o.batch; ++b) {
    const int64_t at_pos = static_cast<int64_t>(UniformBelow(*rng, positions));
    rows.push_back(corpus.narrow(0, at_pos, o.seqlen + 1));
  }
  return at::stack(rows);
}

// The forward and backward pass of one batch: leaves the gradients of the loss (cross-entropy
// plus the load-balancing loss) in the parameters; returns the cross-entropy.
double ForwardBackward(Model* m, const at::Tensor& batch, const RopeTables& rope,
                       const TrainOptions& o) {
  at::Tensor input = batch.narrow(1, 0, o.seqlen), target = batch.narrow(1, 1, o.seqlen);
  RouterCollector routers;
  at::Tensor logits = ForwardTrain(*m, input, rope, &routers);
  at::Tensor loss = at::nll_loss(at::log_softmax(logits.reshape({-1, logits.size(2)}), -1),
                                 target.reshape(-1));
  const double ce = loss.item<double>();
  for (const at::Tensor& r : routers.Take()) {
    loss = loss + o.aux_loss * LoadBalancingLoss(r, o.top_k);
  }
  for (NamedTensor& p : m->params) p.tensor.mutable_grad() = at::Tensor();
  loss.backward();
  return ce;
}

// Clips the global gradient norm to 1, then AdamW with linear warmup and cosine decay to 10%.
void AdamWStep(Model* m, AdamState* adam, const TrainOptions& o, int step, int warmup) {
  double norm2 = 0;
  for (const NamedTensor& p : m->params) {
    if (p.tensor.grad().defined()) norm2 += p.tensor.grad().pow(2).sum().item<double>();
  }
  const double clip = std::min(1.0, 1.0 / (std::sqrt(norm2) + 1e-6));
  const double progress_frac = static_cast<double>(step) / o.steps;
  const double lr = step < warmup ? o.lr * (step + 1) / warmup
                                  : o.lr * (0.1 + 0.45 * (1 + std::cos(M_PI * progress_frac)));
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8;
  const double c1 = 1 - std::pow(b1, step + 1), c2 = 1 - std::pow(b2, step + 1);
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < m->params.size(); ++i) {
    at::Tensor& p = m->params[i].tensor;
    if (!p.grad().defined()) continue;
    at::Tensor g = p.grad() * clip;
    adam->m[i].mul_(b1).add_(g, 1 - b1);
    adam->v[i].mul_(b2).addcmul_(g, g, 1 - b2);
    if (p.dim() >= 2) p.mul_(1 - lr * o.weight_decay);
    p.addcdiv_(adam->m[i] / c1, (adam->v[i] / c2).sqrt_().add_(eps), -lr);
  }
}

}  // namespace

Model InitModel(const ModelConfig& config, uint64_t seed) {
  Model m;
  m.config = config;
  at::manual_seed(seed);
  for (const TensorSpec& spec : ModelTensors(config)) {
    at::Tensor t;
    if (spec.shape.size() == 1 && spec.role == TensorRole::kNorm) {
      t = at::ones(spec.shape);
    } else if (spec.shape.size() == 1) {
      t = at::zeros(spec.shape);
    } else {
      t = at::randn(spec.shape) * 0.02;
    }
    t.set_requires_grad(true);
    m.params.push_back({spec.name, t, std::nullopt});
    m.by_name[spec.name] = t;
  }
  return m;
}

std::vector<double> TrainSteps(const TrainOptions& o, const at::Tensor& corpus, Model* m,
                               const TrainProgressFn& progress,
                               std::chrono::steady_clock::time_point start) {
  const RopeTables rope = MakeRopeTables(o.seqlen, m->config.head_dim, m->config.rope_theta);
  AdamState adam;
  for (const NamedTensor& p : m->params) {
    adam.m.push_back(at::zeros_like(p.tensor));
    adam.v.push_back(at::zeros_like(p.tensor));
  }
  std::mt19937_64 rng(o.seed ^ 0x5eedULL);
  const int64_t positions = corpus.size(0) - o.seqlen - 1;
  const int warmup = std::max(1, o.steps / 20);
  std::vector<double> recent;
  for (int step = 0; step < o.steps; ++step) {
    const double ce = ForwardBackward(m, SampleBatch(corpus, o, positions, &rng), rope, o);
    AdamWStep(m, &adam, o, step, warmup);
    recent.push_back(ce);
    if (recent.size() > 10) recent.erase(recent.begin());
    if (progress) progress({step + 1, o.steps, ce, SecondsSince(start)});
  }
  return recent;
}

absl::Status WriteTrainedCheckpoint(const Model& m, const std::string& dir) {
  std::vector<NamedTensor> out;
  for (const NamedTensor& p : m.params) {
    if (p.name == LmHeadTensorName(m.config) && m.config.tie_word_embeddings) continue;
    out.push_back({p.name, p.tensor.detach(), std::nullopt});
  }
  return WriteCheckpointTensors(dir, out);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace moec::tools::internal
