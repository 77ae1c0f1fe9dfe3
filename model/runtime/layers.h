// The building blocks of the decoder layers of the supported MoE architectures, as plain
// functions on libtorch tensors: RMSNorm, rotary embeddings, grouped-query causal attention,
// SwiGLU MLPs, routing and the MoE block, with capture hooks (ForwardObserver). They work with
// and without autograd, so the forward (model/forward.h), the stages and the tiny-model trainer
// share one implementation. Semantics follow the Hugging Face modeling files; see
// docs/forward.md. Includes ATen: keep it out of widely included headers.
#ifndef MOEC_MODEL_RUNTIME_LAYERS_H_
#define MOEC_MODEL_RUNTIME_LAYERS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "model/config/config.h"

namespace moec::model {

// One linear module of a decoder layer, as capture hooks and stages name it.
enum class LinearKind {
  kQ,
  kK,
  kV,
  kO,
  kDenseGate,
  kDenseUp,
  kDenseDown,
  kRouter,
  kExpertGate,
  kExpertUp,
  kExpertDown,
  kSharedGate,
  kSharedUp,
  kSharedDown,
  kSharedExpertGate,  // Qwen2-MoE's sigmoid gate of the shared expert
};

struct LinearId {
  int layer = 0;
  LinearKind kind = LinearKind::kQ;
  int expert = -1;  // routed experts: index within the layer (after pruning), else -1
};

// Capture hooks. The forward calls them in execution order from the calling thread; tensors are
// views that are only valid during the call (copy what you keep). Default: capture nothing.
// How much of a decoder layer a pass runs (ForwardObserver::Extent). Capture passes compute only
// what the inputs they capture depend on: true-sequential GPTQ's first two groups need no MLP,
// the first not even an attention; its MLP groups need no down projection, the gate/up group not
// even the MLPs' products.
enum class LayerExtent {
  kAll,           // the whole layer
  kQkvInputs,     // up to the inputs of q/k/v (the normed layer input); no attention is computed
  kOInput,        // up to the input of o (the attention's output); no o, no MLP
  kGateUpInputs,  // every MLP (experts, shared, dense) stops once its gate/up input is reported
  kDownInputs,    // every MLP stops once its down projection's input is reported
};

// Whether a pass of this extent reaches the MLP (and the experts' exchanges between ranks).
inline bool ReachesMlp(LayerExtent e) {
  return e != LayerExtent::kQkvInputs && e != LayerExtent::kOInput;
}

class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // How far decoder layer `layer` runs. Short of kAll, DecoderLayer returns an undefined tensor
  // once the named inputs are reported, and OnLayerOutput is not called. With the MLP extents
  // every MLP returns zeros in place of its output, so the routed rows still make their round
  // trip between ranks (an expert-parallel gang stays in step) at the cost of no GEMM.
  virtual LayerExtent Extent(int layer) const { return LayerExtent::kAll; }
  // Residual stream entering / leaving decoder layer `layer`: [batch, seq, hidden].
  virtual void OnLayerInput(int layer, const at::Tensor& hidden) {}
  virtual void OnLayerOutput(int layer, const at::Tensor& hidden) {}
  // Whether OnLinearInput is wanted for the linears of `layer` (gathering them costs copies).
  virtual bool WantsLinearInputs(int layer) const { return false; }
  // The input of one linear, [tokens, in_features]. Routed experts: only the tokens routed to
  // that expert (after skipping / ODP), in token order; `token_index` gives their positions in
  // the flattened [batch * seq] token axis (undefined for the other linears).
  virtual void OnLinearInput(const LinearId& id, const at::Tensor& input,
                             const at::Tensor& token_index) {}
  // Router logits of a MoE layer, fp32 [batch * seq, experts] (before softmax).
  virtual void OnRouterLogits(int layer, const at::Tensor& logits) {}
  // Input (after post_attention_layernorm) and output (before the residual add) of the MLP
  // sub-block of a MoE layer, [batch * seq, hidden].
  virtual void OnMoeInput(int layer, const at::Tensor& input) {}
  virtual void OnMoeOutput(int layer, const at::Tensor& output) {}
};

// What one decoder layer computed on one chunk of its input, kept for a later pass of the same
// task to reuse instead of recomputing: true-sequential GPTQ runs a layer five times while its
// weights are quantized group by group, and each pass needs only what the last group changed.
// A pass records the parts named in `record` and uses every part already held. The caller
// records a part only once every weight it depends on is final, so a reused part equals what
// recomputing it would give, bit for bit. A reused part skips the captures of the linears
// inside it.
struct LayerMemo {
  enum Part : unsigned { kAttended = 1, kAfterAttention = 2, kMlpHidden = 4 };
  unsigned record = 0;
  at::Tensor attended;          // o's input [batch, seq, heads * head_dim]
  at::Tensor column_statistic;  // ODP's, when the layer computes it, with either attention part
  at::Tensor after_attention;   // the residual stream after the attention sub-block
  // down's input of every MLP the layer ran on this rank (dense, routed experts, including those
  // run for other ranks' rows, shared), in the order they ran. `next` is the reading position:
  // Rewind before each call of the layer.
  std::vector<at::Tensor> mlp_hidden;
  size_t next = 0;
  // Held MLP inputs whose shape did not match the call (recomputed instead): a caller's bug.
  int64_t misses = 0;
  void Rewind() { next = 0; }
  // The next held MLP input when it has `rows` x `width` elements; undefined when none is held
  // or the pass records them.
  at::Tensor TakeMlpHidden(int64_t rows, int64_t width);
  int64_t Bytes() const;
};

struct AttentionWeights {
  at::Tensor q, k, v, o;                       // [out, in]
  at::Tensor q_bias, k_bias, v_bias, o_bias;   // undefined when absent
  at::Tensor q_norm, k_norm;                   // undefined unless the architecture has qk-norm
};

// A SwiGLU MLP: down(silu(gate x) * up x).
struct MlpWeights {
  at::Tensor gate, up, down;
  bool defined() const { return gate.defined(); }
};

struct MoeWeights {
  at::Tensor router;                // [experts, hidden]; undefined when the layer has 0 experts
  std::vector<MlpWeights> experts;  // routed experts (after pruning)
  MlpWeights shared;                // DeepSeek shared_experts / Qwen2-MoE shared_expert
  at::Tensor shared_expert_gate;    // Qwen2-MoE [1, hidden]
};

// All weights of one decoder layer.
struct LayerWeights {
  int layer = 0;
  at::Tensor input_norm;
  AttentionWeights attention;
  at::Tensor post_norm;  // undefined when the MoE sub-block was dropped
  MlpWeights dense;      // dense layers
  std::optional<MoeWeights> moe;
  int64_t bytes = 0;  // sum of the tensors' bytes
};

// How a MoE layer turns router logits into expert weights (ALGORITHMS.md 0, 1.5, 3.6).
struct RoutingRule {
  int top_k = 2;
  bool renormalize = true;  // Mixtral always; others norm_topk_prob
  bool router_in_fp32 = false;  // DeepSeek's MoEGate computes the logits in fp32
  // Dynamic skipping (moec.skip_beta): a selected expert i >= 2 with p_i < beta * p_1 is dropped.
  std::optional<double> skip_beta;
  // Online dynamic pruning (moec.odp) when enabled at this layer.
  bool odp = false;
  double odp_beta = 0;
  double tau_low = 0;
  double tau_high = 0.02;
  bool positional_prior = false;
};

// The routing rule of MoE layer `layer` of `config`.
RoutingRule RoutingRuleFor(const ModelConfig& config, int layer);

// Rotary embedding tables for `seq` positions: cos and sin, fp32 [seq, head_dim] (HF
// rotate_half layout: the frequencies repeated twice).
struct RopeTables {
  at::Tensor cos, sin;
};
RopeTables MakeRopeTables(int64_t seq, int64_t head_dim, double theta);

// x * rsqrt(mean(x^2) + eps) computed in fp32, cast back to x's dtype, times weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// q * cos + rotate_half(q) * sin for q of shape [batch, heads, seq, head_dim].
at::Tensor ApplyRope(const at::Tensor& q, const RopeTables& rope);

// Result of the attention sub-block.
struct AttentionOutput {
  at::Tensor output;  // [batch, seq, hidden], after o_proj
  // ODP's column statistic a_t (ALGORITHMS.md 3.6, decision 6), fp32 [batch, seq]; only when
  // requested.
  at::Tensor column_statistic;
};

// Grouped-query causal self-attention of x [batch, seq, hidden] (already normalized).
AttentionOutput Attention(const ModelConfig& config, int layer, const AttentionWeights& w,
                          const at::Tensor& x, const RopeTables& rope, bool want_column_statistic,
                          ForwardObserver* observer, LayerMemo* memo = nullptr);

// SwiGLU MLP on x [tokens, hidden]. `kinds` names gate/up/down for the observer.
at::Tensor Mlp(const MlpWeights& w, const at::Tensor& x, int layer, LinearKind gate_kind,
               int expert, ForwardObserver* observer, const at::Tensor& token_index = {},
               LayerMemo* memo = nullptr);

// Routing decision for x's tokens.
struct Routing {
  at::Tensor logits;   // fp32 [tokens, experts]
  at::Tensor experts;  // int64 [tokens, k] selected experts, by descending probability
  at::Tensor weights;  // [tokens, k] in x's dtype; 0 where the expert was skipped
  at::Tensor kept;     // bool [tokens, k]
};

// Routes x [tokens, hidden]. `importance` (fp32 [tokens]) and `seq` are needed by ODP only: the
// token axis is [batch * seq] and ODP ranks tokens within each sequence.
Routing Route(const at::Tensor& router, const at::Tensor& x, const RoutingRule& rule,
              const at::Tensor& importance, int64_t seq);

// Runs the routed experts of a MoE block. The block hands it the routed rows sorted by expert:
// rows [m, hidden] (rows of x, stable-sorted by expert), counts [experts] (rows per expert, in
// order), token_index [m] (each row's position in x); it returns the experts' unweighted outputs
// for those rows, [m, hidden], in the same order. The default runs every expert here; the
// expert-parallel data plane (stages/expert_parallel.h) sends rows to the rank owning their
// expert. The block weights and sums the outputs itself, so the result does not depend on where
// the experts ran.
class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  virtual at::Tensor Run(int layer, const MoeWeights& w, const at::Tensor& rows,
                         const std::vector<int64_t>& counts, const at::Tensor& token_index,
                         ForwardObserver* observer, LayerMemo* memo) = 0;
};

// The default ExpertExecutor's work: Mlp of expert e on its rows, for every e.
at::Tensor RunExpertsLocally(int layer, const MoeWeights& w, const at::Tensor& rows,
                             const std::vector<int64_t>& counts, const at::Tensor& token_index,
                             ForwardObserver* observer, LayerMemo* memo = nullptr);

// The MoE sub-block on x [tokens, hidden] (normalized): routed experts weighted by the routing,
// plus shared experts. `column_statistic` ([batch, seq] fp32) is needed when rule.odp.
// `experts` runs the routed experts (null: here, with RunExpertsLocally).
at::Tensor MoeBlock(const ModelConfig& config, int layer, const MoeWeights& w,
                    const RoutingRule& rule, const at::Tensor& x, int64_t seq,
                    const at::Tensor& column_statistic, ForwardObserver* observer,
                    ExpertExecutor* experts = nullptr, LayerMemo* memo = nullptr);

// One decoder layer on the residual stream h [batch, seq, hidden]; undefined when the observer's
// Extent stops it early.
// `memo` (may be null) keeps and reuses parts of the computation between passes (LayerMemo).
at::Tensor DecoderLayer(const ModelConfig& config, const LayerWeights& w, const at::Tensor& h,
                        const RopeTables& rope, ForwardObserver* observer,
                        ExpertExecutor* experts = nullptr, LayerMemo* memo = nullptr);

}  // namespace moec::model

#endif  // MOEC_MODEL_RUNTIME_LAYERS_H_
