// Internal to moec_quant: what the GPTQ driver (gptq.cc), the Hessian preparation
// (gptq_prepare.cc) and the panel kernel (gptq_panel.cc) share.
#ifndef MOEC_QUANT_GPTQ_INTERNAL_H_
#define MOEC_QUANT_GPTQ_INTERNAL_H_

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"

namespace moec::quant::internal {

using Clock = std::chrono::steady_clock;
inline double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// InvalidArgument for options GPTQ cannot run with (quantizer, blocksize, percdamp, groupsize).
absl::Status ValidateGptqOptions(const GptqOptions& o);

// Rows solved together: the per-column work of one row is a serial latency chain (quantize,
// divide, then update the rest of the block), so the kernel works on a panel of rows, transposed
// so that the kPanel rows of one column are contiguous and every step is a vector operation
// across rows. Each row's arithmetic is exactly the scalar sequence of the reference (no FMA
// contraction: moec_quant is compiled with -ffp-contract=off), so the result does not depend on
// the panel width or the ISA.
constexpr int kPanel = 16;

// Everything the panel kernel reads.
struct SolveContext {
  const QuantizerOptions* qopt;
  int64_t in, groupsize, groups;  // groupsize = -1 or g
  bool static_groups, feedback, reference_group_fit;
  const float* u;              // [in, in] upper factor (row-major)
  const int64_t* perm;         // [in]
  const float* row_params;     // [out, 2] (scale, zero) of the whole row (groupsize == -1)
  const float* static_params;  // [out, groups, 2] static group params (original order)
  float* w;                    // [out, in] quantization order, updated in place; done columns
                               // hold w_hat
  uint8_t* codes;              // [out, in] quantization order
  float* scales;               // [out, groups]
  float* zeros;                // [out, groups]
};

// Scratch of one worker; panels are [block column][kPanel].
struct PanelScratch {
  explicit PanelScratch(int64_t bs, int64_t g)
      : t(bs * kPanel), snapshot(bs * kPanel), e(bs * kPanel), loss_terms(bs * kPanel),
        q(bs * kPanel), group(std::max<int64_t>(g, 1)), loss(bs) {}
  std::vector<float> t;         // the block's values (updated in place)
  std::vector<float> snapshot;  // block-start values (reference_group_fit)
  std::vector<float> e;         // scaled errors
  std::vector<float> loss_terms;  // (w - q)^2 / d^2 / 2 of every lane
  std::vector<uint8_t> q;       // codes
  std::vector<float> group;     // values a group is fitted on
  std::vector<double> loss;     // per column of the block, summed over the worker's rows
};

// Quantizes columns [i1, i2) of rows [row_begin, row_end), panel by panel on `threads` threads
// (chunk k works in scratch[k], which holds at least that many entries), and writes their scaled
// errors to err ([row_end - row_begin, i2 - i1], row-major). Each scratch's loss gets the chunk's
// per-column losses added.
void SolveBlockPanels(const SolveContext& c, int64_t row_begin, int64_t row_end, int64_t i1,
                      int64_t i2, float* err, std::vector<PanelScratch>& scratch, int threads);

// True when GPTQ runs as device-generic ATen code (gptq_aten.cc) for tensors on `device`.
inline bool UseAtenSolve(const GptqOptions& o, const at::Device& device) {
  return o.engine == GptqEngine::kAten || !device.is_cpu();
}

// g_idx (int32 [in], on invperm's device): the group of each original column, given the inverse
// of the quantization order.
at::Tensor GroupIndex(const GptqOptions& o, const at::Tensor& invperm);
// GptqQuantize with a prepared Hessian (inputs checked) on the weight's device.
absl::StatusOr<GptqResult> GptqQuantizeOnDevice(const at::Tensor& w, const GptqHessian& hess,
                                                const GptqOptions& o);

}  // namespace moec::quant::internal

#endif  // MOEC_QUANT_GPTQ_INTERNAL_H_
