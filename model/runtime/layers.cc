#include "model/runtime/layers.h"

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/task_profile.h"

namespace moec::model {
namespace {

// Query rows per block of the causal attention.
constexpr int64_t kQueryBlock = 256;

LinearKind Offset(LinearKind gate, int delta) {
  return static_cast<LinearKind>(static_cast<int>(gate) + delta);
}

// x W^T (+ b), its FLOPs counted in the task's profile.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  profile::AddFlops(profile::MatmulFlops(x.numel() / std::max<int64_t>(1, x.size(-1)), w.size(0),
                                         w.size(1)));
  return b.defined() ? at::linear(x, w, b) : at::linear(x, w);
}

// What an observer does with what it is shown is the statistics phase of the task's profile.
template <typename F>
void Notify(ForwardObserver* observer, F&& f) {
  if (observer == nullptr) return;
  profile::ScopedPhase phase(profile::Phase::kStatistics);
  f(*observer);
}

// The FLOPs of causal attention over [B, heads, S, d]: scores and weighted values for the
// S (S + 1) / 2 query-key pairs that are not masked.
void CountCausalAttention(int64_t batch, int64_t heads, int64_t seq, int64_t d) {
  profile::AddFlops(4.0 * static_cast<double>(batch * heads) * d * (seq * (seq + 1) / 2));
}

}  // namespace

RoutingRule RoutingRuleFor(const ModelConfig& config, int layer) {
  RoutingRule rule;
  rule.top_k = config.NumActiveExperts(layer);
  // Mixtral always renormalizes; DeepSeek's MoEGate only when top_k > 1 and norm_topk_prob;
  // Qwen and OLMoE when norm_topk_prob.
  rule.renormalize = config.arch == Architecture::kMixtral ||
                     (config.norm_topk_prob &&
                      (config.arch != Architecture::kDeepseek || config.num_experts_per_tok > 1));
  rule.router_in_fp32 = config.arch == Architecture::kDeepseek;
  const MoecOverrides& m = config.moec;
  if (!m.skip_beta.empty() && m.skip_beta[layer].has_value()) rule.skip_beta = m.skip_beta[layer];
  if (m.odp.has_value()) {
    const OdpSettings& odp = *m.odp;
    for (int l : odp.enabled_layers) {
      if (l != layer) continue;
      rule.odp = true;
      rule.odp_beta = odp.beta[layer].value_or(0.0);
      rule.tau_low = odp.tau_low;
      rule.tau_high = odp.tau_high;
      rule.positional_prior = odp.positional_prior;
    }
  }
  return rule;
}

RopeTables MakeRopeTables(int64_t seq, int64_t head_dim, double theta) {
  // inv_freq = 1 / theta^(2i / d), computed as transformers does (fp32 exponent, fp64-free).
  at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) /
                         static_cast<float>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(static_cast<float>(theta), exponents);
  at::Tensor positions = at::arange(seq, at::kLong).to(at::kFloat);
  at::Tensor freqs = at::outer(positions, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return RopeTables{emb.cos(), emb.sin()};
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor ApplyRope(const at::Tensor& q, const RopeTables& rope) {
  const int64_t seq = q.size(-2);
  const int64_t half = q.size(-1) / 2;
  at::Tensor cos = rope.cos.narrow(0, 0, seq).to(q.scalar_type());
  at::Tensor sin = rope.sin.narrow(0, 0, seq).to(q.scalar_type());
  at::Tensor rotated = at::cat({-q.narrow(-1, half, half), q.narrow(-1, 0, half)}, -1);
  return q * cos + rotated * sin;
}

namespace {

struct Qkv {
  at::Tensor q, k, v;
};

// The queries [B, heads, S, d], keys and values [B, kv_heads, S, d] of x after their norms,
// clipping and rotary embedding.
Qkv ProjectQkv(const ModelConfig& config, const AttentionWeights& w, const at::Tensor& x,
               const RopeTables& rope) {
  const int64_t batch = x.size(0), seq = x.size(1);
  const int64_t heads = config.num_attention_heads, kv_heads = config.num_key_value_heads;
  const int64_t d = config.head_dim;
  at::Tensor q = Linear(x, w.q, w.q_bias);
  at::Tensor k = Linear(x, w.k, w.k_bias);
  at::Tensor v = Linear(x, w.v, w.v_bias);
  if (config.qk_norm == QkNorm::kFullWidth) {
    q = RmsNorm(q, w.q_norm, config.rms_norm_eps);
    k = RmsNorm(k, w.k_norm, config.rms_norm_eps);
  }
  if (config.clip_qkv.has_value()) {
    const double clip = *config.clip_qkv;
    q = q.clamp(-clip, clip);
    k = k.clamp(-clip, clip);
    v = v.clamp(-clip, clip);
  }
  q = q.view({batch, seq, heads, d});
  k = k.view({batch, seq, kv_heads, d});
  v = v.view({batch, seq, kv_heads, d});
  if (config.qk_norm == QkNorm::kPerHead) {
    q = RmsNorm(q, w.q_norm, config.rms_norm_eps);
    k = RmsNorm(k, w.k_norm, config.rms_norm_eps);
  }
  q = ApplyRope(q.transpose(1, 2), rope);  // [B, heads, S, d]
  k = ApplyRope(k.transpose(1, 2), rope);
  v = v.transpose(1, 2);
  return Qkv{q, k, v};
}

// Causal attention in blocks of query rows: block [i0, i1) only needs keys [0, i1), so the
// masked upper triangle is never computed and each block's scores stay small (cache-sized
// instead of heads * seq * seq floats). Queries are scaled before the product. Returns the
// attended values [B, heads, S, d] and adds the column statistic's sums into `statistic` [B, S].
// Only used when the statistic is wanted: it needs the probabilities, which the fused kernel
// below never materializes.
at::Tensor BlockedCausalAttention(Qkv qkv, int64_t d, at::Tensor& statistic) {
  at::Tensor q = qkv.q, k = qkv.k, v = qkv.v;
  const int64_t batch = q.size(0), seq = q.size(2);
  if (k.size(1) != q.size(1)) {
    // Key/value head j serves query heads j*g .. j*g+g-1 (transformers' repeat_kv).
    k = k.repeat_interleave(q.size(1) / k.size(1), 1);
    v = v.repeat_interleave(q.size(1) / v.size(1), 1);
  }
  q = q * (1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t block = kQueryBlock;
  std::vector<at::Tensor> rows;  // per sequence: [heads, seq, d]
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<at::Tensor> blocks;
    for (int64_t i0 = 0; i0 < seq; i0 += block) {
      const int64_t i1 = std::min(seq, i0 + block), n = i1 - i0;
      at::Tensor keys = k[b].narrow(1, 0, i1), values = v[b].narrow(1, 0, i1);
      at::Tensor scores = at::matmul(q[b].narrow(1, i0, n), keys.transpose(-1, -2));
      // Within the diagonal block, query i0 + r sees keys up to i0 + r.
      scores.narrow(2, i0, n).masked_fill_(
          at::ones({n, n}, scores.options().dtype(at::kBool)).triu(1),
          -std::numeric_limits<float>::infinity());
      at::Tensor probs = at::softmax(scores, -1, at::kFloat);
      // a_t = (sum over queries i >= t of P(i -> t), averaged over heads) / (S - t).
      statistic[b].narrow(0, 0, i1).add_(probs.mean(0).sum(0));
      blocks.push_back(at::matmul(probs.to(values.scalar_type()), values));
    }
    rows.push_back(blocks.size() == 1 ? blocks[0] : at::cat(blocks, 1));
  }
  return at::stack(rows);  // [B, heads, S, d]
}

// Causal attention [B, heads, S, d] through ATen's fused kernel (flash attention on CPU and
// CUDA), with grouped key/value heads shared as transformers' repeat_kv shares them.
at::Tensor FusedCausalAttention(const Qkv& qkv, int64_t d) {
  const bool grouped = qkv.k.size(1) != qkv.q.size(1);
  return at::scaled_dot_product_attention(qkv.q, qkv.k, qkv.v, /*attn_mask=*/{},
                                          /*dropout_p=*/0.0, /*is_causal=*/true,
                                          1.0 / std::sqrt(static_cast<double>(d)), grouped);
}

}  // namespace

AttentionOutput Attention(const ModelConfig& config, int layer, const AttentionWeights& w,
                          const at::Tensor& x, const RopeTables& rope, bool want_column_statistic,
                          ForwardObserver* observer, LayerMemo* memo) {
  const int64_t batch = x.size(0), seq = x.size(1);
  const int64_t heads = config.num_attention_heads;
  const int64_t d = config.head_dim;
  const bool capture = observer != nullptr && observer->WantsLinearInputs(layer);
  const LayerExtent extent = observer != nullptr ? observer->Extent(layer) : LayerExtent::kAll;
  if (capture) {
    at::Tensor flat = x.reshape({batch * seq, x.size(2)});
    Notify(observer, [&](ForwardObserver& o) {
      for (LinearKind kind : {LinearKind::kQ, LinearKind::kK, LinearKind::kV}) {
        o.OnLinearInput({layer, kind, -1}, flat, {});
      }
    });
  }
  if (extent == LayerExtent::kQkvInputs) return {};
  AttentionOutput result;
  at::Tensor attended;  // [B, S, heads * d]
  if (memo != nullptr && memo->attended.defined()) {
    attended = memo->attended;
    result.column_statistic = memo->column_statistic;
  } else {
    Qkv qkv = ProjectQkv(config, w, x, rope);
    CountCausalAttention(batch, heads, seq, d);
    if (want_column_statistic) {
      at::Tensor statistic = at::zeros({batch, seq}, x.options().dtype(at::kFloat));
      attended = BlockedCausalAttention(std::move(qkv), d, statistic);
      result.column_statistic = statistic / at::arange(seq, 0, -1, statistic.options());
    } else {
      attended = FusedCausalAttention(qkv, d);
    }
    attended = attended.transpose(1, 2).reshape({batch, seq, heads * d});
    if (memo != nullptr && (memo->record & LayerMemo::kAttended)) {
      memo->attended = attended;
      memo->column_statistic = result.column_statistic;
    }
  }
  if (capture) {
    Notify(observer, [&](ForwardObserver& o) {
      o.OnLinearInput({layer, LinearKind::kO, -1}, attended.reshape({batch * seq, heads * d}), {});
    });
  }
  if (extent == LayerExtent::kOInput) return {};
  result.output = Linear(attended, w.o, w.o_bias);
  return result;
}

at::Tensor LayerMemo::TakeMlpHidden(int64_t rows, int64_t width) {
  if (mlp_hidden.empty() || (record & kMlpHidden)) return {};  // a recording pass computes them
  if (next < mlp_hidden.size()) {
    const at::Tensor& t = mlp_hidden[next++];
    if (t.dim() == 2 && t.size(0) == rows && t.size(1) == width) return t;
  }
  ++misses;
  return {};
}

int64_t LayerMemo::Bytes() const {
  int64_t bytes = 0;
  for (const at::Tensor* t : {&attended, &column_statistic, &after_attention}) {
    if (t->defined()) bytes += t->nbytes();
  }
  for (const at::Tensor& t : mlp_hidden) bytes += t.nbytes();
  return bytes;
}

at::Tensor Mlp(const MlpWeights& w, const at::Tensor& x, int layer, LinearKind gate_kind,
               int expert, ForwardObserver* observer, const at::Tensor& token_index,
               LayerMemo* memo) {
  const bool capture = observer != nullptr && observer->WantsLinearInputs(layer);
  const LayerExtent extent = observer != nullptr ? observer->Extent(layer) : LayerExtent::kAll;
  if (capture) {
    Notify(observer, [&](ForwardObserver& o) {
      o.OnLinearInput({layer, gate_kind, expert}, x, token_index);
      o.OnLinearInput({layer, Offset(gate_kind, 1), expert}, x, token_index);
    });
  }
  // A shortened pass (LayerExtent) returns zeros of the output's shape once its input is seen.
  const auto skipped = [&] { return at::zeros({x.size(0), w.down.size(0)}, x.options()); };
  at::Tensor hidden = memo != nullptr ? memo->TakeMlpHidden(x.size(0), w.gate.size(0)) : at::Tensor();
  if (!hidden.defined()) {
    if (extent == LayerExtent::kGateUpInputs) return skipped();
    hidden = at::silu(Linear(x, w.gate)) * Linear(x, w.up);
    if (memo != nullptr && (memo->record & LayerMemo::kMlpHidden)) memo->mlp_hidden.push_back(hidden);
  }
  if (capture) {
    Notify(observer, [&](ForwardObserver& o) {
      o.OnLinearInput({layer, Offset(gate_kind, 2), expert}, hidden, token_index);
    });
  }
  if (extent == LayerExtent::kDownInputs) return skipped();
  return Linear(hidden, w.down);
}

Routing Route(const at::Tensor& router, const at::Tensor& x, const RoutingRule& rule,
              const at::Tensor& importance, int64_t seq) {
  Routing r;
  r.logits = rule.router_in_fp32 ? Linear(x.to(at::kFloat), router.to(at::kFloat))
                                 : Linear(x, router).to(at::kFloat);
  at::Tensor probs = at::softmax(r.logits, -1);
  auto [top_p, top_i] = probs.topk(rule.top_k, -1, /*largest=*/true, /*sorted=*/true);
  r.experts = top_i;
  at::Tensor kept = at::ones_like(top_p, at::kBool);
  std::optional<double> beta = rule.odp ? std::optional<double>(rule.odp_beta) : rule.skip_beta;
  if (beta.has_value() && rule.top_k >= 2) {
    at::Tensor first = top_p.narrow(1, 0, 1);
    kept.narrow(1, 1, rule.top_k - 1)
        .copy_(top_p.narrow(1, 1, rule.top_k - 1).ge(first * *beta));
  }
  // Rule 2 of ODP applies to prefill only (MC-MoE): sequences of one token use rule 1 alone.
  if (rule.odp && importance.defined() && seq > 1) {
    const int64_t tokens = x.size(0);
    const int64_t batch = tokens / seq;
    const int64_t n_low = static_cast<int64_t>(std::floor(rule.tau_low * seq));
    const int64_t n_high = static_cast<int64_t>(std::floor(rule.tau_high * seq));
    if (n_low > 0 || n_high > 0) {
      // Rank tokens by importance within each sequence; ties by position (stable sort).
      at::Tensor order = std::get<1>(at::sort(importance.view({batch, seq}), /*stable=*/true,
                                              /*dim=*/1, /*descending=*/false));
      at::Tensor base = (at::arange(batch, order.options()) * seq).unsqueeze(1);
      at::Tensor flat_kept = kept;
      if (n_high > 0) {
        at::Tensor high = (order.narrow(1, seq - n_high, n_high) + base).reshape(-1);
        flat_kept.index_fill_(0, high, true);
      }
      if (n_low > 0) {
        at::Tensor low = (order.narrow(1, 0, n_low) + base).reshape(-1);
        flat_kept.index_fill_(0, low, false);
      }
    }
  }
  r.kept = kept;
  at::Tensor weights = top_p * kept.to(at::kFloat);
  if (rule.renormalize) {
    weights = weights / weights.sum(-1, /*keepdim=*/true).clamp_min(1e-20);
  }
  r.weights = weights.to(x.scalar_type());
  return r;
}

at::Tensor RunExpertsLocally(int layer, const MoeWeights& w, const at::Tensor& rows,
                             const std::vector<int64_t>& counts, const at::Tensor& token_index,
                             ForwardObserver* observer, LayerMemo* memo) {
  at::Tensor out = at::empty_like(rows);
  int64_t offset = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const int64_t c = counts[e];
    if (c == 0) continue;
    out.narrow(0, offset, c)
        .copy_(Mlp(w.experts[e], rows.narrow(0, offset, c), layer, LinearKind::kExpertGate,
                   static_cast<int>(e), observer, token_index.narrow(0, offset, c), memo));
    offset += c;
  }
  return out;
}

namespace {

// ODP's token importance [tokens]: the L1 norm of x times the attention the token receives (the
// column statistic, or its positional prior 1 / (S - t)). Undefined unless rule.odp.
at::Tensor OdpImportance(const RoutingRule& rule, const at::Tensor& x, int64_t seq,
                         const at::Tensor& column_statistic) {
  at::Tensor importance;
  if (rule.odp) {
    at::Tensor l1 = x.to(at::kFloat).abs().sum(-1);
    at::Tensor a;
    if (rule.positional_prior) {
      a = (1.0 / at::arange(seq, 0, -1, x.options().dtype(at::kFloat))).repeat({x.size(0) / seq});
    } else {
      a = column_statistic.reshape(-1);
    }
    importance = l1 * a;
  }
  return importance;
}

// Routes the tokens x [tokens, hidden] and adds the weighted outputs of their routed experts
// into `*out`.
void AddRoutedExperts(int layer, const MoeWeights& w, const RoutingRule& rule,
                      const at::Tensor& x, int64_t seq, const at::Tensor& column_statistic,
                      ForwardObserver* observer, ExpertExecutor* experts, LayerMemo* memo,
                      at::Tensor* out) {
  const int n = static_cast<int>(w.experts.size());
  if (observer != nullptr && observer->WantsLinearInputs(layer)) {
    Notify(observer, [&](ForwardObserver& o) {
      o.OnLinearInput({layer, LinearKind::kRouter, -1}, x, {});
    });
  }
  at::Tensor importance = OdpImportance(rule, x, seq, column_statistic);
  Routing routing = Route(w.router, x, rule, importance, seq);
  Notify(observer, [&](ForwardObserver& o) { o.OnRouterLogits(layer, routing.logits); });
  const int64_t k = routing.experts.size(1);
  at::Tensor flat = routing.experts.masked_fill(routing.kept.logical_not(), n).reshape(-1);
  at::Tensor order = std::get<1>(at::sort(flat, /*stable=*/true, /*dim=*/0,
                                          /*descending=*/false));
  at::Tensor bins = at::bincount(flat, {}, n + 1).to(at::kCPU);  // counts are read on the host
  std::vector<int64_t> counts(bins.data_ptr<int64_t>(), bins.data_ptr<int64_t>() + n);
  int64_t routed = 0;
  for (int64_t c : counts) routed += c;
  at::Tensor token_of = at::div(order, k, "floor").narrow(0, 0, routed);
  at::Tensor weight_of = routing.weights.reshape(-1).index_select(0, order).narrow(0, 0, routed);
  at::Tensor rows = x.index_select(0, token_of);
  at::Tensor y = experts != nullptr
                     ? experts->Run(layer, w, rows, counts, token_of, observer, memo)
                     : RunExpertsLocally(layer, w, rows, counts, token_of, observer, memo);
  int64_t offset = 0;
  for (int e = 0; e < n; ++e) {
    const int64_t c = counts[e];
    if (c == 0) continue;
    out->index_add_(0, token_of.narrow(0, offset, c),
                    y.narrow(0, offset, c) * weight_of.narrow(0, offset, c).unsqueeze(1));
    offset += c;
  }
}

// The shared expert's output for x, through its sigmoid gate when it has one.
at::Tensor SharedExpert(int layer, const MoeWeights& w, const at::Tensor& x,
                        ForwardObserver* observer, LayerMemo* memo) {
  at::Tensor shared = Mlp(w.shared, x, layer, LinearKind::kSharedGate, -1, observer, {}, memo);
  if (w.shared_expert_gate.defined()) {
    if (observer != nullptr && observer->WantsLinearInputs(layer)) {
      Notify(observer, [&](ForwardObserver& o) {
        o.OnLinearInput({layer, LinearKind::kSharedExpertGate, -1}, x, {});
      });
    }
    shared = at::sigmoid(Linear(x, w.shared_expert_gate)) * shared;
  }
  return shared;
}

}  // namespace

at::Tensor MoeBlock(const ModelConfig& config, int layer, const MoeWeights& w,
                    const RoutingRule& rule, const at::Tensor& x, int64_t seq,
                    const at::Tensor& column_statistic, ForwardObserver* observer,
                    ExpertExecutor* experts, LayerMemo* memo) {
  Notify(observer, [&](ForwardObserver& o) { o.OnMoeInput(layer, x); });
  at::Tensor out = at::zeros_like(x);
  const int n = static_cast<int>(w.experts.size());
  if (n > 0 && w.router.defined()) {
    AddRoutedExperts(layer, w, rule, x, seq, column_statistic, observer, experts, memo, &out);
  }
  if (w.shared.defined()) out = out + SharedExpert(layer, w, x, observer, memo);
  Notify(observer, [&](ForwardObserver& o) { o.OnMoeOutput(layer, out); });
  return out;
}

at::Tensor DecoderLayer(const ModelConfig& config, const LayerWeights& w, const at::Tensor& h,
                        const RopeTables& rope, ForwardObserver* observer,
                        ExpertExecutor* experts, LayerMemo* memo) {
  const int layer = w.layer;
  Notify(observer, [&](ForwardObserver& o) { o.OnLayerInput(layer, h); });
  const int64_t batch = h.size(0), seq = h.size(1), hidden = h.size(2);
  RoutingRule rule;
  if (w.moe.has_value()) rule = RoutingRuleFor(config, layer);
  const bool want_statistic = w.moe.has_value() && rule.odp && !rule.positional_prior;
  at::Tensor out, column_statistic;
  if (memo != nullptr && memo->after_attention.defined()) {
    out = memo->after_attention;
    column_statistic = memo->column_statistic;
  } else {
    AttentionOutput attention =
        Attention(config, layer, w.attention, RmsNorm(h, w.input_norm, config.rms_norm_eps), rope,
                  want_statistic, observer, memo);
    if (!attention.output.defined()) return {};  // the observer's Extent ends the layer here
    out = h + attention.output;
    column_statistic = attention.column_statistic;
    if (memo != nullptr && (memo->record & LayerMemo::kAfterAttention)) {
      memo->after_attention = out;
      memo->column_statistic = column_statistic;
    }
  }
  if (w.post_norm.defined()) {
    at::Tensor x =
        RmsNorm(out, w.post_norm, config.rms_norm_eps).reshape({batch * seq, hidden});
    at::Tensor y;
    if (w.moe.has_value()) {
      y = MoeBlock(config, layer, *w.moe, rule, x, seq, column_statistic, observer, experts, memo);
    } else {
      y = Mlp(w.dense, x, layer, LinearKind::kDenseGate, -1, observer, {}, memo);
    }
    out = out + y.view({batch, seq, hidden});
  }
  if (observer != nullptr && observer->Extent(layer) != LayerExtent::kAll) return {};
  Notify(observer, [&](ForwardObserver& o) { o.OnLayerOutput(layer, out); });
  return out;
}

}  // namespace moec::model
