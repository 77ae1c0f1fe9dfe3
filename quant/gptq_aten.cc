// GPTQ as device-generic ATen code (quant/gptq.h, GptqEngine::kAten): the solve of gptq.cc,
// gptq_prepare.cc and gptq_panel.cc written as tensor operations over all rows at once, so that
// it runs wherever its tensors are. A worker on a GPU uses it (the Hessian, U, the working copy
// of W and the lazy updates stay on the device; the caller copies the codes back once). On the
// CPU the panel kernel is faster, and it is this path's test oracle: every operation here is the
// same fp32 operation, in the same order, as the kernel's scalar sequence per row (the range
// search's pow and the loss sums may differ in the last bit).
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/device_quantizer.h"
#include "quant/gptq.h"
#include "quant/gptq_internal.h"

namespace moec::quant::internal {
namespace {

// One GptqQuantize call on the device of its tensors (the steps of GptqSolve in gptq.cc).
class AtenSolve {
 public:
  AtenSolve(const at::Tensor& w_in, const GptqHessian& hess, const GptqOptions& o)
      : o_(o), qo_(o.quantizer), hess_(hess), out_(w_in.size(0)), in_(w_in.size(1)),
        g_(o.groupsize), groups_(g_ > 0 ? (in_ + g_ - 1) / g_ : 1),
        static_groups_(o.static_groups && g_ > 0), dynamic_groups_(g_ > 0 && !static_groups_),
        feedback_(!(o.mcmoe_blockwise_feedback && o.quantizer.bits <= 3)),
        src_(w_in.to(at::kFloat).contiguous()), f_(src_.options()) {
    result_.dead_columns = hess.dead_columns;
    result_.identity_fallback = hess.identity_fallback;
  }

  absl::Status PrepareWeights() {
    if (!at::isfinite(src_).all().item<bool>()) {
      return absl::InvalidArgumentError("weight has non-finite values");
    }
    scales_ = at::ones({out_, groups_}, f_);
    zeros_ = at::zeros({out_, groups_}, f_);
    if (g_ <= 0) {
      auto [s, z] = FitRowsOnDevice(src_, qo_);
      scales_.select(1, 0).copy_(s);
      zeros_.select(1, 0).copy_(z);
    }
    const bool zero_dead = hess_.dead_columns > 0 && !hess_.identity_fallback;
    w_ = zero_dead ? src_.masked_fill(hess_.dead.to(src_.device()).unsqueeze(0), 0.0f)
                   : src_.clone();
    if (static_groups_) {
      static_s_ = at::empty({out_, groups_}, f_);
      static_z_ = at::empty({out_, groups_}, f_);
      for (int64_t gi = 0; gi < groups_; ++gi) {
        const int64_t c0 = gi * g_, c1 = std::min(in_, c0 + g_);
        auto [s, z] = FitRowsOnDevice(w_.narrow(1, c0, c1 - c0), qo_);
        static_s_.select(1, gi).copy_(s);
        static_z_.select(1, gi).copy_(z);
      }
    }
    perm_host_ = hess_.perm.to(at::kCPU).contiguous();
    perm_ = hess_.perm.to(src_.device());
    if (o_.actorder) w_ = w_.index_select(1, perm_).contiguous();
    u_diag_ = hess_.u.diagonal().to(at::kCPU).contiguous();
    return absl::OkStatus();
  }

  void SolveBlocks() {
    codes_ = at::empty({out_, in_}, f_.dtype(at::kByte));
    column_loss_ = at::empty({in_}, f_.dtype(at::kDouble));
    const int64_t bs = std::min(o_.blocksize, in_);
    for (int64_t i1 = 0; i1 < in_; i1 += bs) {
      const int64_t i2 = std::min(in_, i1 + bs), nb = i2 - i1;
      Clock::time_point t0 = Clock::now();
      const at::Tensor err = SolveBlock(i1, i2);  // [out, nb]
      result_.seconds.blocks += Since(t0);
      t0 = Clock::now();
      if (i2 < in_) {
        at::Tensor rest = w_.narrow(1, i2, in_ - i2);
        rest.addmm_(err, hess_.u.narrow(0, i1, nb).narrow(1, i2, in_ - i2), 1.0, -1.0);
      }
      result_.seconds.lazy_update += Since(t0);
    }
  }

  GptqResult Finish() {
    const Clock::time_point t0 = Clock::now();
    if (static_groups_) {
      scales_ = static_s_;
      zeros_ = static_z_;
    }
    const at::Tensor invperm = at::argsort(perm_);
    const at::Tensor g_idx = GroupIndex(o_, invperm);
    if (o_.actorder) {
      result_.weight = w_.index_select(1, invperm);
      result_.q = codes_.index_select(1, invperm);
      result_.column_loss = column_loss_.index_select(0, invperm).to(at::kFloat);
    } else {
      result_.weight = w_;
      result_.q = codes_;
      result_.column_loss = column_loss_.to(at::kFloat);
    }
    result_.total_loss = column_loss_.sum().item<double>();
    result_.scales = scales_;
    result_.zeros = zeros_;
    result_.g_idx = g_idx;
    result_.perm = perm_;
    result_.seconds.finish = Since(t0);
    return std::move(result_);
  }

  GptqResult::Timing& seconds() { return result_.seconds; }

 private:
  // Columns [i1, i2) of every row; returns their scaled errors [out, nb].
  at::Tensor SolveBlock(int64_t i1, int64_t i2) {
    const int64_t nb = i2 - i1;
    // Transposed, so that a column of W is a contiguous row of t.
    at::Tensor t = w_.narrow(1, i1, nb).t().contiguous();  // [nb, out]
    const at::Tensor snapshot =
        dynamic_groups_ && o_.reference_group_fit ? t.clone() : at::Tensor();
    at::Tensor e = at::empty({nb, out_}, f_), loss = at::empty({nb, out_}, f_);
    at::Tensor q = at::empty({nb, out_}, f_.dtype(at::kByte));
    const at::Tensor u_block = hess_.u.narrow(0, i1, nb).narrow(1, i1, nb);
    at::Tensor s = at::ones({out_}, f_), z = at::zeros({out_}, f_);
    if (g_ <= 0) {
      s = scales_.select(1, 0);
      z = zeros_.select(1, 0);
    } else if (dynamic_groups_ && i1 % g_ != 0) {
      s = scales_.select(1, i1 / g_);
      z = zeros_.select(1, i1 / g_);
    }
    const int64_t* perm = perm_host_.data_ptr<int64_t>();
    const float* diag = u_diag_.data_ptr<float>();
    int64_t static_group = -1;
    for (int64_t j = i1; j < i2; ++j) {
      const int64_t jj = j - i1;
      if (dynamic_groups_ && j % g_ == 0) {
        std::tie(s, z) = FitDynamicGroup(t, snapshot, e, i1, i2, j);
        scales_.select(1, j / g_).copy_(s);
        zeros_.select(1, j / g_).copy_(z);
      } else if (static_groups_ && perm[j] / g_ != static_group) {
        static_group = perm[j] / g_;
        s = static_s_.select(1, static_group);
        z = static_z_.select(1, static_group);
      }
      const float d = diag[j];
      at::Tensor col = t.select(0, jj);
      const at::Tensor qj = QuantizeOnDevice(col, s, z, qo_);
      const at::Tensor dq = s * (qj - z);
      const at::Tensor diff = col - dq;
      e.select(0, jj).copy_(diff / d);
      loss.select(0, jj).copy_(diff * diff / (d * d) / 2.0f);
      q.select(0, jj).copy_(qj);
      col.copy_(dq);
      if (feedback_ && jj + 1 < nb) {
        const int64_t rest = nb - jj - 1;
        t.narrow(0, jj + 1, rest)
            .sub_(e.select(0, jj).unsqueeze(0) * u_block.select(0, jj).narrow(0, jj + 1, rest)
                                                     .unsqueeze(1));
      }
    }
    w_.narrow(1, i1, nb).copy_(t.t());
    codes_.narrow(1, i1, nb).copy_(q.t());
    column_loss_.narrow(0, i1, nb).copy_(loss.to(at::kDouble).sum(1));
    return e.t().contiguous();
  }

  // The parameters of the dynamic group starting at column j (gptq_panel.cc FitDynamicGroup and
  // GatherGroup): on the block's up-to-date values, or, for a group reaching past the block, on
  // later columns of W with this block's pending lazy updates of columns i1..j-1 applied (one
  // column at a time, in the kernel's order); with reference_group_fit on the block-start values.
  std::pair<at::Tensor, at::Tensor> FitDynamicGroup(const at::Tensor& t, const at::Tensor& snap,
                                                    const at::Tensor& e, int64_t i1, int64_t i2,
                                                    int64_t j) {
    const int64_t c1 = std::min(in_, j + g_);
    const bool in_block = !o_.reference_group_fit && c1 <= i2;
    const at::Tensor& block = o_.reference_group_fit ? snap : t;
    const int64_t k_block = std::min(c1, i2) - j;
    at::Tensor vals = block.narrow(0, j - i1, k_block).t();  // [out, k_block]
    if (!in_block && c1 > i2) {
      at::Tensor later = w_.narrow(1, i2, c1 - i2).clone();
      if (!o_.reference_group_fit) {
        for (int64_t tt = i1; tt < j; ++tt) {
          later.sub_(e.select(0, tt - i1).unsqueeze(1) *
                     hess_.u.select(0, tt).narrow(0, i2, c1 - i2).unsqueeze(0));
        }
      }
      vals = at::cat({vals, later}, 1);
    }
    return FitRowsOnDevice(vals.contiguous(), qo_);
  }

  const GptqOptions& o_;
  const QuantizerOptions& qo_;
  const GptqHessian& hess_;
  const int64_t out_, in_, g_, groups_;
  const bool static_groups_, dynamic_groups_, feedback_;
  const at::Tensor src_;
  const at::TensorOptions f_;
  at::Tensor w_, scales_, zeros_, static_s_, static_z_, perm_, perm_host_, u_diag_;
  at::Tensor codes_, column_loss_;
  GptqResult result_;
};

}  // namespace

absl::StatusOr<GptqResult> GptqQuantizeOnDevice(const at::Tensor& w, const GptqHessian& hess,
                                                const GptqOptions& o) {
  if (hess.u.device() != w.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight on ", w.device().str(), ", prepared Hessian on ", hess.u.device().str()));
  }
  const Clock::time_point t0 = Clock::now();
  AtenSolve solve(w, hess, o);
  if (absl::Status s = solve.PrepareWeights(); !s.ok()) return s;
  solve.seconds().prepare = Since(t0);
  solve.SolveBlocks();
  return solve.Finish();
}

}  // namespace moec::quant::internal
