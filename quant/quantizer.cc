#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/device_quantizer.h"
#include "quant/parallel.h"

namespace moec::quant {
namespace {

// Rows of at least this many elements per thread before the tensor API splits work.
constexpr int64_t kElementsPerThread = 1 << 16;

// (scale, zero) of the range [xmin, xmax] (xmin <= 0 <= xmax, not both 0) for a fixed zero
// convention. `sym_zero` is the symmetric zero (maxq + 1) / 2.
RowParams ParamsOfRange(float xmin, float xmax, const QuantizerOptions& o) {
  const float maxq = static_cast<float>(o.maxq());
  RowParams p;
  p.scale = (xmax - xmin) / maxq;
  if (o.sym) {
    p.zero = (maxq + 1.0f) / 2.0f;
  } else if (o.mcmoe_float_zero) {
    p.zero = -xmin / p.scale;
  } else {
    p.zero = std::nearbyint(-xmin / p.scale);
  }
  return p;
}

double RangeError(const float* x, int64_t n, int64_t stride, const RowParams& p,
                  const QuantizerOptions& o) {
  const float norm = static_cast<float>(o.norm);
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float w = x[i * stride];
    const float d = std::fabs(DequantizeValue(QuantizeValue(w, p, o), p) - w);
    err += std::pow(d, norm);
  }
  return err;
}

absl::Status CheckMatrix(const at::Tensor& w, const char* what) {
  if (!w.defined() || w.dim() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a 2-D tensor"));
  }
  if (!w.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a floating-point tensor"));
  }
  return absl::OkStatus();
}

}  // namespace

QuantizerOptions McMoeQuantizerOptions(int bits, bool float_zero) {
  QuantizerOptions o;
  o.bits = bits;
  o.sym = false;
  o.mse = bits >= 2;
  o.norm = 2.4;
  o.range_grid = RangeGrid::kMcMoe;
  o.mcmoe_float_zero = float_zero;
  o.one_bit = OneBitMode::kSign;
  return o;
}

std::vector<float> RangeCandidates(const QuantizerOptions& o) {
  std::vector<float> p;
  if (o.range_grid == RangeGrid::kReferenceShrink) {
    const int count = static_cast<int>(o.maxshrink * o.grid);
    for (int i = 0; i < count; ++i) p.push_back(static_cast<float>(1.0 - double(i) / o.grid));
  } else {
    p.push_back(1.0f);
    for (int k = 1; k <= 50; ++k) p.push_back(static_cast<float>(1.0 + 0.002 * k));
    for (int k = 1; k <= 50; ++k) p.push_back(static_cast<float>(1.0 - 0.002 * k));
  }
  return p;
}

absl::Status ValidateQuantizerOptions(const QuantizerOptions& o) {
  if (o.bits < 1 || o.bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be in 1..8, got ", o.bits));
  }
  if (o.mse) {
    if (o.range_grid == RangeGrid::kReferenceShrink &&
        (o.grid < 1 || !(o.maxshrink > 0) || static_cast<int>(o.maxshrink * o.grid) < 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "range search needs grid >= 1 and int(maxshrink * grid) >= 1, got grid ", o.grid,
          ", maxshrink ", o.maxshrink));
    }
    if (!(o.norm > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("norm must be > 0, got ", o.norm));
    }
  }
  return absl::OkStatus();
}

RowParams FitRow(const float* x, int64_t n, const QuantizerOptions& o, int64_t stride) {
  if (o.bits == 1 && o.one_bit == OneBitMode::kSign) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::fabs(x[i * stride]);
    RowParams p;
    p.scale = n > 0 ? static_cast<float>(2.0 * sum / static_cast<double>(n)) : 0.0f;
    p.zero = 0.5f;
    return p;
  }
  float xmin = 0.0f, xmax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    xmin = std::min(xmin, x[i * stride]);
    xmax = std::max(xmax, x[i * stride]);
  }
  return FitRowFromRange(x, n, xmin, xmax, o, stride);
}

RowParams FitRowFromRange(const float* x, int64_t n, float xmin, float xmax,
                          const QuantizerOptions& o, int64_t stride) {
  if (o.sym && !o.mcmoe_float_zero) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  RowParams best = ParamsOfRange(xmin, xmax, o);
  if (!o.mse) return best;
  double best_err = std::numeric_limits<double>::infinity();
  for (float p : RangeCandidates(o)) {
    const float xmin1 = p * xmin, xmax1 = p * xmax;
    RowParams cand = ParamsOfRange(xmin1, xmax1, o);
    const double err = RangeError(x, n, stride, cand, o);
    if (err < best_err) {
      best_err = err;
      best = cand;
    }
  }
  return best;
}

absl::StatusOr<QuantParams> FitRows(const at::Tensor& w, const QuantizerOptions& options) {
  if (absl::Status s = ValidateQuantizerOptions(options); !s.ok()) return s;
  if (absl::Status s = CheckMatrix(w, "weight"); !s.ok()) return s;
  if (w.size(1) == 0) return absl::InvalidArgumentError("weight has no columns");
  const at::Tensor x = w.to(at::kFloat).contiguous();
  if (!x.device().is_cpu()) {
    auto [scale, zero] = internal::FitRowsOnDevice(x, options);
    return QuantParams{scale, zero};
  }
  const int64_t rows = x.size(0), cols = x.size(1);
  QuantParams out{at::empty({rows}, at::kFloat), at::empty({rows}, at::kFloat)};
  const float* xp = x.data_ptr<float>();
  float* sp = out.scale.data_ptr<float>();
  float* zp = out.zero.data_ptr<float>();
  internal::ParallelFor(rows, std::max<int64_t>(1, kElementsPerThread / cols), 0,
                        [&](int64_t b, int64_t e, int) {
                          for (int64_t r = b; r < e; ++r) {
                            RowParams p = FitRow(xp + r * cols, cols, options);
                            sp[r] = p.scale;
                            zp[r] = p.zero;
                          }
                        });
  return out;
}

absl::StatusOr<at::Tensor> QuantizeRows(const at::Tensor& w, const QuantParams& params,
                                        const QuantizerOptions& options) {
  if (absl::Status s = ValidateQuantizerOptions(options); !s.ok()) return s;
  if (absl::Status s = CheckMatrix(w, "weight"); !s.ok()) return s;
  const int64_t rows = w.size(0), cols = w.size(1);
  if (!params.scale.defined() || !params.zero.defined() || params.scale.numel() != rows ||
      params.zero.numel() != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale and zero must have one value per row (", rows, ")"));
  }
  const at::Tensor x = w.to(at::kFloat).contiguous();
  const at::Tensor s = params.scale.to(at::kFloat).contiguous();
  const at::Tensor z = params.zero.to(at::kFloat).contiguous();
  if (!x.device().is_cpu()) {
    return internal::QuantizeOnDevice(x, s.to(x.device()).view({rows, 1}),
                                      z.to(x.device()).view({rows, 1}), options)
        .to(at::kByte);
  }
  at::Tensor q = at::empty({rows, cols}, at::kByte);
  const float* xp = x.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  const float* zp = z.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  internal::ParallelFor(rows, std::max<int64_t>(1, kElementsPerThread / std::max<int64_t>(cols, 1)),
                        0, [&](int64_t b, int64_t e, int) {
                          for (int64_t r = b; r < e; ++r) {
                            const RowParams p{sp[r], zp[r]};
                            for (int64_t c = 0; c < cols; ++c) {
                              qp[r * cols + c] =
                                  static_cast<uint8_t>(QuantizeValue(xp[r * cols + c], p, options));
                            }
                          }
                        });
  return q;
}

absl::StatusOr<QuantizedWeight> QuantizeGroups(const at::Tensor& w, int64_t group_size,
                                               const QuantizerOptions& options) {
  if (absl::Status s = ValidateQuantizerOptions(options); !s.ok()) return s;
  if (absl::Status s = CheckMatrix(w, "weight"); !s.ok()) return s;
  const int64_t rows = w.size(0), cols = w.size(1);
  if (cols == 0) return absl::InvalidArgumentError("weight has no columns");
  if (group_size == 0 || group_size < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size must be -1 or positive, got ", group_size));
  }
  if (!w.device().is_cpu()) return internal::QuantizeGroupsOnDevice(w, group_size, options);
  const int64_t g = group_size == -1 ? cols : group_size;
  const int64_t groups = (cols + g - 1) / g;
  const at::Tensor x = w.to(at::kFloat).contiguous();
  QuantizedWeight out;
  out.q = at::empty({rows, cols}, at::kByte);
  out.scales = at::empty({rows, groups}, at::kFloat);
  out.zeros = at::empty({rows, groups}, at::kFloat);
  out.weight = at::empty({rows, cols}, at::kFloat);
  out.g_idx = at::arange(cols, at::kInt).div(g, "floor").to(at::kInt);
  const float* xp = x.data_ptr<float>();
  uint8_t* qp = out.q.data_ptr<uint8_t>();
  float* sp = out.scales.data_ptr<float>();
  float* zp = out.zeros.data_ptr<float>();
  float* wp = out.weight.data_ptr<float>();
  internal::ParallelFor(rows, std::max<int64_t>(1, kElementsPerThread / cols), 0,
                        [&](int64_t b, int64_t e, int) {
                          for (int64_t r = b; r < e; ++r) {
                            for (int64_t gi = 0; gi < groups; ++gi) {
                              const int64_t c0 = gi * g, c1 = std::min(cols, c0 + g);
                              const RowParams p = FitRow(xp + r * cols + c0, c1 - c0, options);
                              sp[r * groups + gi] = p.scale;
                              zp[r * groups + gi] = p.zero;
                              for (int64_t c = c0; c < c1; ++c) {
                                const int q = QuantizeValue(xp[r * cols + c], p, options);
                                qp[r * cols + c] = static_cast<uint8_t>(q);
                                wp[r * cols + c] = DequantizeValue(q, p);
                              }
                            }
                          }
                        });
  return out;
}

at::Tensor DequantizeGroups(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zeros,
                            const at::Tensor& g_idx) {
  const at::Tensor idx = g_idx.to(at::kLong);
  const at::Tensor s = scales.to(at::kFloat).index_select(1, idx);
  const at::Tensor z = zeros.to(at::kFloat).index_select(1, idx);
  return s * (q.to(at::kFloat) - z);
}

absl::StatusOr<at::Tensor> FakeQuantize(const at::Tensor& w, int64_t group_size,
                                        const QuantizerOptions& options) {
  absl::StatusOr<QuantizedWeight> r = QuantizeGroups(w, group_size, options);
  if (!r.ok()) return r.status();
  return std::move(r->weight);
}

}  // namespace moec::quant
