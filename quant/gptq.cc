// The GPTQ driver (quant/gptq.h): options and input checks, the working copy of W, the blocked
// solve over the panel kernel (gptq_panel.cc) with lazy batch updates, and un-permuting. The
// Hessian preparation is in gptq_prepare.cc.
#include "quant/gptq.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/task_profile.h"
#include "quant/gptq_internal.h"
#include "quant/parallel.h"

namespace moec::quant {
namespace {

using internal::Clock;
using internal::PanelScratch;
using internal::SolveContext;

// Rows per thread chunk in the per-row parameter fits.
constexpr int64_t kMinRowsPerChunk = 16;
// Bytes of weights per row chunk of the blocked solve (GptqSolve::RowChunk).
constexpr int64_t kChunkBytes = int64_t{16} << 20;

absl::Status CheckPreparedInputs(const at::Tensor& w_in, const GptqHessian& hess,
                                 const GptqOptions& o) {
  if (absl::Status s = internal::ValidateGptqOptions(o); !s.ok()) return s;
  if (!w_in.defined() || w_in.dim() != 2 || !w_in.is_floating_point()) {
    return absl::InvalidArgumentError("weight must be a 2-D floating-point tensor [out, in]");
  }
  const int64_t in = w_in.size(1);
  if (in == 0) return absl::InvalidArgumentError("weight has no columns");
  if (!hess.u.defined() || hess.u.size(0) != in) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prepared Hessian is for ", hess.u.defined() ? hess.u.size(0) : 0,
        " input features, the weight has ", in));
  }
  if (hess.actorder != o.actorder || hess.percdamp != o.percdamp ||
      hess.identity_fallback_option != o.identity_fallback || hess.method != o.inverse_factor) {
    return absl::InvalidArgumentError(
        "prepared Hessian was made with other actorder / percdamp / identity_fallback / "
        "inverse_factor options");
  }
  return absl::OkStatus();
}

// Copies row x [in] to dst in quantization order (pp, or the same order when null), then zeroes
// the columns that dead_q (in quantization order; may be null) marks; false when x has a
// non-finite value. Three simple loops: the check and the zeroing vectorize, and the gather of a
// row that stays in L1 is bound by its loads.
bool CopyRowInOrder(const float* x, int64_t in, const int64_t* pp, const bool* dead_q, float* dst) {
  float acc = 0.0f;  // x * 0 is 0 for finite x, NaN otherwise
  for (int64_t j = 0; j < in; ++j) acc += x[j] * 0.0f;
  if (pp != nullptr) {
    for (int64_t j = 0; j < in; ++j) dst[j] = x[pp[j]];
  } else {
    std::copy(x, x + in, dst);
  }
  if (dead_q != nullptr) {
    for (int64_t j = 0; j < in; ++j) dst[j] = dead_q[j] ? 0.0f : dst[j];
  }
  return acc == 0.0f;
}

// One GptqQuantize call with a prepared Hessian (inputs checked); the steps run in the order
// PrepareWeights, SolveBlocks, Finish.
class GptqSolve {
 public:
  GptqSolve(const at::Tensor& w_in, const GptqHessian& hess, const GptqOptions& o);

  // 1. Whole-row parameters on the original W (reference: before dead columns are zeroed).
  // 2. The working copy: dead columns zeroed (the prepared Hessian's diagonal is 1 there),
  //    columns in quantization order, values checked finite; one pass.
  // 3. Static groups: parameters of consecutive original columns of the zeroed W.
  // InvalidArgument when W has non-finite values.
  absl::Status PrepareWeights();
  // 7. Blocked solve.
  void SolveBlocks();
  int64_t RowChunk() const;
  // 8. Undo the permutation; g_idx. Returns the result.
  GptqResult Finish();

  GptqResult::Timing& seconds() { return result_.seconds; }

 private:
  // Step 3 for row x: its dead columns zeroed (in `row`) when there are any; into stp [groups, 2].
  void FitStaticGroups(const float* x, const bool* dead, std::vector<float>& row,
                       float* stp) const;
  SolveContext Context();
  // Back to the original column order: out[:, c] = permuted[:, invperm[c]].
  void Unpermute(const at::Tensor& invperm);

  const GptqOptions& o_;
  const QuantizerOptions& qo_;
  const GptqHessian& hess_;
  const int64_t out_, in_, g_, groups_;
  const int threads_;
  const bool static_groups_;
  const bool zero_dead_;
  const at::Tensor src_;        // fp32 W (no copy when already fp32)
  const at::Tensor dead_mask_;  // bool [in], original order
  const at::Tensor perm_;       // int64 [in]
  at::Tensor row_params_, static_params_, w_;  // steps 1-3
  at::Tensor codes_, scales_, zeros_;          // step 7
  std::vector<double> column_loss_;
  GptqResult result_;
};

GptqSolve::GptqSolve(const at::Tensor& w_in, const GptqHessian& hess, const GptqOptions& o)
    : o_(o),
      qo_(o.quantizer),
      hess_(hess),
      out_(w_in.size(0)),
      in_(w_in.size(1)),
      g_(o.groupsize),
      groups_(g_ > 0 ? (in_ + g_ - 1) / g_ : 1),
      threads_(o.threads > 0 ? o.threads : internal::HardwareThreads()),
      static_groups_(o.static_groups && g_ > 0),
      zero_dead_(hess.dead_columns > 0 && !hess.identity_fallback),
      src_(w_in.to(at::kFloat).contiguous()),
      dead_mask_(hess.dead.to(at::kBool).contiguous()),
      perm_(hess.perm.contiguous()) {
  result_.dead_columns = hess.dead_columns;
  result_.identity_fallback = hess.identity_fallback;
}

absl::Status GptqSolve::PrepareWeights() {
  const float* sp = src_.data_ptr<float>();
  const bool* dead = dead_mask_.data_ptr<bool>();
  const int64_t* pp = o_.actorder ? perm_.data_ptr<int64_t>() : nullptr;
  // The dead columns in quantization order.
  const at::Tensor dead_q = o_.actorder ? dead_mask_.index_select(0, perm_) : dead_mask_;
  const bool* dq = zero_dead_ ? dead_q.data_ptr<bool>() : nullptr;
  row_params_ = at::empty({out_, 2}, at::kFloat);
  static_params_ = at::empty({static_groups_ ? out_ : 0, groups_, 2}, at::kFloat);
  w_ = at::empty({out_, in_}, at::kFloat);
  float* rp = row_params_.data_ptr<float>();
  float* stp = static_params_.data_ptr<float>();
  float* wp = w_.data_ptr<float>();
  std::vector<char> bad(threads_, 0);
  internal::ParallelFor(out_, kMinRowsPerChunk, threads_, [&](int64_t b, int64_t e, int chunk) {
    std::vector<float> row(static_groups_ && zero_dead_ ? in_ : 0);
    bool ok = true;
    for (int64_t r = b; r < e; ++r) {
      const float* x = sp + r * in_;
      if (g_ <= 0) {
        const RowParams p = FitRow(x, in_, qo_);
        rp[2 * r] = p.scale;
        rp[2 * r + 1] = p.zero;
      }
      ok &= CopyRowInOrder(x, in_, pp, dq, wp + r * in_);
      if (static_groups_) FitStaticGroups(x, dead, row, stp + 2 * (r * groups_));
    }
    if (!ok) bad[chunk] = 1;
  });
  for (char b : bad) {
    if (b) return absl::InvalidArgumentError("weight has non-finite values");
  }
  return absl::OkStatus();
}

void GptqSolve::FitStaticGroups(const float* x, const bool* dead, std::vector<float>& row,
                                float* stp) const {
  if (zero_dead_) {
    for (int64_t col = 0; col < in_; ++col) row[col] = dead[col] ? 0.0f : x[col];
    x = row.data();
  }
  for (int64_t gi = 0; gi < groups_; ++gi) {
    const int64_t c0 = gi * g_, c1 = std::min(in_, c0 + g_);
    const RowParams p = FitRow(x + c0, c1 - c0, qo_);
    stp[2 * gi] = p.scale;
    stp[2 * gi + 1] = p.zero;
  }
}

SolveContext GptqSolve::Context() {
  SolveContext c;
  c.qopt = &qo_;
  c.in = in_;
  c.groupsize = g_;
  c.groups = groups_;
  c.static_groups = static_groups_;
  c.feedback = !(o_.mcmoe_blockwise_feedback && qo_.bits <= 3);
  c.reference_group_fit = o_.reference_group_fit;
  c.u = hess_.u.data_ptr<float>();
  c.perm = perm_.data_ptr<int64_t>();
  c.row_params = row_params_.data_ptr<float>();
  c.static_params = static_groups_ ? static_params_.data_ptr<float>() : nullptr;
  c.w = w_.data_ptr<float>();
  c.codes = codes_.data_ptr<uint8_t>();
  c.scales = scales_.data_ptr<float>();
  c.zeros = zeros_.data_ptr<float>();
  return c;
}

void GptqSolve::SolveBlocks() {
  codes_ = at::empty({out_, in_}, at::kByte);
  scales_ = at::empty({out_, groups_}, at::kFloat);
  zeros_ = at::empty({out_, groups_}, at::kFloat);
  if (g_ <= 0) {
    scales_.select(1, 0).copy_(row_params_.select(1, 0));
    zeros_.select(1, 0).copy_(row_params_.select(1, 1));
  }
  const SolveContext c = Context();
  const at::Tensor& u = hess_.u;
  const int64_t bs = std::min(o_.blocksize, in_);
  std::vector<PanelScratch> scratch;
  scratch.reserve(threads_);
  for (int i = 0; i < threads_; ++i) scratch.emplace_back(bs, g_);
  column_loss_.assign(in_, 0.0);
  // Rows are independent: the solve runs on chunks of rows one after another, so that a chunk's
  // weights stay in cache through its lazy updates instead of every update streaming the whole
  // matrix from memory (a rank-128 update reads and writes each weight it touches once).
  const int64_t chunk_rows = RowChunk();
  at::Tensor err_buf = at::empty({std::min(out_, chunk_rows), bs}, at::kFloat);
  for (int64_t r0 = 0; r0 < out_; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, out_ - r0);
    for (int64_t i1 = 0; i1 < in_; i1 += bs) {
      const int64_t i2 = std::min(in_, i1 + bs), nb = i2 - i1;
      at::Tensor err = err_buf.narrow(0, 0, rows);
      if (nb != bs) err = at::empty({rows, nb}, at::kFloat);
      for (PanelScratch& s : scratch) std::fill(s.loss.begin(), s.loss.end(), 0.0);
      Clock::time_point t0 = Clock::now();
      internal::SolveBlockPanels(c, r0, r0 + rows, i1, i2, err.data_ptr<float>(), scratch,
                                 threads_);
      for (const PanelScratch& s : scratch) {
        for (int64_t j = 0; j < nb; ++j) column_loss_[i1 + j] += s.loss[j];
      }
      result_.seconds.blocks += internal::Since(t0);
      t0 = Clock::now();
      if (i2 < in_) {
        // Lazy batch update: W[rows, i2:] -= Err @ U[i1:i2, i2:].
        at::Tensor rest = w_.narrow(0, r0, rows).narrow(1, i2, in_ - i2);
        rest.addmm_(err, u.narrow(0, i1, nb).narrow(1, i2, in_ - i2), /*beta=*/1.0,
                    /*alpha=*/-1.0);
      }
      result_.seconds.lazy_update += internal::Since(t0);
    }
  }
}

// Rows per chunk of SolveBlocks: about kChunkBytes of weights, at least two panels per thread,
// a whole number of panels.
int64_t GptqSolve::RowChunk() const {
  const int64_t bytes = o_.row_chunk_bytes > 0 ? o_.row_chunk_bytes : kChunkBytes;
  const int64_t rows = std::max<int64_t>(bytes / (in_ * 4), 2 * internal::kPanel * threads_);
  return (rows + internal::kPanel - 1) / internal::kPanel * internal::kPanel;
}

void GptqSolve::Unpermute(const at::Tensor& invperm) {
  const int64_t in = in_;
  const int64_t* ip = invperm.data_ptr<int64_t>();
  float* wp = w_.data_ptr<float>();
  uint8_t* cp = codes_.data_ptr<uint8_t>();
  internal::ParallelFor(out_, kMinRowsPerChunk, threads_, [&](int64_t b, int64_t e, int) {
    // In place, one row at a time through a copy that stays in L1: no second [out, in] array,
    // whose fresh pages cost more than the gather (finish on 14336 x 4096: 0.10 -> 0.04 s).
    std::vector<float> wrow(in);
    std::vector<uint8_t> crow(in);
    for (int64_t r = b; r < e; ++r) {
      float* w = wp + r * in;
      std::copy(w, w + in, wrow.data());
      for (int64_t col = 0; col < in; ++col) w[col] = wrow[ip[col]];
      uint8_t* c = cp + r * in;
      std::copy(c, c + in, crow.data());
      for (int64_t col = 0; col < in; ++col) c[col] = crow[ip[col]];
    }
  });
}

GptqResult GptqSolve::Finish() {
  const Clock::time_point t0 = Clock::now();
  if (static_groups_) {
    scales_.copy_(static_params_.select(2, 0));
    zeros_.copy_(static_params_.select(2, 1));
  }
  const at::Tensor invperm = at::argsort(perm_);
  const at::Tensor g_idx = internal::GroupIndex(o_, invperm);
  at::Tensor loss_perm = at::empty({in_}, at::kDouble);
  std::copy(column_loss_.begin(), column_loss_.end(), loss_perm.data_ptr<double>());
  if (o_.actorder) {
    Unpermute(invperm);
    result_.column_loss = loss_perm.index_select(0, invperm).to(at::kFloat);
  } else {
    result_.column_loss = loss_perm.to(at::kFloat);
  }
  result_.weight = w_;
  result_.q = codes_;
  result_.total_loss = 0;
  for (double l : column_loss_) result_.total_loss += l;
  result_.scales = scales_;
  result_.zeros = zeros_;
  result_.g_idx = g_idx;
  result_.perm = perm_;
  result_.seconds.finish = internal::Since(t0);
  return std::move(result_);
}

}  // namespace

namespace internal {

at::Tensor GroupIndex(const GptqOptions& o, const at::Tensor& invperm) {
  const int64_t in = invperm.size(0);
  const at::TensorOptions opt = invperm.options();
  if (o.groupsize <= 0) return at::zeros({in}, opt.dtype(at::kInt));
  if (o.actorder && !o.static_groups) {
    // Groups were formed in quantization order: g_idx[perm[j]] = j / g.
    return invperm.div(o.groupsize, "floor").to(at::kInt);
  }
  return at::arange(in, opt.dtype(at::kLong)).div(o.groupsize, "floor").to(at::kInt);
}

absl::Status ValidateGptqOptions(const GptqOptions& o) {
  if (absl::Status s = ValidateQuantizerOptions(o.quantizer); !s.ok()) return s;
  if (o.blocksize < 1) {
    return absl::InvalidArgumentError(absl::StrCat("blocksize must be >= 1, got ", o.blocksize));
  }
  if (!(o.percdamp >= 0) || !std::isfinite(o.percdamp)) {
    return absl::InvalidArgumentError(absl::StrCat("percdamp must be >= 0, got ", o.percdamp));
  }
  if (o.groupsize == 0 || o.groupsize < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("groupsize must be -1 or positive, got ", o.groupsize));
  }
  return absl::OkStatus();
}

}  // namespace internal

GptqFlops CountGptqFlops(int64_t out, int64_t in, int64_t blocksize, InverseFactorMethod method) {
  GptqFlops f;
  const double o = static_cast<double>(out);
  for (int64_t i1 = 0; i1 < in; i1 += blocksize) {
    const int64_t i2 = std::min(in, i1 + blocksize);
    const double nb = static_cast<double>(i2 - i1);
    f.lazy_update += 2.0 * o * nb * static_cast<double>(in - i2);
    f.intra_block += o * nb * (nb - 1.0);
  }
  const double n = static_cast<double>(in);
  // LAPACK nominal counts: potrf n^3/3, trtri n^3/3, potri (trtri + lauum) 2n^3/3.
  f.factorization = (method == InverseFactorMethod::kReference ? 4.0 / 3.0 : 2.0 / 3.0) * n * n * n;
  return f;
}

absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w, const at::Tensor& h,
                                        const GptqOptions& o) {
  if (absl::Status s = internal::ValidateGptqOptions(o); !s.ok()) return s;
  if (!w.defined() || w.dim() != 2 || !w.is_floating_point() || w.size(1) == 0) {
    return absl::InvalidArgumentError(
        "weight must be a 2-D floating-point tensor [out, in] with in > 0");
  }
  const int64_t in = w.size(1);
  if (!h.defined() || h.dim() != 2 || h.size(0) != in || h.size(1) != in) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hessian must be a floating-point [", in, ", ", in, "] tensor"));
  }
  absl::StatusOr<GptqHessian> prepared = PrepareGptqHessian(h, o);
  if (!prepared.ok()) return prepared.status();
  absl::StatusOr<GptqResult> r = GptqQuantize(w, *prepared, o);
  if (r.ok()) r->seconds.factorization = prepared->seconds;
  return r;
}

absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w_in, const GptqHessian& hess,
                                        const GptqOptions& o) {
  if (absl::Status s = CheckPreparedInputs(w_in, hess, o); !s.ok()) return s;
  profile::ScopedPhase phase(profile::Phase::kSolve);
  const GptqFlops flops = CountGptqFlops(w_in.size(0), w_in.size(1), o.blocksize);
  profile::AddFlops(flops.lazy_update + flops.intra_block);
  if (internal::UseAtenSolve(o, w_in.device())) {
    return internal::GptqQuantizeOnDevice(w_in, hess, o);
  }
  if (!hess.u.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("weight on the CPU, prepared Hessian on ",
                                                   hess.u.device().str()));
  }
  const Clock::time_point t0 = Clock::now();
  GptqSolve solve(w_in, hess, o);
  if (absl::Status s = solve.PrepareWeights(); !s.ok()) return s;
  solve.seconds().prepare = internal::Since(t0);
  solve.SolveBlocks();
  return solve.Finish();
}

}  // namespace moec::quant
