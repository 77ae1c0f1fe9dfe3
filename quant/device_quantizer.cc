// The min-max quantizer as tensor operations on any device (quant/device_quantizer.h).
#include "quant/device_quantizer.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace moec::quant::internal {

at::Tensor QuantizeOnDevice(const at::Tensor& w, const at::Tensor& s, const at::Tensor& z,
                            const QuantizerOptions& o) {
  if (o.bits == 1 && o.one_bit == OneBitMode::kSign) return (w >= 0).to(at::kFloat);
  const double maxq = o.maxq();
  at::Tensor q = o.mcmoe_float_zero ? (w / s + z).round() : (w / s).round() + z;
  return q.clamp_(0.0, maxq);
}

namespace {

// ParamsOfRange (quantizer.cc) over tensors of ranges.
std::pair<at::Tensor, at::Tensor> ParamsOfRanges(const at::Tensor& xmin, const at::Tensor& xmax,
                                                 const QuantizerOptions& o) {
  const float maxq = static_cast<float>(o.maxq());
  at::Tensor scale = (xmax - xmin) / maxq;
  at::Tensor zero;
  if (o.sym) {
    zero = at::full_like(scale, (maxq + 1.0f) / 2.0f);
  } else if (o.mcmoe_float_zero) {
    zero = -xmin / scale;
  } else {
    zero = (-xmin / scale).round();
  }
  return {scale, zero};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> FitRowsOnDevice(const at::Tensor& x, const QuantizerOptions& o) {
  const int64_t n = x.size(1);
  if (o.bits == 1 && o.one_bit == OneBitMode::kSign) {
    at::Tensor sum = x.abs().to(at::kDouble).sum(1);
    at::Tensor scale = n > 0 ? sum.mul(2.0).div(static_cast<double>(n)).to(at::kFloat)
                             : at::zeros_like(sum, sum.options().dtype(at::kFloat));
    return {scale, at::full_like(scale, 0.5f)};
  }
  at::Tensor xmin = x.amin(1).clamp_max(0.0), xmax = x.amax(1).clamp_min(0.0);
  if (o.sym && !o.mcmoe_float_zero) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  const at::Tensor both_zero = (xmin == 0) & (xmax == 0);
  xmin = xmin.masked_fill(both_zero, -1.0f);
  xmax = xmax.masked_fill(both_zero, 1.0f);
  auto [scale, zero] = ParamsOfRanges(xmin, xmax, o);
  if (!o.mse) return {scale, zero};
  at::Tensor best_err =
      at::full({x.size(0)}, std::numeric_limits<double>::infinity(), x.options().dtype(at::kDouble));
  const double norm = static_cast<float>(o.norm);
  for (float p : RangeCandidates(o)) {
    auto [s, z] = ParamsOfRanges(xmin * p, xmax * p, o);
    const at::Tensor s1 = s.unsqueeze(1), z1 = z.unsqueeze(1);
    const at::Tensor d = (s1 * (QuantizeOnDevice(x, s1, z1, o) - z1) - x).abs_();
    const at::Tensor err = d.pow_(norm).to(at::kDouble).sum(1);
    const at::Tensor better = err < best_err;
    best_err = at::where(better, err, best_err);
    scale = at::where(better, s, scale);
    zero = at::where(better, z, zero);
  }
  return {scale, zero};
}

QuantizedWeight QuantizeGroupsOnDevice(const at::Tensor& w, int64_t group_size,
                                       const QuantizerOptions& o) {
  const at::Tensor x = w.to(at::kFloat).contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  const int64_t g = group_size == -1 ? cols : group_size;
  const int64_t groups = (cols + g - 1) / g;
  QuantizedWeight out;
  out.q = at::empty({rows, cols}, x.options().dtype(at::kByte));
  out.scales = at::empty({rows, groups}, x.options());
  out.zeros = at::empty({rows, groups}, x.options());
  out.weight = at::empty({rows, cols}, x.options());
  out.g_idx = at::arange(cols, x.options().dtype(at::kInt)).div(g, "floor").to(at::kInt);
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t c0 = gi * g, n = std::min(cols, c0 + g) - c0;
    const at::Tensor part = x.narrow(1, c0, n);
    auto [s, z] = FitRowsOnDevice(part, o);
    out.scales.select(1, gi).copy_(s);
    out.zeros.select(1, gi).copy_(z);
    const at::Tensor s1 = s.unsqueeze(1), z1 = z.unsqueeze(1);
    const at::Tensor q = QuantizeOnDevice(part, s1, z1, o);
    out.q.narrow(1, c0, n).copy_(q);
    out.weight.narrow(1, c0, n).copy_(s1 * (q - z1));
  }
  return out;
}

}  // namespace moec::quant::internal
