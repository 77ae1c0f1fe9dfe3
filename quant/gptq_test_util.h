// Test-only: the oracle of the GPTQ tests (gptq_test.cc, gptq_export_test.cc), a plain unblocked
// OBQ-style GPTQ written in double precision, and their calibration data.
#ifndef MOEC_QUANT_GPTQ_TEST_UTIL_H_
#define MOEC_QUANT_GPTQ_TEST_UTIL_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "quant/gptq.h"

namespace moec::quant::gptq_testing {

// Naive GPTQ: unblocked, column by column, with the OBQ inverse-Hessian downdate per column,
// in double precision (the quantizer itself in fp32, as the reference's).
struct NaiveResult {
  at::Tensor weight, q, scales, zeros, g_idx, column_loss;
  double total_loss = 0;
  int64_t ties_followed = 0;
};

// tie_hint (may be null): the tested implementation's codes [out, in], followed at values within
// rounding noise of a tie when they are a neighbouring code (counted in ties_followed).
NaiveResult NaiveGptq(const at::Tensor& w_in, const at::Tensor& h_in, const GptqOptions& o,
                      const at::Tensor* tie_hint = nullptr);

// Correlated calibration inputs [tokens, in] and their reference Hessian 2/N sum X^T X (N = 1).
at::Tensor CorrelatedInputs(int64_t tokens, int64_t in, uint64_t seed);

at::Tensor HessianOf(const at::Tensor& x);

// Runs the naive reference (following `got` only at exact rounding ties) and compares.
void ExpectMatchesNaive(const GptqResult& got, const at::Tensor& w, const at::Tensor& h,
                        const GptqOptions& o);

}  // namespace moec::quant::gptq_testing

#endif  // MOEC_QUANT_GPTQ_TEST_UTIL_H_
