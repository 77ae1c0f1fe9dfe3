// GPTQ (Frantar et al.; IST-DASLab `gptq.py` fasterquant, ALGORITHMS.md section 4) with libtorch:
// Hessian accumulation and the blocked column solve with lazy batch updates, on the device of the
// tensors it is given (GptqOptions::engine).
// This header includes ATen: include it only from code that computes with tensors.
//
// Shapes: W [out, in] (rows = output channels), calibration inputs X [tokens, in],
// H [in, in] = 2/N sum X^T X. Everything is computed in fp32 (the reference's precision).
#ifndef MOEC_QUANT_GPTQ_H_
#define MOEC_QUANT_GPTQ_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quant/quantizer.h"

namespace moec::quant {

// X^T X in fp32 [in, in] of the rows of x [..., in] (any floating dtype), its FLOPs counted in
// the task's profile (common/task_profile.h): the per-chunk statistic the data plane reduces.
at::Tensor GramMatrix(const at::Tensor& x);

// Running Hessian of one Linear's inputs, as the reference's forward hook accumulates it
// (ALGORITHMS 4.1): for a batch counted as B samples, H <- H * n/(n+B); n <- n+B;
// H <- H + (2/n) X^T X. The final H = (2/N) sum_b X_b^T X_b where N counts SAMPLES (decision 13:
// the reference counts sequences / forward calls, not tokens; the caller says how many samples a
// batch is, e.g. 1 per forward call of an expert). Tokens are counted separately for coverage
// and the no-token fallback (decision 12). Not thread-safe.
class HessianAccumulator {
 public:
  // H lives on `device`; inputs on another device are copied there.
  explicit HessianAccumulator(int64_t in_features, at::Device device = at::kCPU);

  // x: [tokens, in] (or [..., in], flattened), any floating dtype (converted to fp32).
  // samples >= 0; samples == 0 is allowed only for an empty batch (then nothing changes).
  // A batch with samples > 0 is counted even when it has no token (as the reference would).
  // Errors: InvalidArgument for a wrong last dimension, non-float input, samples < 0, or
  // tokens > 0 with samples == 0.
  absl::Status Add(const at::Tensor& x, int64_t samples);
  // The same update from a precomputed Gram matrix gram = X^T X (fp32 [in, in]) of `tokens` rows
  // counted as `samples` (equal to Add(X, samples) up to rounding). The data plane reduces
  // per-chunk Gram matrices this way, in chunk order. Errors: InvalidArgument for a wrong shape,
  // negative counts, or tokens > 0 with samples == 0.
  absl::Status AddGram(const at::Tensor& gram, int64_t tokens, int64_t samples);

  // H [in, in] fp32 on the accumulator's device (zeros before the first Add).
  const at::Tensor& hessian() const { return h_; }
  int64_t samples() const { return samples_; }
  int64_t tokens() const { return tokens_; }
  int64_t in_features() const { return in_; }

  // Decision 12: the Hessian to hand to GptqQuantize: when tokens() < max(min_tokens, 1), the
  // identity [in, in] on its device (GPTQ with an identity Hessian is round-to-nearest with the weights kept)
  // and *fallback = true; else hessian() and *fallback = false.
  at::Tensor HessianForSolve(int64_t min_tokens, bool* fallback = nullptr) const;

 private:
  int64_t in_;
  at::Tensor h_;
  int64_t samples_ = 0;
  int64_t tokens_ = 0;
};

// How U, the upper Cholesky factor of H^-1, is computed. Both give the same U up to fp32
// rounding (tests: ~1e-6 relative).
enum class InverseFactorMethod {
  // J H J = L' L'^T (J reverses the column order), U = J L'^-1 J: one Cholesky and one
  // triangular inverse (2/3 in^3 nominal flops), never forms H^-1; ~40% less time than
  // kReference for in = 4096 (docs/quantization.md).
  kReversedCholesky,
  // The reference: L = chol(H), H^-1 = cholesky_inverse(L), U = chol(H^-1, upper) (4/3 in^3).
  kReference,
};

// Where GPTQ's numerics run.
enum class GptqEngine {
  // The CPU kernels (LAPACK's potrf/trtri on our buffers, the panel kernel of gptq_panel.cc) for
  // CPU tensors; the device-generic ATen solve (gptq_aten.cc) for tensors on a GPU.
  kAuto,
  // The ATen solve on whatever device the tensors are, the CPU included: the same fp32
  // operations as the panel kernel, over all rows at once (tests compare the two on the CPU).
  kAten,
};

struct GptqOptions {
  QuantizerOptions quantizer;  // bits, sym, mse (range search), MC-MoE quantizer switches
  // Lazy-batch block width. The result does not depend on it (up to fp32 rounding) except under
  // the two compat switches below, which are defined in terms of blocks.
  int64_t blocksize = 128;
  double percdamp = 0.01;      // H_jj += percdamp * mean(diag H)
  int64_t groupsize = -1;      // -1: one (scale, zero) per row; g: per g columns
  bool actorder = false;       // quantize columns in order of descending diag(H)
  bool static_groups = false;  // groups fixed on the original W and original column order
  // Decision 1 (compat): MC-MoE skips the intra-block error feedback (the rank-1 updates of the
  // remaining columns of the current block) for bits <= 3; the cross-block update is kept.
  bool mcmoe_blockwise_feedback = false;
  // Compat: the reference fits a dynamic group's parameters on W as it was at the start of the
  // current block (it reads W, not the block copy W1), so groups that start inside a block ignore
  // that block's earlier updates, and the result depends on blocksize unless groupsize is a
  // multiple of it. Default false: fit on the fully updated columns (what unblocked GPTQ does;
  // identical to the reference whenever groupsize % blocksize == 0, e.g. 128/128).
  bool reference_group_fit = false;
  // Decision 12: when every diagonal entry of H is 0 (no calibration token), quantize with the
  // identity Hessian (= RTN, weights kept) instead of zeroing every column as the reference does.
  bool identity_fallback = true;
  InverseFactorMethod inverse_factor = InverseFactorMethod::kReversedCholesky;
  int threads = 0;  // worker threads for the per-row loops; <= 0: hardware threads
  // The CPU solve runs on chunks of rows holding about this many bytes of weights, one chunk
  // after another, so that a chunk stays in cache through its lazy updates (<= 0: 16 MiB).
  int64_t row_chunk_bytes = 0;
  GptqEngine engine = GptqEngine::kAuto;
};

// The weight-independent part of GPTQ for one Hessian: dead columns, act-order permutation,
// damping and U. Linears that share an input (Mixtral's w1/w3, q/k/v) can share one.
// Its tensors are on the device of the Hessian it was prepared from.
struct GptqHessian {
  at::Tensor u;     // fp32 [in, in] upper factor of (H + damp I)^-1, in quantization order
  at::Tensor perm;  // int64 [in]: quantization order (identity without act-order)
  at::Tensor dead;  // bool [in], original order: columns GPTQ zeroes (H_jj == 0)
  int64_t dead_columns = 0;
  bool identity_fallback = false;  // decision 12 fired (all columns dead)
  double seconds = 0;              // wall time of the preparation
  // The options it was prepared with; GptqQuantize refuses a mismatch.
  bool actorder = false;
  double percdamp = 0;
  bool identity_fallback_option = true;
  InverseFactorMethod method = InverseFactorMethod::kReversedCholesky;
};

// Uses o.actorder, o.percdamp, o.identity_fallback, o.inverse_factor, o.threads.
// Errors: InvalidArgument (not square, non-finite), FailedPrecondition (not positive definite
// after damping).
absl::StatusOr<GptqHessian> PrepareGptqHessian(const at::Tensor& h, const GptqOptions& options);

// On the device of the weight (the caller copies what it keeps back to the host, once).
struct GptqResult {
  at::Tensor weight;       // fp32 [out, in] dequantized, original column order
  at::Tensor q;            // uint8 [out, in] integer codes, original column order
  at::Tensor scales;       // fp32 [out, groups] (groups = 1 when groupsize == -1)
  at::Tensor zeros;        // fp32 [out, groups]; integral when quantizer.IntegerZero()
  at::Tensor g_idx;        // int32 [in]: weight[:, c] = scales[:, g] * (q[:, c] - zeros[:, g])
  at::Tensor perm;         // int64 [in]: quantization order (identity without act-order)
  at::Tensor column_loss;  // fp32 [in], original column order: sum over rows of
                           // (w - w_hat)^2 / U_jj^2 / 2 (the reference's Losses, per column)
  double total_loss = 0;   // the reference's Losses.sum()
  int64_t dead_columns = 0;        // columns with H_jj == 0 (zeroed, as the reference)
  bool identity_fallback = false;  // decision 12 fired (all columns dead)
  // Wall seconds per phase: parameter fits / dead columns / act-order permutation, damping and
  // the inverse-Hessian factor, the per-column block work, the lazy GEMM updates, un-permuting.
  // (factorization: PrepareGptqHessian's time, including its dead-column and permutation work;
  // 0 when a prepared Hessian was passed.)
  struct Timing {
    double prepare = 0, factorization = 0, blocks = 0, lazy_update = 0, finish = 0;
  } seconds;
};

// Quantizes W [out, in] with Hessian H [in, in] (both converted to fp32; inputs not modified).
// Errors: InvalidArgument (shapes, options, non-finite values), FailedPrecondition (H not
// positive definite after damping).
absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w, const at::Tensor& h,
                                        const GptqOptions& options);

// The same with a prepared Hessian (made with the same actorder / percdamp / identity_fallback /
// inverse_factor, and on the weight's device, else InvalidArgument). seconds.factorization is 0 here (see hessian.seconds).
absl::StatusOr<GptqResult> GptqQuantize(const at::Tensor& w, const GptqHessian& hessian,
                                        const GptqOptions& options);

// U, the upper Cholesky factor of (H + damp I)^-1 (U^T U = (H + damp I)^-1) with
// damp = percdamp * mean(diag H), as the solve uses it. H: fp32 [in, in] without dead columns;
// damped in place. FailedPrecondition when not positive definite.
absl::StatusOr<at::Tensor> InverseHessianFactor(
    at::Tensor& h, double percdamp,
    InverseFactorMethod method = InverseFactorMethod::kReversedCholesky);

// Nominal FLOPs of GPTQ for a [out, in] weight: the lazy updates, the intra-block rank-1 updates
// and the factorisation (LAPACK counts: 2/3 in^3 for kReversedCholesky, 4/3 in^3 for
// kReference); see docs/quantization.md.
struct GptqFlops {
  double lazy_update = 0;
  double intra_block = 0;
  double factorization = 0;
  double total() const { return lazy_update + intra_block + factorization; }
};
GptqFlops CountGptqFlops(int64_t out, int64_t in, int64_t blocksize,
                         InverseFactorMethod method = InverseFactorMethod::kReversedCholesky);

}  // namespace moec::quant

#endif  // MOEC_QUANT_GPTQ_H_
