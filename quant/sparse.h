// Unstructured and N:M weight pruning kernels of Unified-MoE-Compression's expert slimming
// (ALGORITHMS.md 2.5): Wanda, magnitude and SparseGPT, on CPU with libtorch. Masks are bool
// tensors of W's shape, true where a weight is pruned (set to 0).
#ifndef MOEC_QUANT_SPARSE_H_
#define MOEC_QUANT_SPARSE_H_

#include <ATen/ATen.h>

#include "absl/status/statusor.h"

namespace moec::quant {

// n:m — prune n of every m consecutive input columns of each row; {0, 0} — unstructured.
struct SparsityPattern {
  int n = 0;
  int m = 0;
  bool structured() const { return m > 0; }
};

// Wanda: metric |W_ij| · sqrt(norm2_j), norm2 [in] the mean over forward calls of Σ_tokens x_j².
// Unstructured: per output row, the floor(in · ratio) smallest metrics (stable sort order);
// n:m: the n smallest of each group of m columns. Errors: InvalidArgument for shapes, a ratio
// outside [0, 1) or in % m != 0.
absl::StatusOr<at::Tensor> WandaMask(const at::Tensor& w, const at::Tensor& norm2, double ratio,
                                     SparsityPattern pattern);

// A pruned matrix stored as its mask over the unpruned one (a pruning that only zeroes
// weights): U8 [rows, ceil(cols / 8)], bit j (least significant first) of byte b of row r set
// when entry (r, 8b + j) was set to +0. A sixteenth of the bf16 matrix's bytes.
at::Tensor PackMask(const at::Tensor& mask);  // bool [rows, cols], true: set to +0
// `w` (fp32 [rows, cols], overwritten) with the entries `packed` marks set to +0: the pruned
// matrix, bit for bit. Errors: DataLoss when `packed` does not have PackMask's shape for `w`.
absl::StatusOr<at::Tensor> ApplyPackedMask(at::Tensor w, const at::Tensor& packed);

// A pruned weight: fp32, with how many of its entries are 0 (pruned or zero already) and, when
// the pruning only set entries to +0 (Wanda, magnitude), their PackMask.
struct PrunedWeight {
  at::Tensor weight;
  int64_t zeros = 0;
  at::Tensor mask;  // undefined when the pruning changed other weights (SparseGPT)
};

// Wanda's pruned weight: w with WandaMask's entries set to 0, the same bits. Unstructured on the
// CPU it runs row by row in one pass (metric, selection, pruned row, no full-size intermediate);
// otherwise, and when a metric is negative or not finite, through WandaMask. Errors as WandaMask.
absl::StatusOr<PrunedWeight> WandaPrune(const at::Tensor& w, const at::Tensor& norm2, double ratio,
                                        SparsityPattern pattern);

// Magnitude: unstructured, the reference's global per-matrix threshold: every |W| <= the value at
// index floor(numel · ratio) of the sorted magnitudes (so ties and that element are pruned too);
// n:m as Wanda with |W|.
absl::StatusOr<at::Tensor> MagnitudeMask(const at::Tensor& w, double ratio, SparsityPattern pattern);

struct SparseGptOptions {
  double ratio = 0.5;
  SparsityPattern pattern;
  int64_t blocksize = 128;
  double percdamp = 0.01;
};

// SparseGPT (IST-DASLab, as Unified vendors it): H [in, in] the GPTQ Hessian of the layer's
// inputs; dead columns (H_jj = 0) are zeroed; U = upper Cholesky factor of (H + damp)^-1. Per
// block of `blocksize` columns, unstructured masks take the entries with w² / U_jj² <= the
// floor(numel · ratio)-th smallest of the block (n:m: the n smallest every m columns); then
// column by column the pruned error is propagated to the remaining columns (OBS update).
// Returns the pruned weight (fp32). Errors: InvalidArgument for shapes or options; FailedPrecondition
// when H is not positive definite after damping.
absl::StatusOr<at::Tensor> SparseGptPrune(const at::Tensor& w, const at::Tensor& h,
                                          const SparseGptOptions& options);

}  // namespace moec::quant

#endif  // MOEC_QUANT_SPARSE_H_
