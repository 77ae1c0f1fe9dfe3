// Per-row (per output channel) min-max quantizer of the GPTQ reference (IST-DASLab `quant.py`,
// docs/quantization.md), group-wise round-to-nearest and fake quantization, with MC-MoE's
// variants as documented switches. This header includes ATen: include it only from code that
// computes with tensors.
//
// Conventions: a weight is [rows, cols] = [out_features, in_features]; each row (optionally each
// group of `group_size` consecutive columns of a row) gets its own (scale, zero). Codes q are
// integers in [0, 2^bits - 1]; the dequantized value is scale * (q - zero), computed in fp32 in
// exactly that order (so the model loader's `(q - zero) * scale` reproduces it bit for bit).
// In the default mode zero is an integer (GPTQ convention), so (q, scale, zero) export losslessly
// to the GPTQ checkpoint format; `mcmoe_float_zero` and the 1-bit sign quantizer give fractional
// zeros (HQQ-style export only).
#ifndef MOEC_QUANT_QUANTIZER_H_
#define MOEC_QUANT_QUANTIZER_H_

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moec::quant {

// Candidate grid of the range (clipping) search.
enum class RangeGrid {
  // GPTQ reference: p = 1 - i/grid for i = 0 .. int(maxshrink*grid) - 1 (1.00, 0.99, ..., 0.21).
  kReferenceShrink,
  // MC-MoE: p = 1.0, then 1.002, 1.004, ..., 1.1, then 0.998, ..., 0.9 (101 values, that order).
  kMcMoe,
};

// How 1-bit codes are formed.
enum class OneBitMode {
  // MC-MoE (ALGORITHMS 3.4): scale = 2 * mean|w| over the group row, zero = 0.5,
  // q = (w >= 0), w_hat = +-mean|w|. No range search. Fractional zero: not GPTQ-exportable.
  kSign,
  // The reference min-max quantizer with maxq = 1 (integer zero; GPTQ-exportable).
  kMinMax,
};

struct QuantizerOptions {
  int bits = 4;       // 1..8
  bool sym = false;   // reference symmetric mode: range [-m, m], zero = (maxq + 1) / 2
  bool mse = false;   // range search minimising sum |w_hat - w|^norm per row
  double maxshrink = 0.8;  // reference grid: number of candidates = int(maxshrink * grid)
  int grid = 100;
  double norm = 2.4;
  RangeGrid range_grid = RangeGrid::kReferenceShrink;
  // Decision 3 (compat): MC-MoE's float zero z = -xmin/s, added before rounding:
  // q = clamp(round(w/s + z), 0, maxq). With `sym`, MC-MoE's z = (maxq+1)/2 on the unsymmetrised
  // range. Default false: integer zero, q = clamp(round(w/s) + z, 0, maxq).
  bool mcmoe_float_zero = false;
  OneBitMode one_bit = OneBitMode::kSign;  // used only when bits == 1

  int maxq() const { return (1 << bits) - 1; }
  // True when every zero point this quantizer produces is an integer.
  bool IntegerZero() const {
    return !mcmoe_float_zero && !(bits == 1 && one_bit == OneBitMode::kSign);
  }
};

// MC-MoE's quantizer settings for `bits` (range search over MC-MoE's grid, norm 2.4, sign 1-bit),
// keeping moec's integer zero unless `float_zero` (decision 3). Asymmetric.
QuantizerOptions McMoeQuantizerOptions(int bits, bool float_zero = false);

// The range search's candidate shrink/expand factors p (the range tried is [p * xmin, p * xmax]),
// in evaluation order.
std::vector<float> RangeCandidates(const QuantizerOptions& options);

// InvalidArgument for bits outside 1..8, grid < 1, maxshrink <= 0, norm <= 0.
absl::Status ValidateQuantizerOptions(const QuantizerOptions& options);

// --- Scalar kernels (shared by the tensor API and GPTQ; one definition of the math) ----------
struct RowParams {
  float scale = 1.0f;
  float zero = 0.0f;
};

// Fits (scale, zero) to the `n` values x[0], x[stride], ... (n >= 1) as the reference
// `find_params` does for one row, including the range search when options.mse.
RowParams FitRow(const float* x, int64_t n, const QuantizerOptions& options, int64_t stride = 1);

// FitRow after its first step, for callers that computed xmin = min(0, min x) and
// xmax = max(0, max x) themselves (min/max folded as std::min / std::max do). Not for the 1-bit
// sign quantizer.
RowParams FitRowFromRange(const float* x, int64_t n, float xmin, float xmax,
                          const QuantizerOptions& options, int64_t stride = 1);

// Integer code of w under p. Reference rounding: nearest, ties to even (std::nearbyint).
inline int QuantizeValue(float w, const RowParams& p, const QuantizerOptions& options) {
  if (options.bits == 1 && options.one_bit == OneBitMode::kSign) return w >= 0.0f ? 1 : 0;
  const float maxq = static_cast<float>(options.maxq());
  float q;
  if (options.mcmoe_float_zero) {
    q = std::nearbyint(w / p.scale + p.zero);
  } else {
    q = std::nearbyint(w / p.scale) + p.zero;
  }
  q = q < 0.0f ? 0.0f : (q > maxq ? maxq : q);
  return static_cast<int>(q);
}

inline float DequantizeValue(int q, const RowParams& p) {
  return p.scale * (static_cast<float>(q) - p.zero);
}

// --- Tensor API ------------------------------------------------------------------------------

// Per-row parameters of w [rows, cols] (fp32 or convertible): scale and zero, each [rows] fp32.
struct QuantParams {
  at::Tensor scale;
  at::Tensor zero;
};
absl::StatusOr<QuantParams> FitRows(const at::Tensor& w, const QuantizerOptions& options);

// Codes of w [rows, cols] under per-row params ([rows]): uint8 [rows, cols].
absl::StatusOr<at::Tensor> QuantizeRows(const at::Tensor& w, const QuantParams& params,
                                        const QuantizerOptions& options);

// Round-to-nearest quantization of w [rows, cols] in groups of `group_size` consecutive columns
// (-1: one group per row; the last group may be shorter).
struct QuantizedWeight {
  at::Tensor q;       // uint8 [rows, cols]
  at::Tensor scales;  // fp32 [rows, groups]
  at::Tensor zeros;   // fp32 [rows, groups]; integral when options.IntegerZero()
  at::Tensor g_idx;   // int32 [cols]: group of each column (= c / group_size)
  at::Tensor weight;  // fp32 [rows, cols] dequantized: scales[r, g] * (q - zeros[r, g])
};
absl::StatusOr<QuantizedWeight> QuantizeGroups(const at::Tensor& w, int64_t group_size,
                                               const QuantizerOptions& options);

// Dequantizes codes q [rows, cols] with per-group scales/zeros [rows, groups] and g_idx [cols]
// (int32 or int64): out[r, c] = scales[r, g] * (q[r, c] - zeros[r, g]), g = g_idx[c]. fp32.
at::Tensor DequantizeGroups(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& zeros,
                            const at::Tensor& g_idx);

// QuantizeGroups(...).weight: the fake-quantized (dequantized) weight, fp32 [rows, cols].
absl::StatusOr<at::Tensor> FakeQuantize(const at::Tensor& w, int64_t group_size,
                                        const QuantizerOptions& options);

}  // namespace moec::quant

#endif  // MOEC_QUANT_QUANTIZER_H_
