// Names of the outputs stages write to the factor store ("<task fingerprint>/<name>"), shared by
// the stage that writes one and every reader (other stages, the export, the client's reports).
// docs/stages.md lists each stage's outputs.
#ifndef MOEC_COMMON_STAGE_OUTPUTS_H_
#define MOEC_COMMON_STAGE_OUTPUTS_H_

namespace moec::outputs {

// The layer chain of a per-layer stage on the data plane: the layer's output hidden states,
// whole or in chunks "hidden.cNNNNN" (dataplane/expert_parallel.h ChunkOutputName), and the
// {windows, chunk_windows} record describing the chunks.
inline constexpr char kHidden[] = "hidden";
inline constexpr char kWindows[] = "windows";
// JSON object of a layer task's per-linear results (quantization widths, pruned weights).
inline constexpr char kSummary[] = "summary";

// calibrate, per layer.
inline constexpr char kExpertTokens[] = "expert_tokens";
inline constexpr char kRoutingMass[] = "routing_mass";
inline constexpr char kSoftmaxMass[] = "softmax_mass";
inline constexpr char kP2P1Median[] = "p2_p1_median";
inline constexpr char kRouterEntropy[] = "router_entropy";
inline constexpr char kTokens[] = "tokens";

// quant_loss, per layer.
inline constexpr char kQuantLoss[] = "quant_loss";
inline constexpr char kLossBits[] = "bits";

// allocate_bits.
inline constexpr char kExpertBits[] = "expert_bits";
inline constexpr char kObjective[] = "objective";
inline constexpr char kAverageBits[] = "average_bits";

// expert_prune, per layer.
inline constexpr char kKeptExperts[] = "kept_experts";
inline constexpr char kPruneLosses[] = "losses";
inline constexpr char kPruneLoss[] = "loss";

// dynamic_skip.
inline constexpr char kSkipBeta[] = "skip_beta";

// expert_drop.
inline constexpr char kKeptMask[] = "kept_mask";
inline constexpr char kDropScores[] = "scores";

// layer_drop and block_drop.
inline constexpr char kDroppedMoeLayers[] = "dropped_moe_layers";
inline constexpr char kDroppedLayers[] = "dropped_layers";
inline constexpr char kSimilarity[] = "similarity";

// odp.
inline constexpr char kOdpBeta[] = "odp_beta";
inline constexpr char kOdpLoss[] = "odp_loss";
inline constexpr char kOdpSkipped[] = "skipped";
inline constexpr char kEnabledLayers[] = "enabled_layers";
inline constexpr char kOdpSettings[] = "settings";

// restructure: the model view (JSON).
inline constexpr char kView[] = "view";

// evaluate: the evaluation report (JSON).
inline constexpr char kReport[] = "report";

// noop.
inline constexpr char kNoop[] = "noop";

}  // namespace moec::outputs

#endif  // MOEC_COMMON_STAGE_OUTPUTS_H_
