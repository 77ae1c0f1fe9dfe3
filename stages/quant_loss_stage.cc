#include "stages/quant_loss_stage.h"

#include <cmath>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/stage_outputs.h"
#include "common/status_macros.h"
#include "common/task_profile.h"
#include "dataplane/expert_parallel.h"
#include "dataplane/model_inputs.h"
#include "quant/quantizer.h"

namespace moec::stages {

using dataplane::AssignExperts;
using dataplane::CalibratedExpertTokens;
using dataplane::CalibrationTokens;
using dataplane::ChunkPlan;
using dataplane::GangComm;
using dataplane::GetTensor;
using dataplane::NeededStage;
using dataplane::OpenJobModel;
using dataplane::PutTensor;
using dataplane::ReadLayerInputWindows;
using dataplane::SkipRemovedLayer;

namespace {

// Captures the MoE block's input and output (and routing) of one batch.
class MoeCapture : public model::ForwardObserver {
 public:
  void OnMoeInput(int layer, const at::Tensor& x) override { input = x.clone(); }
  void OnMoeOutput(int layer, const at::Tensor& y) override { output = y.clone(); }
  at::Tensor input, output;
};

}  // namespace

at::Tensor NormalQuantize(const at::Tensor& w, int bits, int64_t group_size) {
  if (bits >= 2 && w.device().is_cpu()) {
    // Round-to-nearest with an asymmetric integer zero per group is quant::QuantizeGroups: one
    // pass of its kernel instead of a dozen tensor ops per group, the same arithmetic (the test
    // compares the bits with the tensor ops below).
    quant::QuantizerOptions o;
    o.bits = bits;
    o.sym = false;
    o.mse = false;
    absl::StatusOr<quant::QuantizedWeight> q =
        quant::QuantizeGroups(w, group_size > 0 ? group_size : -1, o);
    if (q.ok()) return q->weight.to(w.scalar_type());
  }
  const int64_t in = w.size(1);
  const int64_t block = group_size > 0 ? group_size : in;
  std::vector<at::Tensor> blocks;
  for (int64_t c = 0; c < in; c += block) {
    at::Tensor x = w.narrow(1, c, std::min(block, in - c)).to(at::kFloat);
    if (bits == 1) {
      at::Tensor scale = x.abs().mean(1, /*keepdim=*/true);
      at::Tensor sign = at::where(x >= 0, at::ones_like(x), -at::ones_like(x));
      blocks.push_back(sign * scale);
      continue;
    }
    const double maxq = std::pow(2.0, bits) - 1;
    at::Tensor xmin = std::get<0>(x.min(1, true)).clamp_max(0);
    at::Tensor xmax = std::get<0>(x.max(1, true)).clamp_min(0);
    at::Tensor both_zero = (xmin == 0).logical_and(xmax == 0);
    xmin = at::where(both_zero, -at::ones_like(xmin), xmin);
    xmax = at::where(both_zero, at::ones_like(xmax), xmax);
    at::Tensor s = (xmax - xmin) / maxq;
    at::Tensor z = at::round(-xmin / s);
    at::Tensor q = at::clamp(at::round(x / s) + z, 0, maxq);
    blocks.push_back(s * (q - z));
  }
  return (blocks.size() == 1 ? blocks[0] : at::cat(blocks, 1)).to(w.scalar_type());
}

namespace {

// The MoE input of a chunk is all this stage needs: the routed experts are not run.
struct NoExperts : model::ExpertExecutor {
  at::Tensor Run(int, const model::MoeWeights&, const at::Tensor& rows,
                 const std::vector<int64_t>&, const at::Tensor&, model::ForwardObserver*,
                 model::LayerMemo*) override {
    return at::zeros_like(rows);
  }
};

// One quant_loss task: the layer, this rank's chunks and the experts' owners.
struct LossTask {
  LossTask(StageContext& ctx, comm::Communicator& comm, model::ModelRunner& runner)
      : ctx(ctx), comm(comm), runner(runner) {}

  StageContext& ctx;
  comm::Communicator& comm;
  model::ModelRunner& runner;
  std::string calibrate;
  int layer = 0;
  int experts = 0;
  ChunkPlan plan;
  at::Tensor tokens;  // the calibration windows' tokens (layer 0)
  std::vector<int> owner;
};

// The windows of the calibration set: their tokens at layer 0, else calibrate's record of them.
absl::Status PlanWindows(LossTask& t) {
  if (t.layer == 0) {
    MOEC_ASSIGN_OR_RETURN(t.tokens, CalibrationTokens(t.ctx));
    t.plan.windows = t.tokens.size(0);
    return absl::OkStatus();
  }
  MOEC_ASSIGN_OR_RETURN(std::string prefix, t.ctx.InputKey(t.calibrate, t.layer - 1, ""));
  absl::StatusOr<at::Tensor> w = GetTensor(t.ctx, prefix + outputs::kWindows);
  if (w.ok()) {
    t.plan.windows = (*w)[0].item<int64_t>();
  } else {
    MOEC_ASSIGN_OR_RETURN(at::Tensor whole, GetTensor(t.ctx, prefix + outputs::kHidden));
    t.plan.windows = whole.size(0);
  }
  return absl::OkStatus();
}

// Expert -> its RTN copies, one per width.
using QuantizedExperts = std::map<int, std::vector<model::MlpWeights>>;

// MC-MoE's RTN copies of the experts this rank owns, per width.
QuantizedExperts QuantizeOwnExperts(const LossTask& t, const model::MoeWeights& moe,
                                    const std::vector<int>& bits, int64_t group_size) {
  profile::ScopedPhase phase(profile::Phase::kSolve);
  QuantizedExperts quantized;
  for (int e = 0; e < t.experts; ++e) {
    if (t.owner[e] != t.comm.rank()) continue;
    for (int b : bits) {
      const model::MlpWeights& o = moe.experts[e];
      quantized[e].push_back({NormalQuantize(o.gate, b, group_size),
                              NormalQuantize(o.up, b, group_size),
                              NormalQuantize(o.down, b, group_size)});
    }
  }
  return quantized;
}

// Rows routed to each expert with their combined routing weight, grouped by owner rank and
// expert, in token order within an expert; `send` counts them per owner.
struct RoutedRows {
  std::vector<at::Tensor> xs, ws, ids;
  std::vector<int64_t> send;
};

// The routed rows of `chunk` (none when this rank has no chunk this round).
absl::StatusOr<RoutedRows> RouteChunk(LossTask& t, const model::LayerWeights& weights,
                                      const model::RoutingRule& rule, int64_t chunk) {
  RoutedRows out;
  out.send.assign(t.comm.size(), 0);
  if (chunk < 0) return out;
  MOEC_ASSIGN_OR_RETURN(at::Tensor h,
                        ReadLayerInputWindows(t.ctx, t.runner, t.tokens, t.calibrate,
                                              t.plan.First(chunk), t.plan.Count(chunk)));
  MoeCapture capture;
  NoExperts no_experts;
  t.runner.RunLayer(weights, h, &capture, &no_experts);
  model::Routing r =
      model::Route(weights.moe->router, capture.input, rule, at::Tensor(), h.size(1));
  at::Tensor selected = r.experts.masked_fill(r.kept.logical_not(), -1);
  for (int o = 0; o < t.comm.size(); ++o) {
    for (int e = 0; e < t.experts; ++e) {
      if (t.owner[e] != o) continue;
      at::Tensor slot = (selected == e);
      at::Tensor rows = slot.any(1).nonzero().squeeze(1);
      if (rows.numel() == 0) continue;
      out.xs.push_back(capture.input.index_select(0, rows));
      out.ws.push_back((r.weights.index_select(0, rows) * slot.index_select(0, rows))
                           .sum(1, /*keepdim=*/true)
                           .to(at::kFloat));
      out.ids.push_back(at::full({rows.numel()}, int64_t{e}, at::kLong));
      out.send[o] += rows.numel();
    }
  }
  return out;
}

// The rows this rank owns: inputs, routing weights and experts; `got` counts them per source.
struct OwnedRows {
  at::Tensor x, w, e;
  std::vector<int64_t> got;
};

absl::StatusOr<OwnedRows> ExchangeRows(LossTask& t, const RoutedRows& routed) {
  auto cat = [](const std::vector<at::Tensor>& v, at::Tensor empty) {
    return v.empty() ? empty : at::cat(v, 0);
  };
  const std::vector<int64_t>& send = routed.send;
  OwnedRows in;
  // Rows and weights on the task's device; the expert ids stay on the host (AddLosses reads them).
  const at::TensorOptions on_device = at::TensorOptions(t.runner.device());
  MOEC_ASSIGN_OR_RETURN(
      in.x, t.comm.AllToAll(cat(routed.xs, at::empty({0, t.runner.config().hidden_size},
                                                     on_device.dtype(t.runner.dtype()))),
                            send, &in.got));
  MOEC_ASSIGN_OR_RETURN(
      in.w, t.comm.AllToAll(cat(routed.ws, at::empty({0, 1}, on_device.dtype(at::kFloat))), send,
                            nullptr));
  MOEC_ASSIGN_OR_RETURN(in.e,
                        t.comm.AllToAll(cat(routed.ids, at::empty({0}, at::kLong)), send, nullptr));
  return in;
}

// Owner: each source is one chunk, in chunk order; per expert, Z - Ẑ is non-zero on its rows
// only and equals w (E_e(x) - Ê_e(x)) there (ALGORITHMS.md 3.1; the test recomputes blocks).
absl::Status AddLosses(const LossTask& t, const model::MoeWeights& moe,
                       const QuantizedExperts& quantized, const OwnedRows& in, at::Tensor* loss) {
  profile::ScopedPhase phase(profile::Phase::kStatistics);  // the experts' outputs at each width
  const int64_t nbits = loss->size(1);
  const int64_t* id = in.e.data_ptr<int64_t>();
  int64_t pos = 0;
  for (int s = 0; s < t.comm.size(); ++s) {
    const int64_t end = pos + in.got[s];
    while (pos < end) {
      const int64_t e = id[pos];
      int64_t run = 1;
      while (pos + run < end && id[pos + run] == e) ++run;
      if (e < 0 || e >= t.experts || t.owner[e] != t.comm.rank()) {
        return absl::InternalError(absl::StrCat("quant_loss: rows of expert ", e, " off its owner"));
      }
      at::Tensor x = in.x.narrow(0, pos, run), w = in.w.narrow(0, pos, run).to(x.scalar_type());
      at::Tensor y = model::Mlp(moe.experts[e], x, t.layer, model::LinearKind::kExpertGate,
                                static_cast<int>(e), nullptr);
      for (int64_t bi = 0; bi < nbits; ++bi) {
        at::Tensor yq = model::Mlp(quantized.at(static_cast<int>(e))[bi], x, t.layer,
                                   model::LinearKind::kExpertGate, static_cast<int>(e), nullptr);
        (*loss)[e][bi] += ((y - yq) * w).to(at::kDouble).norm().item<double>();
      }
      pos += run;
    }
  }
  return absl::OkStatus();
}

// Each expert's row of losses from its owner, into `loss` on rank 0.
absl::Status GatherLosses(LossTask& t, at::Tensor* loss) {
  const int64_t nbits = loss->size(1);
  std::vector<at::Tensor> mine;
  for (int e = 0; e < t.experts; ++e) {
    if (t.owner[e] == t.comm.rank()) {
      mine.push_back(at::cat({at::full({1}, static_cast<double>(e), at::kDouble), (*loss)[e]}));
    }
  }
  MOEC_ASSIGN_OR_RETURN(std::vector<at::Tensor> all,
                        t.comm.AllGather(mine.empty() ? at::empty({0, 1 + nbits}, at::kDouble)
                                                      : at::stack(mine)));
  if (t.comm.rank() != 0) return absl::OkStatus();
  for (const at::Tensor& part : all) {
    for (int64_t i = 0; i < part.size(0); ++i) {
      (*loss)[static_cast<int64_t>(part[i][0].item<double>())] = part[i].narrow(0, 1, nbits);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status QuantLossStage::Run(StageContext& ctx) {
  std::unique_ptr<comm::Communicator> single;
  comm::Communicator& comm = GangComm(ctx, &single);
  const int layer = ctx.task->layer();
  MOEC_ASSIGN_OR_RETURN(std::string calibrate, NeededStage(ctx, "calibrate"));
  MOEC_ASSIGN_OR_RETURN(std::unique_ptr<model::ModelRunner> runner, OpenJobModel(ctx));
  const model::ModelConfig& config = runner->config();
  if (SkipRemovedLayer(ctx, config)) return absl::OkStatus();
  if (!config.IsMoeLayer(layer) || config.NumRoutedExperts(layer) == 0) {
    ctx.progress(1.0, "no routed experts");
    return absl::OkStatus();
  }
  std::vector<int> bits;
  for (int64_t b : ctx.stage->IntList("bits")) bits.push_back(static_cast<int>(b));
  const int64_t nbits = static_cast<int64_t>(bits.size());
  const int64_t group_size = ctx.stage->Int("group_size");
  LossTask t(ctx, comm, *runner);
  t.calibrate = calibrate;
  t.layer = layer;
  t.experts = config.NumRoutedExperts(layer);

  // Chunks of `batch_size` windows (the loss sums per-batch norms), dealt round-robin.
  t.plan.rank = comm.rank();
  t.plan.ranks = comm.size();
  t.plan.chunk_windows = ctx.stage->Int("batch_size");
  MOEC_RETURN_IF_ERROR(PlanWindows(t));
  std::vector<int64_t> counts = CalibratedExpertTokens(ctx, layer, t.experts);
  if (counts.empty()) counts.assign(t.experts, 1);
  t.owner = AssignExperts(counts, comm.size());
  MOEC_ASSIGN_OR_RETURN(model::LayerWeights weights,
                        runner->LoadLayer(layer, [&](int e) { return t.owner[e] == comm.rank(); }));
  const model::RoutingRule rule = model::RoutingRuleFor(config, layer);
  const QuantizedExperts quantized = QuantizeOwnExperts(t, *weights.moe, bits, group_size);
  at::Tensor loss = at::zeros({t.experts, nbits}, at::kDouble);
  for (int64_t round = 0; round < t.plan.rounds(); ++round) {
    if (ctx.IsCancelled()) return absl::CancelledError("quant_loss cancelled");
    MOEC_ASSIGN_OR_RETURN(RoutedRows routed, RouteChunk(t, weights, rule, t.plan.ChunkOf(round)));
    MOEC_ASSIGN_OR_RETURN(OwnedRows in, ExchangeRows(t, routed));
    MOEC_RETURN_IF_ERROR(AddLosses(t, *weights.moe, quantized, in, &loss));
    ctx.progress(static_cast<double>(round + 1) / t.plan.rounds(),
                 absl::StrCat("layer ", layer, ": round ", round + 1, "/", t.plan.rounds()));
  }
  MOEC_RETURN_IF_ERROR(GatherLosses(t, &loss));
  if (comm.rank() != 0) return absl::OkStatus();
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kQuantLoss, loss));
  std::vector<int64_t> bits64(bits.begin(), bits.end());
  MOEC_RETURN_IF_ERROR(PutTensor(ctx, outputs::kLossBits, at::tensor(bits64, at::kLong)));
  return absl::OkStatus();
}

}  // namespace moec::stages
