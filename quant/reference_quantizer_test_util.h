// Test-only: a tensor-op port of the GPTQ reference quantizer (IST-DASLab quant.py) used as the
// oracle by quantizer_test.cc and gptq_test.cc.
#ifndef MOEC_QUANT_REFERENCE_QUANTIZER_TEST_UTIL_H_
#define MOEC_QUANT_REFERENCE_QUANTIZER_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/quantizer.h"

namespace moec::quant::reference {

// ---------------------------------------------------------------------------------------------
// Reference quantizer: a tensor-op port of IST-DASLab quant.py (find_params / quantize), plus
// MC-MoE's grid, float zero and sign 1-bit as ALGORITHMS 3.4 states them.

struct RefParams {
  at::Tensor scale, zero;  // [rows]
};

inline at::Tensor RefQuantizeDequant(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero,
                              const QuantizerOptions& o) {
  const double maxq = o.maxq();
  if (o.bits == 1 && o.one_bit == OneBitMode::kSign) {
    at::Tensor q = (x >= 0).to(at::kFloat);
    return scale.unsqueeze(1) * (q - zero.unsqueeze(1));
  }
  at::Tensor q;
  if (o.mcmoe_float_zero) {
    q = at::clamp(at::round(x / scale.unsqueeze(1) + zero.unsqueeze(1)), 0, maxq);
  } else {
    q = at::clamp(at::round(x / scale.unsqueeze(1)) + zero.unsqueeze(1), 0, maxq);
  }
  return scale.unsqueeze(1) * (q - zero.unsqueeze(1));
}

inline RefParams RefFindParams(const at::Tensor& x, const QuantizerOptions& o) {
  const int64_t rows = x.size(0);
  if (o.bits == 1 && o.one_bit == OneBitMode::kSign) {
    return {2 * x.abs().to(at::kDouble).mean(1).to(at::kFloat), at::full({rows}, 0.5f)};
  }
  const double maxq = o.maxq();
  at::Tensor tmp = at::zeros({rows});
  at::Tensor xmin = at::minimum(std::get<0>(x.min(1)), tmp);
  at::Tensor xmax = at::maximum(std::get<0>(x.max(1)), tmp);
  if (o.sym && !o.mcmoe_float_zero) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin < 0, -xmax, xmin);
  }
  at::Tensor both = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both, at::full_like(xmin, -1), xmin);
  xmax = at::where(both, at::full_like(xmax, 1), xmax);
  auto zero_of = [&](const at::Tensor& lo, const at::Tensor& s) {
    if (o.sym) return at::full_like(s, (maxq + 1) / 2);
    if (o.mcmoe_float_zero) return -lo / s;
    return at::round(-lo / s);
  };
  RefParams p;
  p.scale = (xmax - xmin) / maxq;
  p.zero = zero_of(xmin, p.scale);
  if (!o.mse) return p;
  std::vector<double> cands;
  if (o.range_grid == RangeGrid::kReferenceShrink) {
    for (int i = 0; i < int(o.maxshrink * o.grid); ++i) cands.push_back(1 - double(i) / o.grid);
  } else {
    cands.push_back(1.0);
    for (int k = 1; k <= 50; ++k) cands.push_back(1 + 0.002 * k);
    for (int k = 1; k <= 50; ++k) cands.push_back(1 - 0.002 * k);
  }
  at::Tensor best = at::full({rows}, std::numeric_limits<double>::infinity(), at::kDouble);
  for (double pc : cands) {
    at::Tensor xmin1 = xmin * static_cast<float>(pc), xmax1 = xmax * static_cast<float>(pc);
    at::Tensor scale1 = (xmax1 - xmin1) / maxq;
    at::Tensor zero1 = zero_of(xmin1, scale1);
    at::Tensor err = (RefQuantizeDequant(x, scale1, zero1, o) - x)
                         .abs()
                         .pow(o.norm)
                         .to(at::kDouble)
                         .sum(1);
    at::Tensor better = err < best;
    best = at::where(better, err, best);
    p.scale = at::where(better, scale1, p.scale);
    p.zero = at::where(better, zero1, p.zero);
  }
  return p;
}

}  // namespace moec::quant::reference

#endif  // MOEC_QUANT_REFERENCE_QUANTIZER_TEST_UTIL_H_
