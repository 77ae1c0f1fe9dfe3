// HessianAccumulator (declared in quant/gptq.h): the running Hessian of a Linear's inputs.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/task_profile.h"
#include "quant/gptq.h"

namespace moec::quant {

at::Tensor GramMatrix(const at::Tensor& x) {
  const at::Tensor f = x.reshape({-1, x.size(-1)}).to(at::kFloat).contiguous();
  profile::AddFlops(profile::MatmulFlops(f.size(1), f.size(1), f.size(0)));
  return at::matmul(f.t(), f);
}

HessianAccumulator::HessianAccumulator(int64_t in_features, at::Device device)
    : in_(in_features), h_(at::zeros({in_features, in_features}, at::device(device).dtype(at::kFloat))) {}

absl::Status HessianAccumulator::Add(const at::Tensor& x, int64_t samples) {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != in_) {
    return absl::InvalidArgumentError(
        absl::StrCat("Hessian input must be [..., ", in_, "]"));
  }
  if (!x.is_floating_point()) {
    return absl::InvalidArgumentError("Hessian input must be a floating-point tensor");
  }
  if (samples < 0) {
    return absl::InvalidArgumentError(absl::StrCat("samples must be >= 0, got ", samples));
  }
  const at::Tensor flat = x.reshape({-1, in_});
  const int64_t tokens = flat.size(0);
  if (samples == 0) {
    if (tokens > 0) {
      return absl::InvalidArgumentError("a batch with tokens must count at least one sample");
    }
    return absl::OkStatus();
  }
  const double n_old = static_cast<double>(samples_);
  samples_ += samples;
  tokens_ += tokens;
  const double n = static_cast<double>(samples_);
  if (tokens > 0) {
    const at::Tensor xf = flat.to(h_.device(), at::kFloat).contiguous();
    profile::AddFlops(profile::MatmulFlops(in_, in_, tokens));
    // H * n_old/n + (2/n) X^T X in one pass over H: the GEMM scales C by beta first, so this is
    // the same arithmetic as mul_ then addmm_ with beta 1 (hessian_test checks the bits).
    h_.addmm_(xf.t(), xf, /*beta=*/n_old / n, /*alpha=*/2.0 / n);
  } else {
    h_.mul_(n_old / n);
  }
  return absl::OkStatus();
}

absl::Status HessianAccumulator::AddGram(const at::Tensor& gram, int64_t tokens, int64_t samples) {
  if (!gram.defined() || gram.dim() != 2 || gram.size(0) != in_ || gram.size(1) != in_) {
    return absl::InvalidArgumentError(absl::StrCat("Gram matrix must be [", in_, ", ", in_, "]"));
  }
  if (samples < 0 || tokens < 0) {
    return absl::InvalidArgumentError("token and sample counts must be >= 0");
  }
  if (samples == 0) {
    if (tokens > 0) {
      return absl::InvalidArgumentError("a batch with tokens must count at least one sample");
    }
    return absl::OkStatus();
  }
  const double n_old = static_cast<double>(samples_);
  samples_ += samples;
  tokens_ += tokens;
  const double n = static_cast<double>(samples_);
  h_.mul_(n_old / n);
  if (tokens > 0) h_.add_(gram.to(h_.device(), at::kFloat), 2.0 / n);
  return absl::OkStatus();
}

at::Tensor HessianAccumulator::HessianForSolve(int64_t min_tokens, bool* fallback) const {
  const bool use_identity = tokens_ < std::max<int64_t>(min_tokens, 1);
  if (fallback != nullptr) *fallback = use_identity;
  if (use_identity) return at::eye(in_, h_.options());
  return h_;
}

}  // namespace moec::quant
